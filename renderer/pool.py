"""The pool's policies as pure code over replicas, so they are tested without Ray (tests/test_pool.py).

`ReplicaPool` is the dispatcher's Executor (see dispatch.py) over the replicas of one model:
- back-pressure: each replica holds at most TASKS_QUEUED_PER_ACTOR unreturned calls, and the pool at most
  ENCODES_PER_ACTOR tasks per replica beyond them whose result is not final (frames waiting for their encode);
- placement: a task goes to the live replica with the fewest unreturned calls;
- deaths: the task a replica was executing when it died pays an attempt, the tasks queued behind it are requeued
  without charge, and a death is charged once however many of its tasks report it;
- timeouts: with `row_timeout`, a task executing longer fails `timeout` and its replica is killed and replaced;
- retirement: with `retire_after`, a replica that died that many times in a row without a task succeeding is
  shut down; its tasks go to the others, and once none is left every task fails at once;
- classification: what a task raised becomes the dispatcher's status.

What carries the tasks is the replicas' business (renderer/ray_replica.py: one Ray actor each); the pool sees
their handles, opaque and hashable, and waits on many at once through a `wait` function of the transport.
"""
from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from .dispatch import CRASHED, ERROR, FAILED, OK, REJECTED, REQUEUE, Outcome, Task
from .errors import BadOutput, RowRejected, WriteFailed

# on the replica: one executing, one waiting, so it never idles between tasks
TASKS_QUEUED_PER_ACTOR = 2
# per replica: rendered rows whose frames may wait in the object store for their encode
ENCODES_PER_ACTOR = 2
# after a replica died, how long its calls may take to report it
DEATH_SETTLE_S = 10.0
# Report.death: the replica itself died, and the pool decides which of its tasks pays
REPLICA_DIED = "replica_died"
# Report.death: a process working for the task beside the replica died (an encode worker): the task pays
HELPER_DIED = "helper_died"

# the handles among `handles` that finished: waits up to `timeout` seconds for the first one, then takes every
# other one finished by then too
Wait = Callable[[list, float], list]


class ModelLoadError(Exception):
    """No replica could load the model: every row of it fails without burning retries."""


@dataclass(frozen=True)
class Call:
    """A task submitted to a replica, as the transport's handles."""

    # finishes when the task's result is final (its video written, its chunk rendered): what the dispatcher waits on
    done: Hashable
    # finishes when the replica is done executing the task and starts its next one; never after `done`
    returned: Hashable
    # a chunk's output as the transport holds it, handed to the tasks that need it
    output: Any = None


@dataclass(frozen=True)
class Report:
    """What became of a task, in plain values: the replica translates its transport's errors into these."""

    # what the task reported, when it succeeded
    info: dict = field(default_factory=dict)
    # what the task raised, unwrapped from the transport's own exceptions
    error: BaseException | None = None
    # the error or the death as the row's record says it
    message: str = ""
    # None, REPLICA_DIED or HELPER_DIED
    death: str | None = None


class Replica(Protocol):
    """One worker of the pool: one actor process (renderer/ray_replica.py), or later a gang of processes that
    render one video together. What the pool relies on:

    - `submit(task)` queues the task and returns its Call at once. A replica executes its tasks one at a time,
      in the order submitted; `Call.returned` finishes when it is done executing one (returned, raised, or died),
      `Call.done` when the task's result is final (the same handle where nothing follows the render).
    - `report(done)`: for a finished `done` handle, its Report: the task's info, what it raised, or that the
      replica (or a process working for it, such as its encode worker) died.
    - `returned(handle)`: for a finished `returned` handle, False when the replica died executing that task.
      The pool tells which task a replica was executing, and so which one pays for its death, as the oldest
      whose call has not returned or died with it.
    - `kill()`: end its current life at once (a hung task); every task it still holds then reports its death.
    - `restart()`: after a death or a kill, a handle that finishes once its next life is up (model loaded) or
      has died starting; `restarted(handle)` then says which: True when it takes tasks again. The pool keeps a
      replica for the whole run and gives it no task while it restarts.
    - Where the work after a render runs (the encode) is its own choice: beside the render, for one actor.
    - `shutdown()`: end it for good.
    """

    def submit(self, task: Task) -> Call: ...

    def report(self, done: Hashable) -> Report: ...

    def returned(self, handle: Hashable) -> bool: ...

    def kill(self) -> None: ...

    def restart(self) -> Hashable: ...

    def restarted(self, handle: Hashable) -> bool: ...

    def shutdown(self) -> None: ...


