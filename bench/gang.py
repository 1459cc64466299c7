"""What a gang costs to form, feed and watch: the same rows rendered by one actor and by a gang of two, on the CPU.

    python bench/gang.py OUT.json [--rows N] [--steps N] [--size HxW] [--frames N]

Both runs are `render run` of tiny-wan on the embedded local Ray, one torch thread per process, the same table:
- one device per video: one actor renders every row;
- a gang of 2 (`--gpus-per-video 2`): two actors render every row together over gloo, each with half of the
  transformer's tokens (Ulysses), and the leader's frames are written.
Per run: seconds to the first video (loading, and for the gang forming its process group), seconds per video in
steady state (the median gap between videos finishing), and the frames' agreement between the runs (a gang's frames
equal one process's on the CPU). Tiny weights make a row's compute small, so the gap between the runs is mostly
what the gang adds per row (the fan-out to both members, the collectives, the watch on both calls); a full-size
model's per-row compute would dwarf it. Prints a table and writes JSON.
"""
import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def render(folder: Path, name: str, rows: list[dict], gpus_per_video: int) -> dict:
    """One `render run` on a fresh local Ray: its timings and the frames of each row."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    import ray

    from renderer.run import RunConfig, run
    from renderer.testing.videos import read_mp4

    table, out = folder / f"{name}.parquet", folder / name
    pq.write_table(pa.Table.from_pylist(rows), table)
    shutil.rmtree(out, ignore_errors=True)
    ray.init(address="local", num_cpus=4, include_dashboard=False, logging_level="WARNING")
    start = time.time()
    try:
        summary = run(RunConfig(tables=(str(table),), out=out, model="tiny-wan", actors=1, threads_per_actor=1,
                                gpus_per_video=gpus_per_video))
    finally:
        ray.shutdown()
    if summary.counts != {"ok": len(rows)}:
        raise SystemExit(f"{name}: {summary.counts} {summary.errors}")
    records = pq.read_table(out / "metadata.parquet").to_pylist()
    finished = sorted(r["finished_at"] for r in records)
    return {"first_video_s": finished[0] - start,
            "s_per_video": float(np.median(np.diff(finished))) if len(finished) > 1 else None,
            "frames": {r["id"]: read_mp4(out / r["video_path"])[0] for r in records}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    parser.add_argument("--rows", type=int, default=8)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--size", default="128x128", help="HxW (128x128 and up encode the same frames alike)")
    parser.add_argument("--frames", type=int, default=9)
    args = parser.parse_args()
    height, width = map(int, args.size.split("x"))
    rows = [dict(id=f"r{i}", prompt=f"a lighthouse at dusk {i}", seed=i, num_frames=args.frames, height=height,
                 width=width, num_inference_steps=args.steps) for i in range(args.rows)]
    with tempfile.TemporaryDirectory() as folder:
        runs = {name: render(Path(folder), name, rows, size) for name, size in (("one", 1), ("gang2", 2))}
    same = all(np.array_equal(runs["one"]["frames"][i], runs["gang2"]["frames"][i]) for i in runs["one"]["frames"])
    results = [{"run": name, "gpus_per_video": size, "first_video_s": runs[name]["first_video_s"],
                "s_per_video": runs[name]["s_per_video"]} for name, size in (("one", 1), ("gang2", 2))]
    one, gang = results
    print(f"tiny-wan, {args.rows} rows of {args.frames}x{height}x{width}, {args.steps} steps, 1 thread per process")
    print(f"{'run':<8} {'gpus/video':>10} {'1st video s':>12} {'s/video':>8}")
    for r in results:
        print(f"{r['run']:<8} {r['gpus_per_video']:>10} {r['first_video_s']:>12.2f} {r['s_per_video'] or 0:>8.3f}")
    print(f"gang frames equal one device's: {same}")
    args.out.write_text(json.dumps({"rows": args.rows, "steps": args.steps, "size": args.size, "frames": args.frames,
                                    "results": results, "frames_equal": same,
                                    "gang_over_one_s_per_video": (gang["s_per_video"] / one["s_per_video"]
                                                                  if one["s_per_video"] else None)}, indent=1))


if __name__ == "__main__":
    main()
