"""Per-GPU speed: the same workload rendered by the bare diffusers loop and by `render run`, in one run.

    python bench/speed.py OUT_DIR [--workloads svd-xt,animatediff,long] [--modes bare,default,compile,cache,...]
                                  [--preset random|tiny] [--rows N] [--steps N] [--size HxW]

Modes (each in its own process, one after another on the same machine):
  bare           the loop the diffusers guides write: the pipeline on the device in float16, called per row
                 with a seeded generator, each video written by diffusers' export_to_video before the next row
  default        `render run` with default options (and the guide's call arguments, e.g. SVD decode_chunk_size 8)
  bf16           default, in bfloat16
  compile        default, with --compile (the denoiser compiled at actor start)
  cache          default, with the step cache: on a UNet params step_cache=3 (DeepCache), on a diffusion
                 transformer params cache = TaylorSeer with cache_interval 3 (diffusers' enable_cache);
                 cacheN: interval N (2-10)
  compile+cache  both; compile+cacheN: with interval N
Workloads: svd-xt (576x1024, 25 frames, 25 steps), animatediff (512x512, 16 frames, 25 steps), long (one
AnimateDiff row of 64 frames: `render run` renders 5 anchored chunks; the bare loop uses diffusers' FreeNoise,
the guide's way to make a video longer than the window in one call), wan (Wan 2.1 1.3B, 480x832, 81 frames),
ltx (LTX-Video 2B, 512x704, 161 frames). The bare loop runs in the family's half precision (float16 for the
UNets, bfloat16 for the diffusion transformers) with the model's default guidance.

Per mode: seconds per video in steady state (the gaps between successive videos finishing, the first video
left out: it pays warm-up and compilation), videos/hour, frames/s, the denoiser's TFLOP/s (its FLOPs per
video, counted once by torch's FlopCounterMode on an uncached step, over the seconds per video), the share of
the steady-state wall time the GPU was busy and the peak GPU memory (both sampled by nvidia-smi every 100 ms),
the ratio to the bare loop, and for cached modes the PSNR of their frames against the uncached mode's (same
weights, same seeds; frames read back from the mp4s, so the H.264 encoding bounds it). Prints a table per
workload and writes OUT_DIR/speed.json; `--chart` draws OUT_DIR/speed.png from it (needs matplotlib).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

WORKLOADS = {  # name -> (family preset suffix, table columns, params of the guide's call, rows)
    "svd-xt": ("svd-xt", dict(num_frames=25, height=576, width=1024, fps=7), {"decode_chunk_size": 8}, 3),
    "animatediff": ("animatediff", dict(num_frames=16, height=512, width=512, fps=8), {}, 6),
    "long": ("animatediff", dict(num_frames=64, height=512, width=512, fps=8), {}, 2),
    "wan": ("wan-1.3b", dict(num_frames=81, height=480, width=832, fps=16), {}, 3),
    "ltx": ("ltx", dict(num_frames=161, height=512, width=704, fps=25), {}, 3),
}
# workloads whose denoiser is a diffusion transformer: their cache is diffusers' (params.cache), not DeepCache
TRANSFORMER_WORKLOADS = {"wan", "ltx"}
MODES = {  # name -> (LoadOptions, extra params per row)
    "default": ({}, {}),
    "bf16": ({"dtype": "bfloat16"}, {}),
    "compile": ({"compile": True}, {}),
    "cache": ({}, {"step_cache": 3}),
    "compile+cache": ({"compile": True}, {"step_cache": 3}),
}
CACHE_MODE = re.compile(r"(compile\+)?cache(\d*)")


def mode_settings(mode: str, workload: str) -> tuple[dict, dict]:
    """(LoadOptions fields, extra params per row) of a mode: one of MODES, or cacheN / compile+cacheN."""
    cached = CACHE_MODE.fullmatch(mode)
    if cached and cached[2]:
        options, _ = MODES[mode.removesuffix(cached[2])]
        return options, cache_params(workload, int(cached[2]))
    options, extra = MODES[mode]
    return options, cache_params(workload, extra["step_cache"]) if extra else extra


def cache_params(workload: str, interval: int) -> dict:
    """The row params that cache 1 step of every `interval` on the workload's denoiser."""
    if workload in TRANSFORMER_WORKLOADS:
        return {"cache": {"kind": "taylorseer", "cache_interval": interval, "disable_cache_before_step": 3}}
    return {"step_cache": interval}


def uncached(mode: str) -> str | None:
    """The mode a cached mode's PSNR is measured against: the same options without the cache."""
    cached = CACHE_MODE.fullmatch(mode)
    return None if not cached else "compile" if cached[1] else "default"