@dataclass
class Slot:
    """One replica and what the pool knows of it."""

    replica: Replica
    # its Tickets whose call has not returned, oldest first: the head is the task it is executing
    running: deque = field(default_factory=deque)
    # when running[0] began executing: when its predecessor returned, or it was submitted to an idle replica
    since: float = 0.0
    # bumped when the replica dies: tickets of an older life are not charged again
    generation: int = 0
    # the restart() handle while the replica comes back
    restarting: Hashable | None = None
    # deaths since a task last succeeded on it
    breaks: int = 0
    retired: bool = False

    @property
    def live(self) -> bool:
        return self.restarting is None and not self.retired


@dataclass(eq=False)
class Ticket:
    """One task in flight."""

    call: Call
    slot: Slot
    generation: int
    # submission order: outcomes of one wait are settled oldest first
    order: int
    # the task its replica was executing when it died: it pays the attempt
    charged: bool = False


def classify(report: Report) -> Outcome:
    """The dispatcher's outcome of a task's report; REPLICA_DIED stays for the pool to settle."""
    if report.death == REPLICA_DIED:
        return Outcome(REPLICA_DIED, report.message)
    if report.death == HELPER_DIED:
        return Outcome(CRASHED, report.message)
    if report.error is None:
        return Outcome(OK, info=report.info)
    error = report.error
    status = REJECTED if isinstance(error, RowRejected) else FAILED if isinstance(error, BadOutput) else ERROR
    return Outcome(status, report.message, write_failed=isinstance(error, WriteFailed))


