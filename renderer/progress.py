"""Terminal progress: rows done / failed / in flight, chunks of long rows, videos per minute and ETA."""
from __future__ import annotations

import sys
import time


class Progress:
    def __init__(self, total: int, chunks: int = 0, stream=sys.stderr, every: float = 10.0):
        self.total, self.chunks, self.stream, self.every = total, chunks, stream, every
        self.done = self.failed = self.in_flight = self.chunks_done = self.retries = 0
        self.started = time.monotonic()
        self._last = 0.0
        self.live = hasattr(stream, "isatty") and stream.isatty()

    def event(self, kind: str, ok: bool = True) -> None:
        if kind == "start":
            self.in_flight += 1
        elif kind == "retry":
            self.retries += 1
        elif kind == "chunk":
            self.chunks_done += 1
        elif kind == "done":
            self.in_flight -= 1
            self.done += 1
            self.failed += not ok
        self.show()

    def show(self, force: bool = False) -> None:
        now = time.monotonic()
        if not (force or self.live or now - self._last >= self.every):
            return
        self._last = now
        minutes = max(now - self.started, 1e-9) / 60
        rate = self.done / minutes
        eta = (self.total - self.done) / rate * 60 if rate else float("nan")
        bar = _bar(self.done / self.total if self.total else 1.0)
        chunks = f"chunks {self.chunks_done}/{self.chunks} | " if self.chunks else ""
        retries = f"retries {self.retries} | " if self.retries else ""
        line = (f"{bar} {self.done}/{self.total} rows | failed {self.failed} | in flight {self.in_flight} | "
                f"{chunks}{retries}{rate:.1f} videos/min | ETA {_clock(eta)}")
        self.stream.write(("\r" + line + "\x1b[K") if self.live else line + "\n")
        self.stream.flush()

    def close(self) -> None:
        self.show(force=True)
        if self.live:
            self.stream.write("\n")


def _bar(fraction: float, width: int = 24) -> str:
    filled = int(round(fraction * width))
    return "[" + "#" * filled + "." * (width - filled) + "]"


def _clock(seconds: float) -> str:
    # NaN: no rate yet
    if seconds != seconds:
        return "--:--"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes:02d}:{secs:02d}"
