"""Output paths and the output folder's lock.

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
from pathlib import Path

from . import storage
from .errors import ConfigError

VIDEOS_DIR = "videos"
METADATA_FILE = "metadata.parquet"
LOCK_FILE = ".render.lock"
GALLERY_FILE = "index.html"
# the gallery's data files (its rows, a few thousand per file)
GALLERY_DIR = "gallery"
POSTER_SUFFIX = ".jpg"
# device names Windows reserves whatever follows them after a dot (CON, con.txt): never a file name's start
WINDOWS_RESERVED = re.compile(r"^(CON|PRN|AUX|NUL|COM[0-9]|LPT[0-9])(\.|$)", re.IGNORECASE)


def slug(row_id: str) -> str:
    """The id reduced to [A-Za-z0-9._-], at most 60 characters, never hidden, empty or a Windows device name."""
    text = re.sub(r"[^A-Za-z0-9._-]+", "_", row_id)[:60].lstrip(".") or "row"
    return ("_" + text)[:60] if WINDOWS_RESERVED.match(text) else text


def video_relpath(row_id: str) -> str:
    digest = hashlib.sha256(row_id.encode("utf-8")).hexdigest()[:8]
    return f"{VIDEOS_DIR}/{slug(row_id)}-{digest}.mp4"


def poster_relpath(video_path: str) -> str:
    """The poster (the first frame, a small JPEG) written beside a video: the same name, another extension."""
    return video_path.removesuffix(".mp4") + POSTER_SUFFIX


def refuse_linked_videos_dir(out_dir) -> None:
    """Videos land only inside `out_dir`: a symbolic link planted at DIR/videos would send them (and the clean-up
    of temporary files) wherever it points, so the run refuses it. Links at file paths need no check: files are
    renamed into place, which replaces a link instead of writing through it."""
    if storage.is_uri(out_dir):
        return
    videos = Path(out_dir) / VIDEOS_DIR
    if videos.is_symlink():
        raise ConfigError(f"{videos} is a symbolic link (to {os.readlink(videos)}); videos are written only inside "
                          f"{out_dir}: remove the link")


def clean_temp_files(out_dir) -> int:
    """Remove temporary files left by an interrupted run; they are never promoted. An object store has
    none: its files are written in a local temporary folder and uploaded whole."""
    if storage.is_uri(out_dir):
        return 0
    removed = 0
    for folder in (Path(out_dir), Path(out_dir) / VIDEOS_DIR, Path(out_dir) / GALLERY_DIR):
        if folder.is_dir():
            for leftover in folder.glob(f"{storage.TEMP_MARK}*"):
                leftover.unlink(missing_ok=True)
                removed += 1
    return removed


@contextlib.contextmanager
def output_lock(out_dir):
    """Hold `out_dir` for one run: a second run aimed at it refuses, naming the holder. A lock left by a
    run that died on this host is taken over; one from another host is only reported.

    On a local or NFS folder the lock file is created exclusively, so two runs can never both hold it. On
    an object store the lock is best effort (see storage.create_exclusive): a run refuses while a lock
    object exists, but two runs started in the same instant can both take it."""
    path = storage.join(out_dir, LOCK_FILE)
    holder = {"host": socket.gethostname(), "pid": os.getpid(), "since": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
              "job": os.environ.get("RAY_JOB_SUBMISSION_ID")}
    try:
        while not storage.create_exclusive(path, holder):
            other = _read_lock(path)
            if other and other.get("host") == holder["host"] and not _alive(other.get("pid")):
                # its run is gone: take over
                storage.delete(path)
                continue
            who = (f"pid {other.get('pid')} on {other.get('host')} since {other.get('since')}" if other
                   else "an unknown run")
            job = f" (Ray job {other['job']})" if other and other.get("job") else ""
            raise ConfigError(f"{out_dir} is in use by another run: {who}{job}. Wait for it to finish, or delete "
                              f"{path} if that run is gone")
    except (OSError, ValueError) as exc:
        # unwritable folder, missing bucket, no credentials, unknown scheme
        raise ConfigError(f"{out_dir}: cannot take the output lock {path} ({exc})") from None
    try:
        yield
    finally:
        storage.delete(path)


def _read_lock(path) -> dict | None:
    try:
        return json.loads(storage.read_bytes(path))
    except (OSError, ValueError):
        # being written this instant, or damaged
        return None


def _alive(pid) -> bool:
    if not isinstance(pid, int):
        # unknown: assume it runs
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        # exists, owned by another user
        return True
    return True
