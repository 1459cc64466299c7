"""Video encoding and decoding, in this process through PyAV (renderer/video.py) against an ffmpeg program per
call (imageio-ffmpeg: what diffusers' export_to_video and load_video use, and what this project used before),
side by side in one run on the CPU.

    python bench/video_io.py OUT.json [--repeats 20]

Three operations, each with the same FFmpeg settings both ways:
- encode: uint8 frames to an H.264 yuv420p mp4 at CRF 18 with the index first (faststart), the way every
  rendered video is written: on a CPU encode task, once per row;
- check: read a video's header and decode its first frame, the way the driver checks each row's `video`
  while planning the table;
- load: decode 16 frames scaled to the row's size, the way an actor reads a row's control video.

Then planning a table whose rows share their videos: 1,000 pix2pix rows over 10 source videos of 16x512x512,
with `check_rows` (each file checked once) against `to_request` row by row (each row checking its file).

Videos: 2 frames of 16x16 (bench/scaling.py's rows: all overhead), 16 of 256x256, 16 of 512x512 (AnimateDiff's
size) and 25 of 576x1024 (SVD-XT's), of smooth moving gradients with a little noise. Per call: wall time and
CPU time (this process and its children, so the ffmpeg program's CPU is counted). Prints a table and writes
JSON.
"""
import argparse
import json
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from renderer.inputs import check_video, load_video  # noqa: E402
from renderer.request import to_request  # noqa: E402
from renderer.run import check_rows  # noqa: E402
from renderer.tables import read_tables  # noqa: E402
from renderer.video import write_mp4  # noqa: E402

SHAPES = [(2, 16, 16), (16, 256, 256), (16, 512, 512), (25, 576, 1024)]  # frames, height, width
FPS = 8


