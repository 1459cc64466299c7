"""mp4 encoding (H.264, yuv420p) with an atomic commit, and reading a local video back."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from . import faults, storage


def write_mp4(frames: np.ndarray, final: str | Path, fps: int, row_id: str = "") -> None:
    """Encode uint8 frames (F, H, W, 3) to `final` (a local path or an object URI); a crash never leaves a
    partial file there (see storage.writing). `row_id` names the row for fault injection (see faults.py)."""
    import imageio_ffmpeg

    count, height, width, _ = frames.shape
    with storage.writing(final) as temp:
        writer = imageio_ffmpeg.write_frames(
            str(temp), (width, height), fps=fps, codec="libx264", pix_fmt_in="rgb24", pix_fmt_out="yuv420p",
            macro_block_size=2, quality=None, output_params=["-crf", "18", "-f", "mp4", "-movflags", "+faststart"],
            ffmpeg_log_level="error")
        try:
            writer.send(None)
            for index, frame in enumerate(frames):
                faults.at_write("encode", row_id, index / count)
                writer.send(np.ascontiguousarray(frame))
        finally:
            writer.close()


def read_mp4(path: Path) -> tuple[np.ndarray, float]:
    """All frames (F, H, W, 3) and the frame rate, decoded by ffmpeg."""
    import imageio_ffmpeg

    reader = imageio_ffmpeg.read_frames(str(path))
    meta = next(reader)
    width, height = meta["size"]
    frames = [np.frombuffer(buf, np.uint8).reshape(height, width, 3) for buf in reader]
    return np.stack(frames), float(meta["fps"])