class ReplicaPool:
    """An Executor (see dispatch.py) over `replicas` of one model, waiting on their handles through `wait`.
    With `row_timeout` (seconds, measured by `clock`), a task executing longer fails `timeout` and its replica is
    killed and replaced. With `retire_after`, a replica dying that many times in a row without a success is
    retired."""

    def __init__(self, replicas: list[Replica], wait: Wait, row_timeout: float | None = None,
                 clock: Callable[[], float] = time.monotonic, retire_after: int | None = None):
        self.slots = [Slot(replica) for replica in replicas]
        self.transport_wait = wait
        self.row_timeout = row_timeout
        self.clock = clock
        self.retire_after = retire_after
        self.tickets: dict[Hashable, Ticket] = {}
        self.submitted = 0
        # tasks submitted once every replica was retired: failed at the next wait
        self.refused: list[Hashable] = []
        # called once for every death or kill of a replica that comes back (run.py counts them in the run's metrics);
        # not again while it fails to come up: a replica asked too early whether it is up reads as one that is not
        self.on_restart: Callable[[], None] = lambda: None

    @property
    def free(self) -> int:
        """How many more tasks the live replicas take now. A replica is fed again as soon as a call returns, not
        once its video is encoded, so slow encoding never idles it; but when encoding falls behind, no more than
        ENCODES_PER_ACTOR rendered rows per replica wait for it, holding their frames."""
        live = self._live()
        if all(slot.retired for slot in self.slots):
            # nothing will render them: take each task, to fail it
            return 1
        on_replicas = sum(TASKS_QUEUED_PER_ACTOR - len(slot.running) for slot in live)
        return min(on_replicas, len(live) * (TASKS_QUEUED_PER_ACTOR + ENCODES_PER_ACTOR) - len(self.tickets))

    def submit(self, task: Task) -> Hashable:
        """Queue a task on the live replica with the fewest unreturned calls; its ticket is the Call's `done`."""
        if all(slot.retired for slot in self.slots):
            self.refused.append(("retired", len(self.refused)))
            return self.refused[-1]
        slot = min(self._live(), key=lambda s: len(s.running))
        call = slot.replica.submit(task)
        self.submitted += 1
        ticket = Ticket(call, slot, slot.generation, self.submitted)
        self.tickets[call.done] = ticket
        # an idle replica starts it now
        if not slot.running:
            slot.since = self.clock()
        slot.running.append(ticket)
        return call.done

    def wait(self, timeout: float) -> list[tuple[Hashable, Outcome]]:
        if self.refused:
            refused, self.refused = self.refused, []
            return [(handle, Outcome(FAILED, f"not rendered: every replica of the model died {self.retire_after} "
                                             "times in a row without a success, and was retired"))
                    for handle in refused]
        restarting = {slot.restarting: slot for slot in self.slots if slot.restarting is not None}
        # also wakes when a call returns: that replica takes its next task before the encode is done
        returning = {slot.running[0].call.returned for slot in self._live() if slot.running}
        waiting = list({*self.tickets, *restarting, *returning})
        if not waiting:
            return []
        ready = self.transport_wait(waiting, timeout)
        for handle in ready:
            if handle in restarting:
                self._restarted(restarting[handle])
        finished = sorted((h for h in ready if h in self.tickets), key=lambda h: self.tickets[h].order)
        outcomes = [(handle, self._outcome(handle)) for handle in finished]
        return outcomes + self._timed_out()

    def shutdown(self) -> None:
        for slot in self.slots:
            slot.replica.shutdown()

    def _live(self) -> list[Slot]:
        return [slot for slot in self.slots if slot.live]

    def _outcome(self, done: Hashable) -> Outcome:
        ticket = self.tickets.pop(done)
        outcome = classify(ticket.slot.replica.report(done))
        if outcome.status == OK:
            ticket.slot.breaks = 0
            return replace(outcome, output=ticket.call.output)
        if outcome.status != REPLICA_DIED:
            return outcome
        return self._death(ticket, outcome.error)

    def _death(self, ticket: Ticket, error: str | None) -> Outcome:
        """A task that reports its replica's death: charged when it was executing, else requeued free."""
        slot = ticket.slot
        # the first news of this death: find the task that caused it
        if ticket.generation == slot.generation:
            # not simply this ticket: the tasks of a dead replica report its death in no fixed order
            (self._executing(slot, settle=DEATH_SETTLE_S) or ticket).charged = True
            self._replace(slot)
        return Outcome(CRASHED if ticket.charged else REQUEUE, error)

    def _executing(self, slot: Slot, settle: float = 0.0) -> Ticket | None:
        """The ticket whose task the replica is executing (or died executing): the oldest whose call has neither
        returned nor raised. `settle`: how long to wait for a call to report a death."""
        while slot.running:
            head = slot.running[0]
            finished = self.transport_wait([head.call.returned], settle)
            if not finished or not slot.replica.returned(head.call.returned):
                return head
            # returned (or raised, and the replica lives on): the next one started
            slot.running.popleft()
            slot.since = self.clock()
        return None

    def _timed_out(self) -> list[tuple[Hashable, Outcome]]:
        """Tasks executing for longer than row_timeout: failed `timeout`, their replicas killed and replaced.
        The tasks queued behind such a task then report the replica's death and are requeued without charge."""
        expired = []
        for slot in self._live():
            # every live slot, every time: this also lets go of the calls that returned
            head = self._executing(slot)
            if head is not None and self._overdue(slot, head):
                expired.append((head.call.done, self._expire(slot, head)))
        return expired

    def _overdue(self, slot: Slot, head: Ticket) -> bool:
        if self.row_timeout is None or self.clock() - slot.since <= self.row_timeout:
            return False
        # finished just now, so it died: settled as a crash once its report is collected
        return not self.transport_wait([head.call.returned], 0)

    def _expire(self, slot: Slot, head: Ticket) -> Outcome:
        del self.tickets[head.call.done]
        slot.replica.kill()
        self._replace(slot)
        return Outcome(FAILED, f"timeout: the task ran past --row-timeout {self.row_timeout:g}s; "
                               "its actor was replaced")

    def _replace(self, slot: Slot) -> None:
        """The replica died or was killed: it comes back (or, past `retire_after` deaths in a row, is retired), and
        its tickets of this life are settled as they come."""
        slot.generation += 1
        slot.running.clear()
        slot.breaks += 1
        if self.retire_after is not None and slot.breaks >= self.retire_after:
            slot.retired = True
            slot.replica.shutdown()
            return
        self.on_restart()
        slot.restarting = slot.replica.restart()

    def _restarted(self, slot: Slot) -> None:
        # up again: it takes tasks; died again while starting: wait on its next life
        slot.restarting = None if slot.replica.restarted(slot.restarting) else slot.replica.restart()
