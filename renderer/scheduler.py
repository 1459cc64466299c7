"""The driver-side scheduler: pure Python over an executor interface, so it is tested without Ray.

It keeps at most `executor.capacity` tasks in flight, retries a row that raised or whose worker
died until `max_attempts`, and reports every row's final outcome exactly once.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Hashable, Iterable, Protocol

OK, REJECTED, ERROR, CRASHED = "ok", "rejected", "error", "crashed"
REQUEUE = "requeue"  # lost through no fault of its own (queued behind a row that crashed its worker)


@dataclass(frozen=True)
class Outcome:
    status: str  # OK, REJECTED (bad input, never retried), ERROR (raised), CRASHED (worker died), REQUEUE
    error: str | None = None
    info: dict = field(default_factory=dict)  # seconds, gpu, ... for the record


class Executor(Protocol):
    capacity: int  # tasks it accepts in flight now (may shrink while workers restart)

    def submit(self, request) -> Hashable: ...

    def wait(self, timeout: float) -> list[tuple[Hashable, Outcome]]: ...


@dataclass
class Scheduler:
    executor: Executor
    max_attempts: int
    on_done: Callable[[object, Outcome, int], None]  # (request, final outcome, attempts)
    on_event: Callable[[str, object], None] = lambda kind, request: None  # "start" | "retry" | "done"

    def run(self, requests: Iterable) -> None:
        pending = deque(requests)
        in_flight: dict[Hashable, object] = {}
        attempts: dict[str, int] = {}
        while pending or in_flight:
            while pending and len(in_flight) < self.executor.capacity:
                request = pending.popleft()
                attempts[request.id] = attempts.get(request.id, 0) + 1
                in_flight[self.executor.submit(request)] = request
                self.on_event("start", request)
            for ticket, outcome in self.executor.wait(timeout=0.5):
                request = in_flight.pop(ticket)
                if outcome.status == REQUEUE:
                    attempts[request.id] -= 1
                    pending.appendleft(request)
                    self.on_event("retry", request)
                    continue
                if outcome.status in (ERROR, CRASHED) and attempts[request.id] < self.max_attempts:
                    pending.appendleft(request)  # retried next, not after the whole backlog
                    self.on_event("retry", request)
                    continue
                self.on_done(request, outcome, attempts[request.id])
                self.on_event("done", request)
