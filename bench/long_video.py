"""One long anchored row rendered on 1, 2 and 4 actors: the speed-up of spreading its chunks, and its seams.

    python bench/long_video.py OUT.json [--model tiny-animatediff] [--frames 256] [--size 128] [--steps 4]
                                        [--actors 1,2,4]

Each actor count gets a fresh local Ray with exactly that many CPUs, so every actor renders with one torch
thread and the 1-actor baseline is not helped by threads the others lack. Prints a table and writes JSON:
wall seconds of the whole run (actor start included), videos/hour, speed-up over 1 actor, efficiency
(speed-up / actors), the seam scores and colour drift of the stitched video, and whether the video is
identical for every actor count. On a CPU the speed-up cannot exceed the machine's cores.
"""
import argparse
import hashlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from renderer.run import RunConfig, run  # noqa: E402


def render_once(table: Path, out: Path, actors: int) -> dict:
    import ray

    ray.init(address="local", num_cpus=actors, include_dashboard=False, logging_level="WARNING")
    try:
        start = time.perf_counter()
        summary = run(RunConfig(tables=(str(table),), out=out, actors=actors, device="cpu"))
        wall = time.perf_counter() - start
    finally:
        ray.shutdown()
    assert summary.counts == {"ok": 1}, summary.errors
    record = pq.read_table(out / "metadata.parquet").to_pylist()[0]
    return {"actors": actors, "wall_s": wall, "chunks": record["chunks"],
            "actors_used": len(set(record["chunk_actors"])), "seams": record["seams"], "drift": record["drift"],
            "video_sha256": hashlib.sha256((out / record["video_path"]).read_bytes()).hexdigest()}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    parser.add_argument("--model", default="tiny-animatediff")
    parser.add_argument("--prompt", default="a lighthouse on a cliff at night, waves rolling in")
    parser.add_argument("--frames", type=int, default=256)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--actors", default="1,2,4")
    args = parser.parse_args()

    results = []
    with tempfile.TemporaryDirectory() as scratch:
        table = Path(scratch) / "long.parquet"
        row = dict(id="long", model=args.model, prompt=args.prompt, num_frames=args.frames, height=args.size,
                   width=args.size, num_inference_steps=args.steps, seed=7)
        pq.write_table(pa.Table.from_pylist([row]), table)
        for actors in map(int, args.actors.split(",")):
            results.append(render_once(table, Path(scratch) / f"out{actors}", actors))

    base = results[0]["wall_s"] * results[0]["actors"]
    for r in results:
        r["videos_per_hour"] = 3600 / r["wall_s"]
        r["speedup"] = base / r["wall_s"]
        r["efficiency"] = r["speedup"] / r["actors"]
    identical = len({r["video_sha256"] for r in results}) == 1
    print(f"{args.model}: 1 row of {args.frames} frames at {args.size}x{args.size}, {args.steps} steps, "
          f"{results[0]['chunks']} anchored chunks; {os.cpu_count()} CPU cores")
    print(f"{'actors':>6} {'used':>5} {'wall s':>8} {'videos/h':>9} {'speed-up':>9} {'efficiency':>10}  "
          f"{'worst seam':>10} {'max drift':>9}")
    for r in results:
        print(f"{r['actors']:>6} {r['actors_used']:>5} {r['wall_s']:>8.1f} {r['videos_per_hour']:>9.1f} "
              f"{r['speedup']:>8.2f}x {r['efficiency']:>10.2f}  {max(r['seams']):>10.2f} {max(r['drift']):>9.2f}")
    print(f"same video for every actor count: {identical}")
    report = {"model": args.model, "frames": args.frames, "size": args.size, "steps": args.steps,
              "cpu_cores": os.cpu_count(), "identical_videos": identical, "results": results}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
