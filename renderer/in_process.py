"""An executor that renders a row's tasks in this process, one at a time.

`Model.render` hands a long row to the driver's dispatcher with this executor, so the Python API renders
chunks, chains and the stitch through the same task graph (dispatch.RowState) as the actors of `render run`.
"""
from __future__ import annotations

import itertools

from .dispatch import ERROR, OK, STITCH, Outcome, Task


class InProcessExecutor:
    """The dispatcher's Executor over one loaded Model: each task renders as soon as it is submitted."""

    def __init__(self, model):
        self.model = model
        # the first exception a task raised, re-raised by the caller once the dispatcher has finished
        self.error: BaseException | None = None
        self._finished: list = []
        self._tickets = itertools.count()

    @property
    def free(self) -> int:
        # one task at a time: the next is submitted once the last one's outcome has been collected
        return 0 if self._finished else 1

    def submit(self, task: Task) -> int:
        ticket = next(self._tickets)
        try:
            output, info = self._render(task)
            outcome = Outcome(OK, info=info, output=output)
        except Exception as exc:
            self.error = self.error or exc
            outcome = Outcome(ERROR, f"{type(exc).__name__}: {exc}")
        self._finished.append((ticket, outcome))
        return ticket

    def wait(self, timeout: float) -> list[tuple[int, Outcome]]:
        finished, self._finished = self._finished, []
        return finished

    def _render(self, task: Task) -> tuple:
        """(output, info) of a task, as the actor methods of the same name give them."""
        request = task.request
        if task.whole_row:
            return self.model.render_whole(request), {}
        if task.chunk == STITCH:
            return self.model.stitch(request, list(task.parts))
        if task.keyframe is not None:
            return self.model.render_keyframe(request, task.keyframe, task.previous), {}
        return self.model.render_chunk(request, task.chunk, task.previous, task.first), {}
