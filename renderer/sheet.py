"""The contact sheet: one PNG with a row of frames per rendered video, for a terminal, a notebook or a pull request.

Each row shows the video's id and model on the left, then `frames` frames taken evenly from its first to its
last frame, all scaled to one height. Only `ok` rows have a video; the sheet takes the first `limit` of them in
the table's order.
"""
from __future__ import annotations

import numpy as np

from . import storage
from .video import decode

BACKGROUND = (24, 26, 30)
LABEL_COLOUR = (226, 228, 232)
MUTED_COLOUR = (150, 155, 165)
# pixels between frames and around the sheet, and the width of the label column
GAP = 4
LABEL_WIDTH = 200


def write_sheet(out, table, sheet, frames: int = 8, limit: int = 32, height: int = 96) -> int:
    """Draw the contact sheet of the run at `out` (its metadata `table`) into `sheet` (a local path or an object
    URI, written atomically). Returns the number of videos drawn; raises ValueError when no row is `ok`."""
    rows = [row for row in table.select(["id", "status", "model", "video_path"]).to_pylist()
            if row["status"] == "ok" and row["video_path"]][:limit]
    if not rows:
        raise ValueError("no rendered video to draw: the run has no `ok` row")
    strips = [_strip(row, _frames(storage.join(out, row["video_path"]), frames, height), height) for row in rows]
    image = _stack(strips)
    with storage.writing(sheet) as temp:
        image.save(temp, format="PNG")
    return len(rows)


def _frames(video, count: int, height: int) -> list[np.ndarray]:
    """`count` frames spread evenly over the video (all of them when it is shorter), scaled to `height`."""
    with storage.opened(video) as source:
        decoded, _ = decode(source)
    picks = np.unique(np.linspace(0, len(decoded) - 1, min(count, len(decoded))).round().astype(int))
    first = decoded[0]
    width = max(2, round(first.shape[1] * height / first.shape[0]))
    return [_resized(decoded[index], width, height) for index in picks]


def _resized(frame: np.ndarray, width: int, height: int) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.fromarray(frame).resize((width, height), Image.Resampling.BICUBIC))


def _strip(row: dict, frames: list[np.ndarray], height: int):
    """One video's row: its label, then its frames side by side."""
    from PIL import Image, ImageDraw, ImageFont

    width = LABEL_WIDTH + sum(frame.shape[1] + GAP for frame in frames)
    strip = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(strip)
    draw.text((GAP, GAP), _fit(row["id"], 26), fill=LABEL_COLOUR, font=ImageFont.load_default(size=14))
    draw.text((GAP, GAP + 20), _fit(row["model"] or "", 30), fill=MUTED_COLOUR, font=ImageFont.load_default(size=12))
    left = LABEL_WIDTH
    for frame in frames:
        strip.paste(Image.fromarray(frame), (left, 0))
        left += frame.shape[1] + GAP
    return strip


def _stack(strips):
    """The strips one under the other, with a margin."""
    from PIL import Image

    width = max(strip.width for strip in strips) + 2 * GAP
    height = sum(strip.height + GAP for strip in strips) + GAP
    sheet = Image.new("RGB", (width, height), BACKGROUND)
    top = GAP
    for strip in strips:
        sheet.paste(strip, (GAP, top))
        top += strip.height + GAP
    return sheet


def _fit(text: str, characters: int) -> str:
    """`text` cut to `characters`, marked with an ellipsis when cut."""
    return text if len(text) <= characters else text[:characters - 1] + "…"
