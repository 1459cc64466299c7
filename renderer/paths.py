"""Output paths and atomic file commits.

Ids are data: a video's file name is derived from the id (a short slug plus a hash) so that no id
can name a location outside the output directory and two different ids never collide.
"""
from __future__ import annotations

import hashlib
import os
import re
import uuid
from pathlib import Path

VIDEOS_DIR = "videos"
METADATA_FILE = "metadata.parquet"
TEMP_MARK = ".tmp-"


def slug(row_id: str) -> str:
    """The id reduced to [A-Za-z0-9._-], at most 60 characters, never hidden or empty."""
    text = re.sub(r"[^A-Za-z0-9._-]+", "_", row_id)[:60].lstrip(".")
    return text or "row"


def video_relpath(row_id: str) -> str:
    digest = hashlib.sha256(row_id.encode("utf-8")).hexdigest()[:8]
    return f"{VIDEOS_DIR}/{slug(row_id)}-{digest}.mp4"


def temp_path_for(final: Path) -> Path:
    """A unique temporary sibling of `final`; only `commit` ever gives it the final name."""
    return final.with_name(f"{TEMP_MARK}{uuid.uuid4().hex[:12]}-{final.name}")


def commit(temp: Path, final: Path) -> None:
    """Atomically move a finished file into place (rename replaces a planted symlink, never follows it)."""
    os.replace(temp, final)


def clean_temp_files(out_dir: Path) -> int:
    """Remove temporary files left by an interrupted run; they are never promoted."""
    removed = 0
    for folder in (out_dir, out_dir / VIDEOS_DIR):
        if folder.is_dir():
            for leftover in folder.glob(f"{TEMP_MARK}*"):
                leftover.unlink(missing_ok=True)
                removed += 1
    return removed