PROMPT = "a lighthouse on a cliff at sunset, waves rolling in, cinematic"


def rows_for(workload: str, args) -> list[dict]:
    _, columns, params, rows = WORKLOADS[workload]
    columns = {**columns, "num_inference_steps": args.steps}
    if args.size:
        height, width = map(int, args.size.split("x"))
        columns.update(height=height, width=width)
    out = []
    for i in range(args.rows or rows):
        row = dict(id=f"{workload}-{i}", seed=1000 + i, **columns, params=dict(params))
        if workload == "svd-xt":
            row["image"] = "cond.png"
        else:
            row["prompt"] = f"{PROMPT} {i}"
        out.append(row)
    return out


# ---- one mode, in a child process ----------------------------------------------------------------------

def run_bare(workload: str, rows: list[dict], args, folder: Path) -> dict:
    """The guide's loop over a pipeline built with the preset's weights, with nothing of the renderer around it."""
    import torch
    from diffusers.utils import export_to_video, load_image

    from renderer.catalog import resolve_model

    spec = resolve_model(f"{args.preset}-{WORKLOADS[workload][0]}")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    pipe = spec.family.build(spec.source, device, getattr(torch, spec.family.cuda_dtype) if device == "cuda"
                             else torch.float32)
    pipe.set_progress_bar_config(disable=True)
    if workload == "long":  # FreeNoise: context windows of the model's 16 frames, stepping as the chunks do
        pipe.enable_free_noise(context_length=16, context_stride=12)
    finished = []
    for row in rows:
        kwargs = {k: row[k] for k in ("num_frames", "height", "width", "num_inference_steps")}
        kwargs.update(row["params"])
        if workload == "svd-xt":
            kwargs.update(image=load_image(str(folder / row["image"])), fps=row["fps"])
        else:
            kwargs.update(prompt=row["prompt"], guidance_scale=spec.defaults.guidance_scale)
        frames = pipe(**kwargs, generator=torch.manual_seed(row["seed"])).frames[0]
        export_to_video(frames, str(folder / f"{row['id']}.mp4"), fps=row["fps"])
        finished.append(time.time())
    flops = denoiser_flops_per_step(pipe, workload, rows[0], folder)
    return {"finished": finished, "videos": {r["id"]: str(folder / f"{r['id']}.mp4") for r in rows},
            "denoiser_flops_per_step": flops}


def denoiser_flops_per_step(pipe, workload: str, row: dict, folder: Path) -> float:
    """The denoiser's FLOPs in one denoising step of this row, by torch's flop counter: every call of the step
    (one batched CFG call on a UNet, a conditional and an unconditional one on Wan)."""
    import torch
    from diffusers.utils import load_image
    from torch.utils.flop_counter import FlopCounterMode

    from renderer import denoiser
    from renderer.chunks import plan_chunks

    counts = []
    unet = denoiser.primary(pipe)
    forward = unet.forward

    def counted(*a, **k):
        with FlopCounterMode(display=False) as counter:
            out = forward(*a, **k)
        counts.append(counter.get_total_flops())
        return out

    unet.forward = counted
    kwargs = {k: row[k] for k in ("num_frames", "height", "width")}
    if workload == "svd-xt":
        kwargs.update(image=load_image(str(folder / row["image"])), fps=row["fps"])
    else:
        # a long row's per-step unit is one window
        frames = min(row["num_frames"], 16) if workload == "long" else row["num_frames"]
        kwargs.update(prompt=row["prompt"], num_frames=frames)
    try:
        pipe(**kwargs, num_inference_steps=1, output_type="latent", generator=torch.manual_seed(0))
    finally:
        unet.forward = forward
    # a long row denoises one window per chunk (FreeNoise: per context window; the same 5 for these settings)
    windows = len(plan_chunks(row["num_frames"], 16, 4)) if workload == "long" else 1
    return float(sum(counts)) * windows


