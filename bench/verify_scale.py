"""`render verify` over a run of 1,000 small videos on the local disk, quick and --deep.

    python bench/verify_scale.py OUT.json [--videos 1000] [--repeats 3]

Writes the videos (16 frames of 64x64 at 8 fps, the tiny presets' size) and their posters with the renderer's
own writers, and a metadata.parquet in the run's schema whose records carry what those writers committed. Then
times, in this process, the quick check (one listing of videos/, sizes compared) and the deep one (every file
read back and hashed, every video decoded whole) with 1 and with DEEP_WORKERS threads, and the `render verify`
command in a fresh process (its start included). Prints a table and writes JSON.
"""
import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]
from video_io import frames_of  # noqa: E402

from renderer.metadata import schema  # noqa: E402
from renderer.paths import METADATA_FILE, poster_relpath, video_relpath  # noqa: E402
from renderer.verify import DEEP_WORKERS, verify  # noqa: E402
from renderer.video import write_mp4, write_poster  # noqa: E402

FRAMES, HEIGHT, WIDTH, FPS = 16, 64, 64, 8


def write_run(out: Path, videos: int) -> float:
    """The videos, posters and records of a finished run under `out`; returns the seconds the writing took."""
    frames = frames_of(FRAMES, HEIGHT, WIDTH)
    records = []
    start = time.perf_counter()
    for index in range(videos):
        row_id = f"row-{index:05d}"
        path = video_relpath(row_id)
        # a different first frame per video, so that no two files are the same
        frames[0, 0, 0] = index % 256
        video = write_mp4(frames, out / path, FPS)
        poster = write_poster(frames[0], out / poster_relpath(path))
        records.append({"id": row_id, "status": "ok", "video_path": path, "num_frames": FRAMES, "fps": FPS,
                        "width": WIDTH, "height": HEIGHT, "video_bytes": video.size, "video_sha256": video.checksum,
                        "poster_bytes": poster.size, "poster_sha256": poster.checksum})
    seconds = time.perf_counter() - start
    pq.write_table(pa.Table.from_pylist(records, schema=schema()), out / METADATA_FILE)
    return seconds


def timed(function, repeats: int) -> dict:
    """Best and median wall seconds of `repeats` calls; the last call's result must find nothing wrong."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        problems = function()
        times.append(time.perf_counter() - start)
        assert not problems, problems[:3]
    times.sort()
    return {"best_s": times[0], "median_s": times[len(times) // 2], "repeats": repeats}


def command(out: Path, *args) -> list:
    """`render verify` in a fresh process; its problems (none expected), judged by its exit code."""
    proc = subprocess.run([sys.executable, "-m", "jobs.cli", "verify", str(out), *args], cwd=ROOT,
                          capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    return [] if proc.returncode == 0 else [proc.stdout + proc.stderr]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("json_out")
    parser.add_argument("--videos", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="verify-bench-") as folder:
        out = Path(folder)
        write_seconds = write_run(out, args.videos)
        total_bytes = sum(p.stat().st_size for p in (out / "videos").iterdir())
        cases = {
            "quick, in process": lambda: verify(out).problems,
            "deep, in process, 1 thread": lambda: verify(out, deep=True, workers=1).problems,
            f"deep, in process, {DEEP_WORKERS} threads": lambda: verify(out, deep=True).problems,
            "render verify (fresh process)": lambda: command(out),
            "render verify --deep (fresh process)": lambda: command(out, "--deep"),
        }
        results = [{"case": name, **timed(function, args.repeats)} for name, function in cases.items()]
    print(f"{args.videos} videos of {FRAMES}x{HEIGHT}x{WIDTH} and their posters ({total_bytes / 1e6:.1f} MB), "
          f"written in {write_seconds:.1f} s")
    print(f"{'case':<40} {'best s':>8} {'median s':>9} {'ms/video':>9}")
    for row in results:
        print(f"{row['case']:<40} {row['best_s']:>8.3f} {row['median_s']:>9.3f} "
              f"{1000 * row['median_s'] / args.videos:>9.3f}")
    machine = {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()}
    summary = {"machine": machine, "videos": args.videos, "shape": [FRAMES, HEIGHT, WIDTH], "fps": FPS,
               "bytes": total_bytes, "write_s": write_seconds, "results": results}
    Path(args.json_out).write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
