"""The pool's policies without Ray: fake replicas whose handles finish when a test says so, and a fake clock."""
from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass

import pytest

from conftest import ROOT
from renderer.dispatch import CRASHED, ERROR, FAILED, OK, REJECTED, REQUEUE, Task
from renderer.errors import BadOutput, RowRejected, WriteFailed
from renderer.pool import DEATH_SETTLE_S, HELPER_DIED, REPLICA_DIED, Call, ReplicaPool, Report

DEATH = Report(death=REPLICA_DIED, message="worker_crashed: the replica died")


@dataclass(frozen=True)
class Req:
    id: str


class FakeReplica:
    """Records what the pool asks of it; its calls' handles finish through the World."""

    def __init__(self, world: World, index: int):
        self.world, self.index = world, index
        self.tasks: list[str] = []
        self.calls: list[Call] = []
        self.reports: dict = {}
        self.died_executing: set = set()
        self.kills = 0
        self.restarts: list = []
        self.comes_up = True

    def submit(self, task: Task) -> Call:
        row = task.request.id
        number = len(self.world.calls)
        call = Call(("done", row, number), ("returned", row, number), output=f"out:{row}")
        self.tasks.append(row)
        self.calls.append(call)
        self.world.calls[row] = call
        self.world.rows[call.done] = row
        return call

    def report(self, done) -> Report:
        return self.reports[done]

    def returned(self, handle) -> bool:
        return handle not in self.died_executing

    def kill(self) -> None:
        self.kills += 1

    def restart(self):
        self.restarts.append(("ready", self.index, len(self.restarts)))
        return self.restarts[-1]

    def restarted(self, handle) -> bool:
        return self.comes_up

    def shutdown(self) -> None:
        pass


class World:
    """A pool over fake replicas, the handles finished so far and the time."""

    def __init__(self, replicas: int = 1, row_timeout: float | None = None, retire_after: int | None = None):
        self.now = 0.0
        self.finished: set = set()
        self.waits: list[tuple[list, float]] = []
        self.calls: dict[str, Call] = {}
        self.rows: dict = {}
        self.replicas = [FakeReplica(self, i) for i in range(replicas)]
        self.pool = ReplicaPool(self.replicas, self.wait_for, row_timeout, clock=lambda: self.now,
                                retire_after=retire_after)

    def wait_for(self, handles: list, timeout: float) -> list:
        self.waits.append((list(handles), timeout))
        return [handle for handle in handles if handle in self.finished]

    def submit(self, *rows: str) -> None:
        for row in rows:
            self.pool.submit(Task(Req(row)))

    def wait(self) -> dict[str, tuple]:
        """The pool's outcomes of one wait, by row: (status, error), in the order the pool gave them."""
        return {self.rows[handle]: (o.status, o.error) for handle, o in self.pool.wait(timeout=0.5)}

    def returns(self, *rows: str) -> None:
        """The replica returned from these rows' calls; their results (the encodes) are not final yet."""
        self.finished.update(self.calls[row].returned for row in rows)

    def completes(self, row: str, report: Report | None = None) -> None:
        self.returns(row)
        self.reports(row, report or Report(info={"id": row}))

    def reports(self, row: str, report: Report | None = None) -> None:
        call = self.calls[row]
        replica = next(r for r in self.replicas if call in r.calls)
        if report is not None:
            replica.reports[call.done] = report
        self.finished.add(call.done)

    def dies(self, replica: int, *reporting: str) -> None:
        """The replica's process dies: every call of it not returned fails with it; `reporting` report it now."""
        fake = self.replicas[replica]
        for call in fake.calls:
            if call.returned not in self.finished:
                fake.died_executing.add(call.returned)
                fake.reports[call.done] = DEATH
                self.finished.add(call.returned)
        for row in reporting:
            self.reports(row)

    def comes_back(self, replica: int, up: bool = True) -> None:
        fake = self.replicas[replica]
        fake.comes_up = up
        self.finished.add(fake.restarts[-1])


def test_each_replica_holds_two_unreturned_calls_and_at_most_two_more_rows_wait_for_their_encode():
    world = World(replicas=2)
    assert world.pool.free == 4
    world.submit("a", "b", "c", "d")
    assert world.pool.free == 0
    world = World(replicas=1)
    world.submit("a", "b")
    assert world.pool.free == 0
    world.returns("a")
    assert world.wait() == {}
    # fed again as soon as a render returns, before its encode is done
    assert world.pool.free == 1
    world.submit("c")
    world.returns("b", "c")
    world.wait()
    # three rows wait for their encode: one more may join them
    assert world.pool.free == 1
    world.submit("d")
    world.returns("d")
    world.wait()
    # the replica is idle, but four rendered rows already hold their frames
    assert world.pool.free == 0
    world.completes("a")
    assert world.wait() == {"a": (OK, None)}
    assert world.pool.free == 1