def run_renderer(workload: str, mode: str, rows: list[dict], args, folder: Path) -> dict:
    """`render run` through its Python entry point on the embedded local Ray."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    import ray

    from renderer.options import LoadOptions
    from renderer.run import RunConfig, run

    options, extra = mode_settings(mode, workload)
    table_rows = [{**{k: v for k, v in r.items() if k != "params"}, "params": json.dumps({**r["params"], **extra})}
                  for r in rows]
    table = folder / f"{workload}.{mode}.parquet"
    pq.write_table(pa.Table.from_pylist(table_rows), table)
    out = folder / f"{workload}.{mode}"
    shutil.rmtree(out, ignore_errors=True)  # a fresh run: rows resumed from an earlier one would skew the timings
    ray.init(address="local", include_dashboard=False, logging_level="WARNING")  # never join another Ray
    try:
        model = f"{args.preset}-{WORKLOADS[workload][0]}"
        summary = run(RunConfig(tables=(str(table),), out=out, model=model, load=LoadOptions(**options)))
    finally:
        ray.shutdown()
    records = pq.read_table(out / "metadata.parquet").to_pylist()
    if summary.counts != {"ok": len(rows)}:
        raise SystemExit(f"{mode}: {summary.counts} {summary.errors}")
    return {"finished": sorted(r["finished_at"] for r in records),
            "videos": {r["id"]: str(out / r["video_path"]) for r in records}}


def child(args) -> None:
    workload, mode, folder = args.child
    folder = Path(folder)
    rows = rows_for(workload, args)
    start = time.time()
    if mode == "bare":
        result = run_bare(workload, rows, args, folder)
    else:
        result = run_renderer(workload, mode, rows, args, folder)
    result.update(start=start, end=time.time())
    (folder / f"{workload}.{mode}.json").write_text(json.dumps(result))


# ---- the parent: modes one after another, the GPU sampled meanwhile -------------------------------------

class GpuSampler:
    """nvidia-smi every 100 ms: (time, utilization %, memory MiB); nothing on a machine without it."""

    def __init__(self):
        self.samples: list[tuple[float, float, float]] = []
        try:
            self.process = subprocess.Popen(
                ["nvidia-smi", "--query-gpu=utilization.gpu,memory.used", "--format=csv,noheader,nounits",
                 "-lms", "100"],
                stdout=subprocess.PIPE, text=True)
        except FileNotFoundError:
            self.process = None
            return
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.process.stdout:
            try:
                util, memory = (float(v) for v in line.split(",")[:2])
            except ValueError:
                continue
            self.samples.append((time.time(), util, memory))

    def window(self, start: float, end: float) -> tuple[float | None, float | None]:
        """(mean utilization %, peak memory GiB) between two times."""
        inside = [s for s in self.samples if start <= s[0] <= end]
        if not inside:
            return None, None
        return float(np.mean([s[1] for s in inside])), max(s[2] for s in inside) / 1024

    def close(self):
        if self.process:
            self.process.terminate()


def psnr(a_path: str, b_path: str) -> float:
    from renderer.testing.videos import read_mp4

    a, b = read_mp4(Path(a_path))[0].astype(np.float64), read_mp4(Path(b_path))[0].astype(np.float64)
    mse = float(np.mean((a - b) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)


def summarise(workload: str, mode: str, result: dict, rows: list[dict], sampler: GpuSampler) -> dict:
    finished = result["finished"]
    steady = np.diff(finished) if len(finished) > 1 else np.array([finished[0] - result["start"]])
    per_video = float(np.median(steady))
    busy, peak = sampler.window(finished[0], finished[-1]) if len(finished) > 1 else (None, None)
    _, peak_all = sampler.window(result["start"], result["end"])
    return {"workload": workload, "mode": mode, "videos": len(finished), "s_per_video": per_video,
            "videos_per_hour": 3600 / per_video, "frames_per_s": rows[0]["num_frames"] / per_video,
            "gpu_busy_pct": busy, "peak_gpu_gib": peak_all or peak, "wall_s": result["end"] - result["start"],
            "first_video_s": finished[0] - result["start"]}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    parser.add_argument("--workloads", default="svd-xt,animatediff,long")
    parser.add_argument("--modes", default="bare,default,compile,cache,compile+cache")
    parser.add_argument("--preset", default="random", choices=("random", "tiny"))
    parser.add_argument("--rows", type=int, help="videos per mode [default: per workload]")
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--size", help="HxW instead of the workload's (CPU trials)")
    parser.add_argument("--chart", action="store_true", help="only draw OUT/speed.png from OUT/speed.json")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)
    if args.chart:
        return chart(args.out)
    unknown = [m for m in args.modes.split(",") if m != "bare" and m not in MODES and not CACHE_MODE.fullmatch(m)]
    if unknown:
        parser.error(f"unknown mode(s) {', '.join(unknown)}: use bare, {', '.join(MODES)}, cacheN or compile+cacheN")
    args.out.mkdir(parents=True, exist_ok=True)
    conditioning_image(args.out / "cond.png")
    report_path = args.out / "speed.json"
    report = json.loads(report_path.read_text()) if report_path.exists() else {"results": []}
    sampler = GpuSampler()
    try:
        for workload in args.workloads.split(","):
            for mode in args.modes.split(","):
                measure(workload, mode, args, sampler, report)
                report_path.write_text(json.dumps(report, indent=1))  # a later crash keeps what was measured
    finally:
        sampler.close()
    print_tables(report["results"])


def measure(workload: str, mode: str, args, sampler: GpuSampler, report: dict) -> None:
    rows = rows_for(workload, args)
    command = [sys.executable, __file__, str(args.out), "--preset", args.preset, "--steps", str(args.steps),
               "--child", workload, mode, str(args.out)]
    command += ["--rows", str(args.rows)] if args.rows else []
    command += ["--size", args.size] if args.size else []
    code = subprocess.call(command, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    if code != 0:
        print(f"{workload} {mode}: failed (exit {code})", flush=True)
        report["results"].append({"workload": workload, "mode": mode, "error": f"exit {code}"})
        return
    result = json.loads((args.out / f"{workload}.{mode}.json").read_text())
    entry = summarise(workload, mode, result, rows, sampler)
    entry["videos_paths"] = result["videos"]
    if "denoiser_flops_per_step" in result:
        report.setdefault("denoiser_flops_per_step", {})[workload] = result["denoiser_flops_per_step"]
    results = [r for r in report["results"] if not (r["workload"] == workload and r["mode"] == mode)]
    report["results"] = results + [entry]
    complete(report, workload, args.steps)
    print(json.dumps({k: v for k, v in entry.items() if k != "videos_paths"}), flush=True)


def complete(report: dict, workload: str, steps: int) -> None:
    """Ratios to the bare loop, TFLOP/s and the cached modes' PSNR, for the modes measured so far."""
    entries = {r["mode"]: r for r in report["results"] if r["workload"] == workload and "error" not in r}
    flops = report.get("denoiser_flops_per_step", {}).get(workload)
    for mode, entry in entries.items():
        if "bare" in entries:
            entry["vs_bare"] = entries["bare"]["s_per_video"] / entry["s_per_video"]
        if flops:
            entry["denoiser_tflops"] = flops * steps / entry["s_per_video"] / 1e12
        reference = entries.get(uncached(mode))
        if reference is not None and "psnr_db_vs_uncached" not in entry:  # the videos are read back once
            scores = [psnr(reference["videos_paths"][i], entry["videos_paths"][i]) for i in entry["videos_paths"]]
            entry["psnr_db_vs_uncached"] = float(np.mean(scores))
            entry["psnr_reference"] = reference["mode"]


