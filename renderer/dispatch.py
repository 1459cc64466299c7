"""The driver-side dispatcher: pure Python over an executor interface, so it is tested without Ray.

A row is a small DAG of tasks. A row that fits its model's window is one task. A long row is one task
per chunk (all at once when the chunks are anchored, one after another when they are chained) and then
a stitch task that blends them into the video. Rendered between keyframes, a long row first has its first
keyframe (the row's image, or one rendered frame), then every other keyframe conditioned on it, all at once,
then every window between two neighbouring keyframes, all at once, then the stitch.

The dispatcher submits tasks while `executor.free` says the executor takes more, older rows first, streams new
rows in as workers free up, retries a task that raised or whose worker died until `max_attempts`, and reports
every row's final outcome exactly once. When the output storage keeps failing (WriteBreaker) it stops taking new
work and reports the rows it did not render.
"""
from __future__ import annotations

from collections import deque
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

OK, REJECTED, ERROR, CRASHED = "ok", "rejected", "error", "crashed"
# failed for good (bad output after the actor's own retry): never retried
FAILED = "failed"
# lost through no fault of its own (queued behind a task that crashed its worker)
REQUEUE = "requeue"
# the chunk index of a row's stitch task
STITCH = -1
# rows in a row whose video could not be written before the run stops
WRITE_FAILURES_TO_STOP = 3


@dataclass(frozen=True)
class Outcome:
    # OK, REJECTED (bad input), FAILED (for good), ERROR (raised), CRASHED (worker died), REQUEUE
    status: str
    error: str | None = None
    # seconds, gpu, actor, ... for the record
    info: dict = field(default_factory=dict)
    # a chunk's frames or latents as the executor holds them (an ObjectRef under Ray)
    output: Any = None
    # the video could not be written (disk full, ...): see WriteBreaker
    write_failed: bool = False


@dataclass(frozen=True)
class Task:
    request: Any
    # index into request.plan, or STITCH
    chunk: int = 0
    # chained chunks: the previous chunk's output
    previous: Any = None
    # chained chunks: the first chunk's output (the colour reference)
    first: Any = None
    # stitch: every chunk's output, in order
    parts: tuple = ()
    # the index of the keyframe this task renders (a row rendered between keyframes), None for a chunk; a
    # keyframe after the first gets the first as `previous`, a window its two keyframes as `previous`, `first`
    keyframe: int | None = None

    @property
    def whole_row(self) -> bool:
        return len(self.request.plan) == 1

    @property
    def key(self) -> Hashable:
        """What the task renders, unique within its row: a chunk's index, STITCH, or ("keyframe", k)."""
        return self.chunk if self.keyframe is None else ("keyframe", self.keyframe)


class Executor(Protocol):
    # how many more tasks it accepts now (none while every worker restarts)
    free: int

    def submit(self, task: Task) -> Hashable: ...

    def wait(self, timeout: float) -> list[tuple[Hashable, Outcome]]: ...


@dataclass
class RowState:
    """What the dispatcher knows of one row in progress."""

    request: Any
    # tasks ready to submit
    waiting: deque
    # chunk index -> output
    outputs: dict = field(default_factory=dict)
    # keyframe index -> output (a row rendered between keyframes)
    keyframes: dict = field(default_factory=dict)
    # task key -> info
    infos: dict = field(default_factory=dict)
    # task key -> tries so far
    attempts: dict = field(default_factory=dict)
    done: bool = False

    @classmethod
    def start(cls, request) -> RowState:
        chunks = len(request.plan)
        if chunks > 1 and request.chunk_mode == "keyframes":
            return cls(request, deque([Task(request, 0, keyframe=0)]))
        first = [0] if chunks == 1 or request.chunk_mode == "chain" else range(chunks)
        return cls(request, deque(Task(request, i) for i in first))

    def settled(self, task: Task, output: Any) -> list[Task]:
        """Keep a finished task's output; the tasks it unlocks: the other keyframes once the first is in, the
        windows once every keyframe is in, the next chained chunk, or the stitch once every chunk is in."""
        chunks, request = len(self.request.plan), self.request
        if task.keyframe is not None:
            self.keyframes[task.keyframe] = output
            if task.keyframe == 0:
                # a window's two ends: one more keyframe than windows
                return [Task(request, 0, keyframe=k, previous=output) for k in range(1, chunks + 1)]
            if len(self.keyframes) < chunks + 1:
                return []
            return [Task(request, i, previous=self.keyframes[i], first=self.keyframes[i + 1]) for i in range(chunks)]
        self.outputs[task.chunk] = output
        if len(self.outputs) == chunks:
            return [Task(request, STITCH, parts=tuple(self.outputs[i] for i in range(chunks)))]
        if request.chunk_mode == "chain":
            return [Task(request, task.chunk + 1, previous=output, first=self.outputs[0])]
        return []


