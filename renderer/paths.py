"""Output paths and atomic file commits.

Ids are data: a video's file name is derived from the id (a short slug plus a hash) so that no id
can name a location outside the output directory and two different ids never collide.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import socket
import time
import uuid
from pathlib import Path

from .errors import ConfigError

VIDEOS_DIR = "videos"
METADATA_FILE = "metadata.parquet"
TEMP_MARK = ".tmp-"
LOCK_FILE = ".render.lock"


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


@contextlib.contextmanager
def output_lock(out_dir: Path):
    """Hold `out_dir` for one run: a second run aimed at it refuses, naming the holder. A lock left by a
    run that died on this host is taken over; one from another host is only reported."""
    path = out_dir / LOCK_FILE
    holder = {"host": socket.gethostname(), "pid": os.getpid(), "since": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
              "job": os.environ.get("RAY_JOB_SUBMISSION_ID")}
    while True:
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            break
        except FileExistsError:
            other = _read_lock(path)
            if other and other.get("host") == holder["host"] and not _alive(other.get("pid")):
                path.unlink(missing_ok=True)  # its run is gone: take over
                continue
            who = f"pid {other.get('pid')} on {other.get('host')} since {other.get('since')}" if other else "an unknown run"
            job = f" (Ray job {other['job']})" if other and other.get("job") else ""
            raise ConfigError(f"{out_dir} is in use by another run: {who}{job}. Wait for it to finish, or delete "
                              f"{path} if that run is gone") from None
    with os.fdopen(fd, "w") as file:
        json.dump(holder, file)
    try:
        yield
    finally:
        path.unlink(missing_ok=True)


def _read_lock(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):  # being written this instant, or damaged
        return None


def _alive(pid) -> bool:
    if not isinstance(pid, int):
        return True  # unknown: assume it runs
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True