def print_tables(results: list[dict]) -> None:
    columns = [("mode", "{:>14}"), ("s_per_video", "{:>8.2f}"), ("videos_per_hour", "{:>9.0f}"),
               ("frames_per_s", "{:>8.2f}"), ("denoiser_tflops", "{:>8.1f}"), ("gpu_busy_pct", "{:>6.1f}"),
               ("peak_gpu_gib", "{:>7.1f}"), ("vs_bare", "{:>7.2f}x"), ("psnr_db_vs_uncached", "{:>6.1f}"),
               ("first_video_s", "{:>8.1f}")]
    heads = ["mode", "s/video", "videos/h", "frames/s", "TFLOP/s", "busy%", "peak GiB", "vs bare", "PSNR", "1st s"]
    for workload in dict.fromkeys(r["workload"] for r in results):
        print(f"\n{workload}")
        print(" ".join(f"{h:>{8 if h != 'mode' else 14}}" for h in heads))
        for r in (r for r in results if r["workload"] == workload):
            if "error" in r:
                print(f"{r['mode']:>14} {r['error']}")
                continue
            cells = [fmt.format(r[k]) if r.get(k) is not None else f"{'-':>8}" for k, fmt in columns]
            print(" ".join(cells))


def chart(out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = [r for r in json.loads((out / "speed.json").read_text())["results"] if "error" not in r]
    workloads = list(dict.fromkeys(r["workload"] for r in results))
    fig, axes = plt.subplots(1, len(workloads), figsize=(5 * len(workloads), 4), squeeze=False)
    for ax, workload in zip(axes[0], workloads, strict=True):
        entries = [r for r in results if r["workload"] == workload]
        ax.bar([r["mode"] for r in entries], [r["videos_per_hour"] for r in entries], color="#4c72b0")
        ax.set_title(workload)
        ax.set_ylabel("videos / hour")
        ax.tick_params(axis="x", rotation=30)
        for i, r in enumerate(entries):
            if r.get("vs_bare"):
                ax.annotate(f"{r['vs_bare']:.2f}x", (i, r["videos_per_hour"]), ha="center", va="bottom")
    fig.tight_layout()
    fig.savefig(out / "speed.png", dpi=120)


def conditioning_image(path: Path) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:576, 0:1024]
    pixels = np.stack([x / 1024 * 255, y / 576 * 255, np.full_like(x, 120)], -1) + rng.normal(0, 8, (576, 1024, 3))
    Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(path)


if __name__ == "__main__":
    main()