@dataclass
class WriteBreaker:
    """Trips once `limit` different rows in a row failed to write their video, with no successful write in
    between: the storage is full, read-only or gone, and rendering the rest of the table would be wasted.
    One row failing again and again (a folder in the way of its own path) counts once and never trips it.
    Shared by the dispatchers of one run, so a tripped run starts no other model either."""

    limit: int = WRITE_FAILURES_TO_STOP
    # rows whose write failed since the last successful one
    failing: set = field(default_factory=set)
    # why the run stopped, once tripped
    reason: str | None = None

    def observe(self, row_id: Hashable, outcome: Outcome, wrote: bool) -> None:
        """A task's outcome; `wrote`: the task ends by writing the row's video (a whole row or a stitch)."""
        if outcome.write_failed:
            self.failing.add(row_id)
        elif outcome.status == OK and wrote:
            self.failing.clear()
        if self.reason is None and len(self.failing) >= self.limit:
            self.reason = (f"the run stopped after {self.limit} rows in a row failed to write their video "
                           "(disk full?)")

    def not_rendered(self) -> Outcome:
        return Outcome(FAILED, f"not rendered: {self.reason}")


@dataclass
class Dispatcher:
    executor: Executor
    max_attempts: int
    # (request, final outcome, attempts)
    on_done: Callable[[object, Outcome, int], None]
    # "start" (a row), "retry" (a task), "chunk" (a chunk of a long row rendered), "done" (a row)
    on_event: Callable[[str, object], None] = lambda kind, request: None
    breaker: WriteBreaker = field(default_factory=WriteBreaker)

    def run(self, requests: Iterable) -> None:
        incoming = iter(requests)
        # rows in progress, oldest first
        rows: deque[RowState] = deque()
        in_flight: dict[Hashable, tuple[RowState, Task]] = {}
        exhausted = False
        while True:
            exhausted = self._fill(rows, incoming, in_flight) or exhausted
            # "nothing in flight" alone is no end: while every worker restarts nothing can be submitted
            if not in_flight and (self.breaker.reason or (exhausted and not rows)):
                break
            for ticket, outcome in self.executor.wait(timeout=0.5):
                row, task = in_flight.pop(ticket)
                if not row.done:
                    self._settle(row, task, outcome)
            while rows and rows[0].done:
                rows.popleft()
        self._report_not_rendered(rows, incoming)

    def _report_not_rendered(self, rows: deque, incoming) -> None:
        """After the breaker tripped: every row it left unfinished or never started, recorded as such."""
        for row in rows:
            if not row.done:
                self._finish(row, self.breaker.not_rendered())
        for request in incoming:
            self.on_event("start", request)
            self._finish(RowState(request, deque()), self.breaker.not_rendered())

    def _fill(self, rows: deque, incoming, in_flight: dict) -> bool:
        """Submit ready tasks, older rows first; start a new row only when no started row has one ready.
        Nothing once the breaker tripped. True when `incoming` turned out to be exhausted."""
        while self.executor.free > 0 and not self.breaker.reason:
            row = next((r for r in rows if r.waiting), None)
            if row is None:
                request = next(incoming, None)
                if request is None:
                    return True
                rows.append(RowState.start(request))
                self.on_event("start", request)
                continue
            task = row.waiting.popleft()
            row.attempts[task.key] = row.attempts.get(task.key, 0) + 1
            in_flight[self.executor.submit(task)] = (row, task)
        return False

    def _settle(self, row: RowState, task: Task, outcome: Outcome) -> None:
        self.breaker.observe(row.request.id, outcome, wrote=task.whole_row or task.chunk == STITCH)
        if outcome.status == REQUEUE:
            row.attempts[task.key] -= 1
            row.waiting.appendleft(task)
            self.on_event("retry", row.request)
            return
        if outcome.status in (ERROR, CRASHED) and row.attempts[task.key] < self.max_attempts \
                and not self.breaker.reason:
            # retried next, not after the whole backlog
            row.waiting.appendleft(task)
            self.on_event("retry", row.request)
            return
        if outcome.status != OK or task.whole_row or task.chunk == STITCH:
            self._finish(row, outcome)
            return
        row.infos[task.key] = outcome.info
        row.waiting.extend(row.settled(task, outcome.output))
        self.on_event("chunk", row.request)

    def _finish(self, row: RowState, outcome: Outcome) -> None:
        row.done = True
        row.waiting.clear()
        # lets the object store free the chunks
        row.outputs.clear()
        row.keyframes.clear()
        # a long row: add what each chunk's (and keyframe's) render reported
        if row.infos:
            chunks = [row.infos[i] for i in sorted(k for k in row.infos if isinstance(k, int))]
            tasks = [*row.infos.values(), outcome.info]
            info = {**outcome.info, "chunk_actors": [c.get("actor") for c in chunks],
                    "seconds": sum(c.get("seconds", 0.0) for c in tasks),
                    "gpu": next(c.get("gpu") for c in row.infos.values()),
                    "recoveries": [r for c in tasks for r in c.get("recoveries", [])]}
            outcome = Outcome(outcome.status, outcome.error, info, output=outcome.output)
        self.on_done(row.request, outcome, max(row.attempts.values(), default=0))
        self.on_event("done", row.request)
