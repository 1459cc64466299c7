"""Renders every family's full-size random preset through `render run` on a GPU; prints seconds per row.

    python bench/gpu_smoke.py OUT_DIR [--steps N] [--families svd-xt,animatediff,...]

Each model renders two rows (the first pays CUDA warm-up). Writes OUT_DIR/smoke.json with the records.
"""
import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from renderer.families.registry import FAMILIES  # noqa: E402
from renderer.video import write_mp4  # noqa: E402


def inputs(out: Path) -> None:
    """A conditioning image and a control/source video: a white square moving over black."""
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (576, 1024, 3), np.uint8)).save(out / "cond.png")
    frames = np.zeros((8, 512, 512, 3), np.uint8)
    for i in range(8):
        frames[i, 200:300, 40 * i:40 * i + 100] = 255
    write_mp4(frames, out / "control.mp4", 8)


def rows_for(family, steps: int) -> list[dict]:
    row = dict(model=f"random-{family.name}", num_inference_steps=steps)
    if "prompt" in family.required:
        row["prompt"] = "a lighthouse on a cliff at sunset"
    if "image" in family.required:
        row["image"] = "cond.png"
    if "video" in family.required:
        row["video"] = "control.mp4"
    return [dict(id=f"{family.name}-{i}", **row) for i in range(2)]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("out", type=Path)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--families", default=",".join(FAMILIES))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    inputs(args.out)
    rows = [r for name in args.families.split(",") for r in rows_for(FAMILIES[name], args.steps)]
    columns = sorted({key for row in rows for key in row})  # from_pylist alone keeps only the first row's keys
    pq.write_table(pa.table({c: [row.get(c) for row in rows] for c in columns}), args.out / "table.parquet")
    start = time.perf_counter()
    code = subprocess.call([sys.executable, "-m", "jobs.cli", "run", str(args.out / "table.parquet"),
                            "--out", str(args.out / "run"), "--device", "cuda"])
    wall = time.perf_counter() - start
    records = pq.read_table(args.out / "run" / "metadata.parquet").to_pylist()
    for r in records:
        size = f"{r['num_frames']} frames {r['width']}x{r['height']}" if r["status"] == "ok" else ""
        print(f"{r['id']:24} {r['status']:8} {r['seconds'] or 0:7.2f} s  {size} {r['error'] or ''}")
    print(f"exit {code}, wall {wall:.1f} s (includes Ray start and model builds), {args.steps} steps per row")
    (args.out / "smoke.json").write_text(json.dumps({"exit": code, "wall_s": wall, "steps": args.steps,
                                                      "records": records}, indent=1, default=str))


if __name__ == "__main__":
    main()
