"""Conditioning inputs (images, videos): located and checked on the driver, decoded on the actor."""
from __future__ import annotations

import hashlib
import io
import os
import re
from pathlib import Path

from .errors import RowRejected

URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:(//|/)")


def input_ref(column: str, value, table_dir: Path, allow_bytes: bool) -> str | bytes:
    """Turn an `image`/`video` cell into an absolute local path (or raw bytes); reject URLs and URIs."""
    if allow_bytes and isinstance(value, (bytes, bytearray)):
        if not value:
            raise RowRejected(column, value, "empty bytes")
        return bytes(value)
    if not isinstance(value, str):
        kinds = "a path string or PNG/JPEG bytes" if allow_bytes else "a path string"
        raise RowRejected(column, value, f"must be {kinds}")
    if URI.match(value):
        raise RowRejected(column, value, "absolute URLs/URIs are not fetched; use a path relative to the table")
    path = (table_dir / value).resolve()
    if not path.is_file():
        raise RowRejected(column, value, f"no such file (resolved to {path})")
    return str(path)


def check_image(ref: str | bytes) -> None:
    """A cheap integrity check for the driver (header and structure, no full decode)."""
    try:
        with _open_image(ref) as img:
            img.verify()
    except Exception as exc:  # PIL raises many types for bad files
        raise RowRejected("image", ref, f"not a readable image ({type(exc).__name__}: {exc})") from None


def load_image(ref: str | bytes):
    """Decode to RGB with the EXIF orientation applied."""
    from PIL import ImageOps

    try:
        with _open_image(ref) as img:
            return ImageOps.exif_transpose(img).convert("RGB")
    except Exception as exc:
        raise RowRejected("image", ref, f"not a readable image ({type(exc).__name__}: {exc})") from None


def check_video(path: str) -> None:
    """ffmpeg must recognise a video stream (reads the header only)."""
    import imageio_ffmpeg

    try:
        reader = imageio_ffmpeg.read_frames(path)
        next(reader)
        reader.close()
    except Exception as exc:
        raise RowRejected("video", path, f"not a readable video ({type(exc).__name__}: {str(exc)[-200:]})") from None


def load_video(path: str, num_frames: int, width: int, height: int) -> list:
    """The first `num_frames` frames as RGB images of the row's size."""
    import numpy as np
    import imageio_ffmpeg
    from PIL import Image

    frames = []
    try:
        reader = imageio_ffmpeg.read_frames(path, output_params=["-vf", f"scale={width}:{height}"])
        next(reader)  # the header
        for buffer in reader:
            frames.append(Image.fromarray(np.frombuffer(buffer, np.uint8).reshape(height, width, 3)))
            if len(frames) == num_frames:
                break
        reader.close()
    except Exception as exc:
        raise RowRejected("video", path, f"not a readable video ({type(exc).__name__}: {str(exc)[-200:]})") from None
    if len(frames) < num_frames:
        raise RowRejected("video", path, f"has {len(frames)} frames, the row asks for {num_frames}")
    return frames


def input_identity(ref: str | bytes) -> str:
    """What a result depends on: content hash for bytes, path+size+mtime for files (no re-read)."""
    if isinstance(ref, bytes):
        return "sha256:" + hashlib.sha256(ref).hexdigest()
    stat = os.stat(ref)
    return f"file:{ref}:{stat.st_size}:{stat.st_mtime_ns}"


def _open_image(ref: str | bytes):
    from PIL import Image

    return Image.open(io.BytesIO(ref) if isinstance(ref, bytes) else ref)
