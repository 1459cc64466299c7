"""The GPU-side recoveries on a real GPU: a real out-of-memory error climbing the memory ladder, and the NaN guard's
float32-VAE retry.

    python bench/gpu_faults.py OUT.json [--model random-svd-xt] [--memory-gib 20] [--steps 2]

1. The process is held to `--memory-gib` of GPU memory (torch.cuda.set_per_process_memory_fraction), and an
   SVD-XT row asks its temporal VAE to decode all 25 frames at once (decode_chunk_size 25: about 31 GB at
   576x1024). The out-of-memory error is real; the record's recoveries say which rung rendered the row. The
   next row (decode_chunk_size 8, as the guide has it) must then render with no recovery.
2. NaN frames are injected once (renderer/testing/faults.py) and the row must come back from the float32-VAE retry; the
   frames of that retry are compared (PSNR) with a row rendered with params vae_float32 from the start.
Writes OUT.json with each row's seconds, recoveries, peak memory and outcome.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from renderer import load  # noqa: E402


def render(model, row: dict) -> dict:
    import torch

    torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    try:
        frames = model.render(row)
        outcome = {"status": "ok", "frames": list(frames.shape)}
    except Exception as exc:  # the record of what happened is the point here
        frames, outcome = None, {"status": "failed", "error": f"{type(exc).__name__}: {str(exc)[:300]}"}
    outcome.update(seconds=time.perf_counter() - start, recoveries=list(model.recoveries),
                   peak_gib=torch.cuda.max_memory_allocated() / 2**30,
                   row={k: v for k, v in row.items() if k != "image"})
    print(json.dumps(outcome), flush=True)
    return outcome, frames


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    parser.add_argument("--model", default="random-svd-xt")
    parser.add_argument("--memory-gib", type=float, default=20.0)
    parser.add_argument("--steps", type=int, default=2)
    args = parser.parse_args()
    import torch
    from PIL import Image

    total = torch.cuda.get_device_properties(0).total_memory / 2**30
    model = load(args.model, "cuda")
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (576, 1024, 3), np.uint8))
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "cond.png"
        image.save(path)
        base = dict(image=str(path), num_inference_steps=args.steps, seed=5)
        report = {"gpu": torch.cuda.get_device_name(), "gpu_gib": total, "memory_limit_gib": args.memory_gib}
        torch.cuda.set_per_process_memory_fraction(args.memory_gib / total)
        report["oom_row"], _ = render(model, {**base, "id": "oom", "params": json.dumps({"decode_chunk_size": 25})})
        report["next_row"], _ = render(model, {**base, "id": "next", "params": json.dumps({"decode_chunk_size": 8})})
        torch.cuda.set_per_process_memory_fraction(1.0)

        log = Path(folder) / "faults.jsonl"
        os.environ.update(RENDER_FAULTS=json.dumps([{"point": "output", "fault": "nan", "id": "nan", "times": 1}]),
                          RENDER_FAULTS_LOG=str(log))
        report["nan_row"], retried = render(model, {**base, "id": "nan",
                                                    "params": json.dumps({"decode_chunk_size": 8})})
        report["nan_fired"] = len(log.read_text().splitlines()) if log.exists() else 0
        report["float32_row"], direct = render(
            model, {**base, "id": "f32", "params": json.dumps({"decode_chunk_size": 8, "vae_float32": True})})
        if retried is not None and direct is not None:
            mse = float(np.mean((retried.astype(float) - direct.astype(float)) ** 2))
            report["nan_retry_vs_float32_psnr_db"] = float("inf") if mse == 0 else 10 * np.log10(255**2 / mse)
        report["vae_dtype_after"] = str(model.pipeline.vae.dtype)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1, default=str))
    print(json.dumps(report, default=str))


if __name__ == "__main__":
    main()
