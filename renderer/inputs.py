"""Conditioning inputs (images, videos): located and checked on the driver, decoded on the actor.

An input is a local path or an object URI (see storage.py), resolved against its table's location, or
an image's encoded bytes.
"""
from __future__ import annotations

import hashlib
import io
import re
from pathlib import Path

from . import storage
from .errors import RowRejected

URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:(//|/)")


def input_ref(column: str, value, table_dir: str | Path, allow_bytes: bool) -> str | bytes:
    """Turn an `image`/`video` cell into an absolute path or object URI beside the table (or raw bytes);
    reject URLs and URIs in the cell before anything is reached."""
    if allow_bytes and isinstance(value, (bytes, bytearray)):
        if not value:
            raise RowRejected(column, value, "empty bytes")
        return bytes(value)
    if not isinstance(value, str):
        kinds = "a path string or PNG/JPEG bytes" if allow_bytes else "a path string"
        raise RowRejected(column, value, f"must be {kinds}")
    if URI.match(value):
        raise RowRejected(column, value, "absolute URLs/URIs are not fetched; use a path relative to the table")
    location = storage.resolve(table_dir, value)
    try:
        found = storage.is_file(location)
    except OSError as exc:  # the store refused or could not be reached
        raise RowRejected(column, value, f"cannot reach {location} ({exc})") from None
    if not found:
        raise RowRejected(column, value, f"no such file (resolved to {location})")
    return location


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
    """ffmpeg must recognise a video stream (reads the header only; an object is downloaded first, since
    an mp4's header may sit at its end)."""
    import imageio_ffmpeg

    try:
        with storage.local_copy(path) as local:
            reader = imageio_ffmpeg.read_frames(local)
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
        with storage.local_copy(path) as local:
            reader = imageio_ffmpeg.read_frames(local, output_params=["-vf", f"scale={width}:{height}"])
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
    """What a result depends on: content hash for bytes, location+size+mtime for files (no re-read)."""
    if isinstance(ref, bytes):
        return "sha256:" + hashlib.sha256(ref).hexdigest()
    size, mtime_ns = storage.stat(ref)
    return f"file:{ref}:{size}:{mtime_ns}"


def _open_image(ref: str | bytes):
    from PIL import Image

    # read whole (PIL decodes or verifies all of it anyway): one request to an object store, not many ranges
    return Image.open(io.BytesIO(ref if isinstance(ref, bytes) else storage.read_bytes(ref)))