def frames_of(count: int, height: int, width: int) -> np.ndarray:
    """Gradients that move from frame to frame, plus a little noise: closer to a rendered video than noise."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    noise = np.random.default_rng(0).normal(0, 4, (count, height, width, 3)).astype(np.float32)
    t = np.arange(count, dtype=np.float32)[:, None, None]
    base = np.stack([x / width * 255 + 8 * t, y / height * 255 - 5 * t, (x + y) / (width + height) * 255 + 3 * t], -1)
    return np.clip(base % 256 + noise, 0, 255).astype(np.uint8)


def program_encode(frames: np.ndarray, path: str, fps: int) -> None:
    import imageio_ffmpeg

    count, height, width, _ = frames.shape
    writer = imageio_ffmpeg.write_frames(
        path, (width, height), fps=fps, codec="libx264", pix_fmt_in="rgb24", pix_fmt_out="yuv420p",
        macro_block_size=2, quality=None, output_params=["-crf", "18", "-f", "mp4", "-movflags", "+faststart"],
        ffmpeg_log_level="error")
    writer.send(None)
    for frame in frames:
        writer.send(np.ascontiguousarray(frame))
    writer.close()


def program_check(path: str) -> None:
    import imageio_ffmpeg

    reader = imageio_ffmpeg.read_frames(path)
    next(reader)  # the header
    next(reader)  # the first frame
    reader.close()


def program_load(path: str, count: int, width: int, height: int) -> list:
    import imageio_ffmpeg

    reader = imageio_ffmpeg.read_frames(path, output_params=["-vf", f"scale={width}:{height}"])
    next(reader)
    frames = []
    for buffer in reader:
        frames.append(np.frombuffer(buffer, np.uint8).reshape(height, width, 3))
        if len(frames) == count:
            break
    reader.close()
    return frames


def cpu_seconds() -> float:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def per_call(work, repeats: int) -> dict:
    """Milliseconds of wall and CPU time per call, after one untimed call."""
    work(0)
    wall, cpu = time.perf_counter(), cpu_seconds()
    for index in range(repeats):
        work(index)
    return {"wall_ms": (time.perf_counter() - wall) / repeats * 1e3, "cpu_ms": (cpu_seconds() - cpu) / repeats * 1e3}


def measure(shape: tuple, repeats: int, scratch: Path) -> list[dict]:
    count, height, width = shape
    frames = frames_of(*shape)
    repeats = max(2, min(repeats, round(repeats * 1e6 / frames.size * 3)))  # fewer above a megapixel in all
    video = str(scratch / f"{count}x{height}x{width}.mp4")
    write_mp4(frames, video, FPS)
    loaded = min(count, 16)
    operations = {
        "encode": (lambda i: write_mp4(frames, scratch / f"ours-{i}.mp4", FPS),
                   lambda i: program_encode(frames, str(scratch / f"program-{i}.mp4"), FPS)),
        "check": (lambda i: check_video(video), lambda i: program_check(video)),
        "load": (lambda i: load_video(video, loaded, width, height),
                 lambda i: program_load(video, loaded, width, height)),
    }
    results = []
    for operation, (ours, program) in operations.items():
        times = {"pyav": per_call(ours, repeats), "ffmpeg_program": per_call(program, repeats)}
        results.append({"operation": operation, "video": f"{count}x{height}x{width}", "repeats": repeats,
                        "bytes": os.path.getsize(video), **times,
                        "cpu_saved_ms": times["ffmpeg_program"]["cpu_ms"] - times["pyav"]["cpu_ms"],
                        "speedup_wall": times["ffmpeg_program"]["wall_ms"] / times["pyav"]["wall_ms"]})
        print_row(results[-1])
    return results


def measure_shared(scratch: Path, rows: int = 1000, videos: int = 10) -> dict:
    """Planning `rows` rows that share `videos` source videos: each file checked once, or each row checking."""
    for index in range(videos):
        write_mp4(frames_of(16, 512, 512), scratch / f"source{index}.mp4", FPS)
    table = str(scratch / "shared.parquet")
    pq.write_table(pa.Table.from_pylist([dict(id=f"r{i}", model="tiny-pix2pix-video", prompt=f"edit {i}",
                                              video=f"source{i % videos}.mp4") for i in range(rows)]), table)
    start = time.perf_counter()
    planned = len(check_rows([table], None).requests)
    once = time.perf_counter() - start
    start = time.perf_counter()
    for item in read_tables([table], False):
        to_request(item.row, default_model=None, table_dir=item.table_dir)
    every_row = time.perf_counter() - start
    print(f"planning {rows} rows over {videos} shared 16x512x512 videos: {once:.2f} s checking each file once, "
          f"{every_row:.2f} s checking each row ({planned} rows planned)", flush=True)
    return {"rows": rows, "videos": videos, "each_file_once_s": once, "each_row_s": every_row, "planned": planned}


def print_row(r: dict) -> None:
    ours, program = r["pyav"], r["ffmpeg_program"]
    print(f"| {r['operation']} | {r['video']} | {ours['wall_ms']:.1f} | {ours['cpu_ms']:.1f} "
          f"| {program['wall_ms']:.1f} | {program['cpu_ms']:.1f} | {r['speedup_wall']:.2f}x "
          f"| {r['cpu_saved_ms']:.1f} |", flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    parser.add_argument("--repeats", type=int, default=20, help="calls per operation, for videos of up to a "
                        "megapixel in all frames; fewer for larger ones, at least 2")
    args = parser.parse_args()
    print("| operation | video (FxHxW) | PyAV wall ms | PyAV CPU ms | ffmpeg program wall ms | ffmpeg program CPU ms "
          "| wall speed-up | CPU saved ms |")
    print("|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory(prefix="video-io-") as scratch:
        results = [r for shape in SHAPES for r in measure(shape, args.repeats, Path(scratch))]
        shared = measure_shared(Path(scratch))
    import av

    report = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "av": av.__version__,
                          "ffmpeg": av.ffmpeg_version_info}, "results": results, "shared_videos": shared}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
