"""Conditioning inputs (images, videos): located and checked on the driver, decoded on the actor.

An input is a local path or an object URI (see storage.py), resolved against its table's location, or
an image's encoded bytes.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import re
import warnings
from pathlib import Path

from . import storage
from .errors import RowRejected
from .video import decode

URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:(//|/)")
# a conditioning image is resized to the row's size (about 1024 px a side at most): 64 megapixels is generous,
# and a file claiming more is refused before PIL allocates it
MAX_IMAGE_PIXELS = 8192 * 8192


def input_ref(column: str, value, table_dir: str | Path, allow_bytes: bool) -> str | bytes:
    """Turn an `image`/`video` cell into an absolute path or object URI beside the table (or raw bytes);
    reject URLs and URIs in the cell before anything is reached."""
    if allow_bytes and isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if not isinstance(value, str):
        kinds = "a path string or PNG/JPEG bytes" if allow_bytes else "a path string"
        raise RowRejected(column, value, f"must be {kinds}")
    if URI.match(value):
        raise RowRejected(column, value, "absolute URLs/URIs are not fetched; use a path relative to the table")
    location = storage.resolve(table_dir, value)
    try:
        found = storage.is_file(location)
    except OSError as exc:
        # the store refused or could not be reached
        raise RowRejected(column, value, f"cannot reach {location} ({exc})") from None
    if not found:
        raise RowRejected(column, value, f"no such file (resolved to {location})")
    return location


def check_image(ref: str | bytes, column: str = "image") -> None:
    """A cheap integrity check for the driver: the header, the pixel count and the structure (PNG chunk
    checksums), no full decode. A JPEG cut short passes here and is rejected when the actor decodes it.
    Errors name `column` (`image` or `last_image`)."""
    with _opened_image(ref, column) as img:
        img.verify()


def load_image(ref: str | bytes, column: str = "image"):
    """Decode to 8-bit RGB as a viewer shows the image: the EXIF orientation applied, 16-bit greyscale scaled
    to 8 bits (PIL's own conversion clips it), transparency flattened onto white, CMYK and palettes converted."""
    from PIL import ImageOps

    with _opened_image(ref, column) as img:
        return _to_rgb(ImageOps.exif_transpose(img))


def check_video(path: str) -> None:
    """The file must hold a video stream whose first frame FFmpeg decodes (a header alone can lie: FFmpeg
    takes any file named .png for an image)."""
    if not _decoded_video(path, 1):
        raise RowRejected("video", path, "not a readable video (no frame decodes)")


def load_video(path: str, num_frames: int, width: int, height: int) -> list:
    """The first `num_frames` frames as RGB images of the row's size."""
    from PIL import Image

    frames = _decoded_video(path, num_frames, (width, height))
    if len(frames) < num_frames:
        raise RowRejected("video", path, f"has {len(frames)} frames, the row asks for {num_frames}")
    return [Image.fromarray(frame) for frame in frames]


def _decoded_video(path: str, limit: int, size: tuple[int, int] | None = None) -> list:
    """video.decode's frames; any failure to read is a RowRejected naming the value. Of an object, only the
    ranges the decoder asks for are fetched (its header, which may sit at its end, and its first frames)."""
    try:
        with storage.opened(path) as source:
            return decode(source, limit, size)[0]
    except Exception as exc:
        raise RowRejected("video", path, f"not a readable video ({type(exc).__name__}: {str(exc)[-200:]})") from None


def input_identity(ref: str | bytes) -> str:
    """What a result depends on: content hash for bytes, location+size+mtime for files (no re-read)."""
    if isinstance(ref, bytes):
        return "sha256:" + hashlib.sha256(ref).hexdigest()
    size, mtime_ns = storage.stat(ref)
    return f"file:{ref}:{size}:{mtime_ns}"


@contextlib.contextmanager
def _opened_image(ref: str | bytes, column: str):
    """The image at `ref`, opened (header only) and within MAX_IMAGE_PIXELS; any failure to read it, here or
    in the block, is a RowRejected naming the value."""
    from PIL import Image

    try:
        # read whole (PIL decodes or verifies all of it anyway): one request to an object store, not many ranges
        data = ref if isinstance(ref, bytes) else storage.read_bytes(ref)
        if not data:
            raise RowRejected(column, ref, "not a readable image (empty)")
        with warnings.catch_warnings():
            # the limit checked below is lower
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as exc:
        # far past PIL's own limit: it refuses before telling the size
        found = re.search(r"\((\d+) pixels\)", str(exc))
        raise _too_large(column, ref, found.group(1) if found else "too many") from None
    except RowRejected:
        raise
    except Exception as exc:
        raise _unreadable(column, ref, exc) from None
    with img:
        if img.width * img.height > MAX_IMAGE_PIXELS:
            raise _too_large(column, ref, f"{img.width}x{img.height} = {img.width * img.height}")
        try:
            yield img
        except Exception as exc:
            raise _unreadable(column, ref, exc) from None


def _too_large(column: str, ref: str | bytes, pixels: str) -> RowRejected:
    return RowRejected(column, ref, f"{pixels} pixels is over the limit of {MAX_IMAGE_PIXELS} pixels (8192x8192); "
                       "refused before decoding (a possible decompression bomb)")


def _unreadable(column: str, ref: str | bytes, exc: Exception) -> RowRejected:
    from PIL import UnidentifiedImageError

    # PIL's own message for an unknown format names a BytesIO object, not the input
    detail = "no image format recognised" if isinstance(exc, UnidentifiedImageError) else f"{type(exc).__name__}: {exc}"
    return RowRejected(column, ref, f"not a readable image ({detail})")


def _to_rgb(img):
    from PIL import Image

    # 16-bit greyscale (PNG): 0..65535 onto 0..255
    if img.mode.startswith("I;16") or img.mode == "I":
        import numpy as np

        wide = np.clip(np.asarray(img), 0, 65535).astype(np.uint32)
        return Image.fromarray(((wide * 255 + 32767) // 65535).astype(np.uint8)).convert("RGB")
    if img.mode in ("RGBA", "LA", "PA") or "transparency" in img.info:
        rgba = img.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")
    return img.convert("RGB")
