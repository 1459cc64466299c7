"""The transformer caches' saving in FLOPs, on the published full-size diffusion transformers, without a GPU.

    python bench/transformer_cache_flops.py OUT.json [--preset random|tiny] [--workloads wan,ltx]
                                                     [--size HxW] [--frames N]

For each workload of bench/speed.py (its shapes; both guidance passes of a step), torch's FlopCounterMode counts
one transformer call on the meta device (shapes only: no weights are computed with), broken down by module.
A step that reuses instead of computing costs the full call less the modules the cache skips:
- first_block: every block after the first (diffusers' first-block cache; MagCache skips the same on the steps
  it skips, and on how many steps depends on the checkpoint's ratios);
- taylorseer: the modules the family's TaylorSeer patterns extrapolate (`Family.cache_defaults`: the blocks'
  attention and feed-forward layers), whose outputs are predicted instead.
It prints a table and writes JSON: TFLOP per full and reusing step, their ratio, and for TaylorSeer the
transformer FLOPs of a 50-step video at cache_interval 2-5 (3 steps computed first, as bench/speed.py runs it)
as a share of the uncached video's. FLOPs are not time (BENCHMARKS.md compares with measured runs).
"""
import argparse
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from speed import WORKLOADS  # noqa: E402  (bench/speed.py, beside this script: the shapes measured there)

STEPS, INTERVALS, COMPUTED_FIRST = 50, (2, 3, 4, 5), 3
# transformer calls per step: both guidance branches (Wan two calls, LTX one batched call of two)
PASSES = 2


def meta_transformer(preset: str):
    """The preset's transformer on the meta device, and its family."""
    from renderer.catalog import resolve_model
    from renderer.families.components import seeded_build

    family = resolve_model(preset).family
    with seeded_build("meta"):
        return family.components(preset.split("-")[0])["transformer"], family


def transformer_inputs(workload: str, transformer, frames: int, height: int, width: int) -> dict:
    """One call's arguments at batch 1, as the pipeline makes them (on the default device: the meta one)."""
    import torch

    config = transformer.config
    if workload == "wan":
        # (batch, 16, latent frames, h, w) under an 8x VAE, 4 frames a latent frame after the first; 512 text tokens
        latents = (1, config.in_channels, (frames - 1) // 4 + 1, height // 8, width // 8)
        return dict(hidden_states=torch.empty(latents), timestep=torch.tensor([500.0]),
                    encoder_hidden_states=torch.empty(1, 512, config.text_dim), return_dict=False)
    # LTX: packed tokens (batch, f * h * w, 128) under a 32x, 8-frame VAE; 128 text tokens
    f, h, w = (frames - 1) // 8 + 1, height // 32, width // 32
    return dict(hidden_states=torch.empty(1, f * h * w, config.in_channels),
                encoder_hidden_states=torch.empty(1, 128, config.caption_channels), timestep=torch.tensor([500.0]),
                encoder_attention_mask=torch.ones(1, 128), num_frames=f, height=h, width=w,
                rope_interpolation_scale=(8 / 25, 32, 32), return_dict=False)


def module_flops(transformer, kwargs) -> tuple[float, dict]:
    """(total FLOPs, FLOPs by module name) of one call."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter, torch.no_grad(), torch.device("meta"):
        transformer(**kwargs)
    root = type(transformer).__name__
    by_module = {name.removeprefix(root).lstrip("."): sum(ops.values())
                 for name, ops in counter.get_flop_counts().items()}
    return float(counter.get_total_flops()), by_module


def skipped(by_module: dict, patterns: list[str]) -> float:
    """FLOPs of the modules whose full names match one of `patterns` (none counted twice inside another)."""
    matched = [name for name in by_module if any(re.fullmatch(p, name) for p in patterns)]
    outermost = [name for name in matched if not any(name.startswith(other + ".") for other in matched)]
    return sum(by_module[name] for name in outermost)


def taylorseer_share(full: float, reusing: float, interval: int) -> float:
    """A video's transformer FLOPs over the uncached video's, with TaylorSeer computing the first steps and then 1
    step of every `interval` (its schedule, as diffusers counts steps)."""
    computed = sum(1 for step in range(STEPS)
                   if step < COMPUTED_FIRST or (step - COMPUTED_FIRST - 1) % interval == 0)
    return round((computed * full + (STEPS - computed) * reusing) / (STEPS * full), 3)


def measure(workload: str, preset: str, shape: tuple) -> list[dict]:
    import torch

    transformer, family = meta_transformer(preset)
    with torch.device("meta"):
        kwargs = transformer_inputs(workload, transformer, *shape)
    full, by_module = module_flops(transformer, kwargs)
    blocks = [name for name in by_module if re.fullmatch(r"(transformer_)?blocks\.\d+", name)]
    caches = {
        "first_block": [re.escape(name) for name in blocks[1:]],
        "taylorseer": family.cache_defaults["taylorseer"]["cache_identifiers"],
    }
    out = []
    for kind, patterns in caches.items():
        reusing = full - skipped(by_module, patterns)
        entry = dict(workload=workload, preset=preset, cache=kind, frames=shape[0], height=shape[1], width=shape[2],
                     full_tflop_per_step=PASSES * full / 1e12, reusing_tflop_per_step=PASSES * reusing / 1e12,
                     reusing_over_full=round(reusing / full, 3))
        if kind == "taylorseer":
            entry["video_flops_share_by_interval"] = {n: taylorseer_share(full, reusing, n) for n in INTERVALS}
        out.append(entry)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out")
    parser.add_argument("--preset", default="random", choices=("random", "tiny"))
    parser.add_argument("--workloads", default="wan,ltx")
    parser.add_argument("--size", help="HxW instead of the workload's (e.g. for tiny presets)")
    parser.add_argument("--frames", type=int, help="frames instead of the workload's")
    args = parser.parse_args()
    results = []
    for workload in args.workloads.split(","):
        suffix, columns = WORKLOADS[workload][:2]
        frames, height, width = columns["num_frames"], columns["height"], columns["width"]
        if args.size:
            height, width = map(int, args.size.split("x"))
        results += measure(workload, f"{args.preset}-{suffix}", (args.frames or frames, height, width))
    print(f"Transformer FLOPs of one step (both guidance passes), {args.preset} presets; video share: a {STEPS}-step "
          f"video's FLOPs with TaylorSeer at cache_interval N over the uncached video's")
    print(f"{'workload':<10} {'cache':<12} {'full TFLOP':>10} {'reusing':>9} {'ratio':>6}  "
          + "  ".join(f"N={n}" for n in INTERVALS))
    for r in results:
        shares = r.get("video_flops_share_by_interval", {})
        print(f"{r['workload']:<10} {r['cache']:<12} {r['full_tflop_per_step']:>10.1f} "
              f"{r['reusing_tflop_per_step']:>9.2f} {r['reusing_over_full']:>6.3f}  "
              + "  ".join(f"{shares[n]:.3f}" if shares else "   - " for n in INTERVALS))
    Path(args.out).write_text(json.dumps({"preset": args.preset, "steps": STEPS, "results": results}, indent=1))


if __name__ == "__main__":
    main()
