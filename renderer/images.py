"""Conditioning images: where a row's image comes from, checked on the driver, decoded on the actor."""
from __future__ import annotations

import hashlib
import io
import os
import re
from pathlib import Path

from .errors import RowRejected

URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:(//|/)")


def image_ref(value, table_dir: Path) -> str | bytes:
    """Turn the `image` cell into an absolute local path or raw bytes; reject URLs and URIs."""
    if isinstance(value, (bytes, bytearray)):
        if not value:
            raise RowRejected("image", value, "empty image bytes")
        return bytes(value)
    if not isinstance(value, str):
        raise RowRejected("image", value, "must be a path string or PNG/JPEG bytes")
    if URI.match(value):
        raise RowRejected("image", value, "absolute URLs/URIs are not fetched; use a path relative to the table")
    path = (table_dir / value).resolve()
    if not path.is_file():
        raise RowRejected("image", value, f"no such file (resolved to {path})")
    return str(path)


def check_image(ref: str | bytes) -> None:
    """A cheap integrity check for the driver (header and structure, no full decode)."""
    from PIL import Image

    try:
        with _open(ref) as img:
            img.verify()
    except Exception as exc:  # PIL raises many types for bad files
        raise RowRejected("image", ref, f"not a readable image ({type(exc).__name__}: {exc})") from None


def load_image(ref: str | bytes):
    """Decode to RGB with the EXIF orientation applied."""
    from PIL import Image, ImageOps

    try:
        with _open(ref) as img:
            img = ImageOps.exif_transpose(img)
            return img.convert("RGB")
    except Exception as exc:
        raise RowRejected("image", ref, f"not a readable image ({type(exc).__name__}: {exc})") from None


def image_identity(ref: str | bytes) -> str:
    """What a result depends on: content hash for bytes, path+size+mtime for files (no re-read)."""
    if isinstance(ref, bytes):
        return "sha256:" + hashlib.sha256(ref).hexdigest()
    stat = os.stat(ref)
    return f"file:{ref}:{stat.st_size}:{stat.st_mtime_ns}"


def _open(ref: str | bytes):
    from PIL import Image

    return Image.open(io.BytesIO(ref) if isinstance(ref, bytes) else ref)

