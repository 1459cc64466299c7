"""Fault injection for the reliability tests: GPU and process faults made to happen on a CPU, on purpose.

Test-only. Nothing here acts unless the environment variable RENDER_FAULTS is set, to a JSON list of
faults, each `{"point": P, "fault": F, "id": ROW_ID, "times": N}` (`times` omitted: every time):

| point    | fault         | what happens                                                              |
|----------|---------------|---------------------------------------------------------------------------|
| render   | kill          | the actor process is killed (SIGKILL) half a second into the row's render   |
| render   | hang          | the actor sleeps for an hour instead of rendering                          |
| render   | raise         | the render raises RuntimeError                                             |
| render   | cuda_error    | the render raises the error a poisoned CUDA context raises                 |
| render   | oom           | the pipeline call raises torch.OutOfMemoryError                            |
| output   | nan           | the pipeline's output frames are NaN                                       |
| output   | black         | the pipeline's output frames are all black                                 |
| encode   | kill          | the encode worker is killed after writing half the frames                  |
| encode   | enospc        | the encode's write fails with "No space left on device" half way through   |
| encode   | slow          | the encode pauses 5 seconds half way through (a slow disk or a busy CPU)    |
| metadata | enospc        | writing metadata.parquet fails with "No space left on device" half way     |

Every firing appends one JSON line to `$RENDER_FAULTS_LOG` (a file path; required), so a test first proves
that its fault fired, and `times` counts firings across processes and actor restarts. The driver hands both
variables to its actors and encode tasks (fault_hook.runtime_env), whichever Ray they run on. Production code
reaches this module only through renderer/fault_hook.py.
"""
from __future__ import annotations

import errno
import fcntl
import json
import os
import signal
import time

OOM_MESSAGE = "CUDA out of memory. Tried to allocate 2.00 GiB (injected by RENDER_FAULTS)"
SLOW_WRITE_S = 5.0
CUDA_ERROR_MESSAGE = "CUDA error: an illegal memory access was encountered (injected by RENDER_FAULTS)"


def due(point: str, row_id: str) -> str | None:
    """The fault due now at `point` for this row (and logged as fired), or None."""
    spec = os.environ.get("RENDER_FAULTS")
    if not spec:
        return None
    faults = [f for f in json.loads(spec) if f["point"] == point and f["id"] == row_id]
    if not faults:
        return None
    with open(os.environ["RENDER_FAULTS_LOG"], "a+") as log:
        # counting the firings and logging this one under one lock: the members of a gang reach the same row's
        # point at the same moment, and a fault due `times` times must fire only that often among them
        fcntl.flock(log, fcntl.LOCK_EX)
        log.seek(0)
        entries = parsed(log)
        for fault in faults:
            if "times" in fault and len(matching(entries, point, row_id, fault["fault"])) >= fault["times"]:
                continue
            log.write(json.dumps({"point": point, "id": row_id, "fault": fault["fault"], "pid": os.getpid(),
                                  "time": time.time()}) + "\n")
            return fault["fault"]
    return None


def fired(point: str | None = None, row_id: str | None = None, fault: str | None = None) -> list[dict]:
    """The firings logged so far, filtered by whichever of point, id and fault are given."""
    try:
        with open(os.environ["RENDER_FAULTS_LOG"]) as log:
            return matching(parsed(log), point, row_id, fault)
    except FileNotFoundError:
        return []


def parsed(log) -> list[dict]:
    """The firings in an open log."""
    return [json.loads(line) for line in log if line.strip()]


def matching(entries: list[dict], point: str | None, row_id: str | None, fault: str | None) -> list[dict]:
    """The firings among `entries` at `point`, for `row_id`, of `fault` (None: any)."""
    return [e for e in entries if (point is None or e["point"] == point) and (row_id is None or e["id"] == row_id)
            and (fault is None or e["fault"] == fault)]


def strike(point: str, row_id: str, value, done: float):
    """What renderer/fault_hook.py calls at each point: the fault due there, acted out."""
    if point == "render":
        at_render(row_id)
    elif point == "output":
        return at_output(row_id, value)
    else:
        at_write(point, row_id, done)
    return value


def at_render(row_id: str) -> None:
    """Before a row's (or chunk's) pipeline call in the actor."""
    fault = due("render", row_id)
    # a moment into the row, as a crash inside the denoising loop would come
    if fault == "kill":
        time.sleep(0.5)
        os.kill(os.getpid(), signal.SIGKILL)
    elif fault == "hang":
        time.sleep(3600)
    elif fault == "raise":
        raise RuntimeError("injected failure (RENDER_FAULTS)")
    elif fault == "cuda_error":
        raise RuntimeError(CUDA_ERROR_MESSAGE)
    elif fault == "oom":
        import torch

        raise torch.OutOfMemoryError(OOM_MESSAGE)


def at_output(row_id: str, frames):
    """The pipeline's float frames, replaced by NaN or black ones when a fault is due."""
    fault = due("output", row_id)
    if fault == "nan":
        return frames * float("nan")
    if fault == "black":
        return frames * 0
    return frames


def at_write(point: str, row_id: str, done: float) -> None:
    """Inside a write (`done`: the share written so far): a worker death or a full disk half way."""
    if done < 0.5:
        return
    fault = due(point, row_id)
    if fault == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif fault == "enospc":
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    elif fault == "slow":
        time.sleep(SLOW_WRITE_S)
