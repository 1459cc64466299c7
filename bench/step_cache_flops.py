"""The step cache's saving in UNet FLOPs, per branch, on the published full-size architectures, without a GPU.

    python bench/step_cache_flops.py OUT.json [--preset random|tiny] [--workloads svd-xt,animatediff]

For each workload of bench/speed.py (its shapes, CFG batch of 2), torch's FlopCounterMode counts one UNet call
of a full step and one of a reusing step, on the meta device (shapes only: no weights are computed with), for
two branches side by side:
- block: the deep blocks are reused, the whole first down block and last up block run (this project's step
  cache before it took DeepCache's shallowest branch);
- shallowest: DeepCache's default branch, what `params.step_cache` runs now (renderer/step_cache.py).

It prints a table and writes JSON: TFLOP per full and reusing step, their ratio, and the UNet FLOPs of a
25-step video at intervals 2-5 as a share of the uncached video's. FLOPs are not time: the shallow layers
run at full resolution and are less efficient per FLOP than the deep ones (BENCHMARKS.md compares).
"""
import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from speed import WORKLOADS  # noqa: E402  (bench/speed.py, beside this script: the shapes measured there)

STEPS, INTERVALS = 25, (2, 3, 4, 5)


def block_branch(unet) -> tuple:
    """The previous branch, the baseline: every block but the first down block and the last up block."""
    return (*unet.down_blocks[1:], unet.mid_block, *unet.up_blocks[:-1])


def meta_unet(preset: str):
    """The preset's UNet on the meta device. AnimateDiff's pipeline merges its motion adapter into the UNet by
    copying weights, so that one is built on the CPU first."""
    import torch

    from renderer import denoiser
    from renderer.catalog import resolve_model

    spec = resolve_model(preset)
    device = "cpu" if spec.family.name == "animatediff" else "meta"
    return denoiser.primary(spec.family.build(spec.source, device, torch.float32)).to("meta")


def unet_inputs(workload: str, unet, frames: int, height: int, width: int) -> tuple[tuple, dict]:
    """One UNet call's arguments as the pipeline makes them, CFG batch included (made on the default device)."""
    import torch

    h, w, config = height // 8, width // 8, unet.config
    if workload == "svd-xt":  # latents (batch, frames, channels, h, w); one CLIP image embedding per video
        return (torch.empty(2, frames, config.in_channels, h, w), torch.tensor(500.0)), dict(
            encoder_hidden_states=torch.empty(2, 1, config.cross_attention_dim), added_time_ids=torch.empty(2, 3),
            return_dict=False)
    # latents (batch, channels, frames, h, w); the prompt embeddings repeated per frame, as the pipeline does
    return (torch.empty(2, config.in_channels, frames, h, w), torch.tensor(500.0)), dict(
        encoder_hidden_states=torch.empty(2 * frames, 77, config.cross_attention_dim), return_dict=False)


def count(unet, args, kwargs) -> float:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter, torch.no_grad(), torch.device("meta"):
        unet(*args, **kwargs)
    return counter.get_total_flops() / 1e12


def measure(workload: str, preset: str, shape: tuple) -> list[dict]:
    import torch

    from renderer.step_cache import StepCache, deep_modules

    out = []
    for branch, modules in (("block", block_branch), ("shallowest", deep_modules)):
        unet = meta_unet(preset)
        cache = StepCache(unet, modules(unet))
        with torch.device("meta"):
            args, kwargs = unet_inputs(workload, unet, *shape)
        cache.reset(2)
        full, reusing = count(unet, args, kwargs), count(unet, args, kwargs)
        video = {}
        for n in INTERVALS:
            whole = -(-STEPS // n)  # steps 0, n, 2n, ... run in full
            video[n] = round((whole * full + (STEPS - whole) * reusing) / (STEPS * full), 3)
        out.append(dict(workload=workload, branch=branch, frames=shape[0], height=shape[1], width=shape[2],
                        full_tflop=full, reusing_tflop=reusing,
                        reusing_over_full=round(reusing / full, 3), video_flops_share_by_interval=video))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out")
    parser.add_argument("--preset", default="random", choices=("random", "tiny"))
    parser.add_argument("--workloads", default="svd-xt,animatediff")
    parser.add_argument("--size", help="HxW instead of the workload's (e.g. for tiny presets)")
    parser.add_argument("--frames", type=int, help="frames instead of the workload's")
    args = parser.parse_args()
    results = []
    for workload in args.workloads.split(","):
        columns = WORKLOADS[workload][1]
        frames, height, width = columns["num_frames"], columns["height"], columns["width"]
        if args.size:
            height, width = map(int, args.size.split("x"))
        results += measure(workload, f"{args.preset}-{workload}", (args.frames or frames, height, width))
    print(f"UNet FLOPs of one step (CFG batch 2), {args.preset} presets; video share: a {STEPS}-step video's UNet "
          "FLOPs at interval N over the uncached video's")
    print(f"{'workload':<12} {'branch':<11} {'full TFLOP':>10} {'reusing':>8} {'ratio':>6}  "
          + "  ".join(f"N={n}" for n in INTERVALS))
    for r in results:
        shares = "  ".join(f"{r['video_flops_share_by_interval'][n]:.3f}" for n in INTERVALS)
        print(f"{r['workload']:<12} {r['branch']:<11} {r['full_tflop']:>10.2f} {r['reusing_tflop']:>8.2f} "
              f"{r['reusing_over_full']:>6.3f}  {shares}")
    Path(args.out).write_text(json.dumps({"preset": args.preset, "steps": STEPS, "results": results}, indent=1))


if __name__ == "__main__":
    main()