def test_a_task_goes_to_the_live_replica_with_the_fewest_unreturned_calls():
    world = World(replicas=3)
    world.submit("a", "b", "c")
    world.returns("b")
    world.wait()
    world.submit("d", "e", "f")
    assert [r.tasks for r in world.replicas] == [["a", "e"], ["b", "d", "f"], ["c"]]


def test_a_death_is_charged_to_the_executing_task_and_the_tasks_queued_behind_it_are_requeued_free():
    world = World(replicas=2)
    world.submit("a", "other", "b")
    world.returns("a")
    world.wait()
    world.submit("c")
    assert world.replicas[0].tasks == ["a", "b", "c"]
    # c reports first, yet b was executing: b pays
    world.dies(0, "c")
    assert world.wait() == {"c": (REQUEUE, DEATH.message)}
    assert len(world.replicas[0].restarts) == 1
    world.reports("b")
    assert world.wait() == {"b": (CRASHED, DEATH.message)}
    # a returned before the death: its encode is untouched
    world.completes("a")
    world.completes("other")
    assert world.wait() == {"a": (OK, None), "other": (OK, None)}
    assert len(world.replicas[0].restarts) == 1 and world.replicas[1].restarts == []


def test_a_late_report_of_an_earlier_death_is_neither_charged_nor_replaces_the_new_life():
    world = World()
    world.submit("a", "b")
    world.dies(0, "a")
    assert world.wait() == {"a": (CRASHED, DEATH.message)}
    world.comes_back(0)
    world.wait()
    world.submit("c")
    world.reports("b")
    assert world.wait() == {"b": (REQUEUE, DEATH.message)}
    assert len(world.replicas[0].restarts) == 1
    # c runs on the new life, undisturbed
    assert world.pool.free == 1
    world.completes("c")
    assert world.wait() == {"c": (OK, None)}


def test_a_death_waits_for_the_executing_call_to_settle_and_charges_it_when_it_never_reports():
    world = World()
    world.submit("a", "b")
    # b's result says the replica died; a's call has not reported anything yet
    world.reports("b", DEATH)
    assert world.wait() == {"b": (REQUEUE, DEATH.message)}
    assert ([world.calls["a"].returned], DEATH_SETTLE_S) in world.waits
    world.reports("a", DEATH)
    assert world.wait() == {"a": (CRASHED, DEATH.message)}


def test_outcomes_of_one_wait_come_oldest_first():
    world = World(replicas=2)
    world.submit("a", "b", "c", "d")
    for row in ("d", "b", "c", "a"):
        world.completes(row)
    assert list(world.wait()) == ["a", "b", "c", "d"]


def test_a_task_executing_past_the_row_timeout_fails_and_its_replica_is_killed_and_replaced():
    world = World(row_timeout=10)
    world.submit("a", "b")
    world.now = 10.0
    assert world.wait() == {}
    world.now = 10.5
    outcomes = world.wait()
    assert outcomes == {"a": (FAILED, "timeout: the task ran past --row-timeout 10s; its actor was replaced")}
    replica = world.replicas[0]
    # no live replica: nothing is taken (the count goes below zero while b still holds a ticket)
    assert replica.kills == 1 and len(replica.restarts) == 1 and world.pool.free <= 0
    # killed: b, queued behind it, reports the death and is requeued free; a is not reported again
    world.dies(0, "a", "b")
    assert world.wait() == {"b": (REQUEUE, DEATH.message)}
    assert len(replica.restarts) == 1
    world.comes_back(0)
    world.wait()
    assert world.pool.free == 2


def test_the_timeout_counts_from_when_the_previous_call_returned():
    world = World(row_timeout=10)
    world.submit("a", "b")
    world.now = 8.0
    world.returns("a")
    world.wait()
    world.now = 18.0
    assert world.wait() == {}
    world.now = 18.5
    assert world.wait() == {"b": (FAILED, "timeout: the task ran past --row-timeout 10s; its actor was replaced")}


def test_a_task_past_the_timeout_whose_replica_just_died_is_settled_as_a_crash():
    world = World(row_timeout=10)
    world.submit("a")
    world.now = 11.0
    world.dies(0)
    assert world.wait() == {}
    assert world.replicas[0].kills == 0
    world.reports("a")
    assert world.wait() == {"a": (CRASHED, DEATH.message)}


def test_without_a_row_timeout_a_task_may_execute_for_ever():
    world = World()
    world.submit("a")
    world.now = 1e9
    assert world.wait() == {} and world.replicas[0].kills == 0


@pytest.mark.parametrize("report, status, write_failed", [
    (Report(info={"seconds": 1.0}), OK, False),
    (Report(error=RowRejected("prompt", "", "must not be empty"), message="prompt='': must not be empty"),
     REJECTED, False),
    (Report(error=BadOutput("nan_output: NaN frames"), message="nan_output: NaN frames"), FAILED, False),
    (Report(error=RuntimeError("boom"), message="RuntimeError: boom"), ERROR, False),
    (Report(error=WriteFailed("write_failed: /out/v.mp4: No space left on device"),
            message="write_failed: /out/v.mp4: No space left on device"), ERROR, True),
    (Report(death=HELPER_DIED, message="worker_crashed: the encode worker died"), CRASHED, False),
])
def test_what_a_task_reports_becomes_the_dispatchers_status(report, status, write_failed):
    world = World()
    world.submit("a")
    world.completes("a", report)
    [(_, outcome)] = world.pool.wait(timeout=0.5)
    assert (outcome.status, outcome.write_failed) == (status, write_failed)
    assert outcome.error == (None if status == OK else report.message)
    assert (outcome.info, outcome.output) == (({"seconds": 1.0}, "out:a") if status == OK else ({}, None))
    # none of these is the replica's death: it is not replaced
    assert world.replicas[0].restarts == []


def test_a_restarting_replica_takes_no_task_until_it_is_up_again():
    world = World(replicas=2)
    # the run's metrics count restarts through this hook
    restarts = []
    world.pool.on_restart = lambda: restarts.append(len(world.replicas[0].restarts))
    world.submit("a", "b")
    world.dies(0, "a")
    assert world.wait() == {"a": (CRASHED, DEATH.message)}
    assert world.pool.free == 1
    world.submit("c")
    assert world.replicas[1].tasks == ["b", "c"] and world.pool.free == 0
    # died again while loading: it waits on its next life
    world.comes_back(0, up=False)
    world.wait()
    assert len(world.replicas[0].restarts) == 2 and world.pool.free == 0
    world.comes_back(0)
    world.wait()
    assert world.pool.free == 2
    # one death, one restart counted: a replica asked again whether it is up is not restarted anew
    assert restarts == [0]
    world.submit("d")
    assert world.replicas[0].tasks == ["a", "d"]


def test_the_pool_imports_neither_ray_nor_torch():
    check = "import sys, renderer.pool; print(sorted({m.split('.')[0] for m in sys.modules} & {'ray', 'torch'}))"
    result = subprocess.run([sys.executable, "-c", check], cwd=ROOT, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_a_replica_dying_again_and_again_without_a_success_is_retired_and_then_every_task_fails_at_once():
    world = World(replicas=2, retire_after=2)
    world.submit("a", "b")
    # replica 0 dies on a, comes back, renders c, then dies twice more on d: a success in between resets the count
    world.dies(0, "a")
    assert world.wait() == {"a": (CRASHED, DEATH.message)}
    world.comes_back(0)
    world.wait()
    world.submit("c")
    world.completes("c")
    assert world.wait() == {"c": (OK, None)}
    for attempt in range(2):
        world.submit("d")
        assert world.replicas[0].tasks[-1] == "d"
        world.dies(0, "d")
        assert world.wait() == {"d": (CRASHED, DEATH.message)}
        if attempt == 0:
            world.comes_back(0)
            world.wait()
    assert len(world.replicas[0].restarts) == 2
    # replica 0 is retired: the next tasks go to replica 1, which still holds b
    world.submit("e")
    assert world.replicas[1].tasks == ["b", "e"]
    world.dies(1, "b")
    world.wait()
    world.comes_back(1)
    world.wait()
    world.submit("f")
    world.dies(1, "f")
    world.wait()
    # no replica left: every task fails as soon as it is submitted, without waiting on anything
    assert world.pool.free == 1
    handle = world.pool.submit(Task(Req("g")))
    assert [(h, o.status, o.error) for h, o in world.pool.wait(timeout=0.5)] == [
        (handle, FAILED, "not rendered: every replica of the model died 2 times in a row without a success, and was "
                         "retired")]
