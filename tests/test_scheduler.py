"""The driver-side scheduler, without Ray: a scripted executor decides each attempt's outcome."""
from dataclasses import dataclass

from renderer.scheduler import CRASHED, ERROR, OK, REJECTED, Outcome, Scheduler


@dataclass(frozen=True)
class Req:
    id: str


class ScriptedExecutor:
    """Finishes one task per wait, oldest first; `script[id]` lists the statuses of successive attempts."""

    def __init__(self, capacity, script):
        self.capacity, self.script = capacity, {k: list(v) for k, v in script.items()}
        self.running, self.max_running, self.submitted = [], 0, []

    def submit(self, request):
        self.submitted.append(request.id)
        ticket = len(self.submitted)
        self.running.append((ticket, request))
        self.max_running = max(self.max_running, len(self.running))
        return ticket

    def wait(self, timeout):
        ticket, request = self.running.pop(0)
        statuses = self.script.get(request.id, [OK])
        status = statuses.pop(0) if len(statuses) > 1 else statuses[0]
        return [(ticket, Outcome(status, None if status == OK else f"{status} on {request.id}"))]


def run(script, capacity=2, max_attempts=3, ids=("a", "b", "c", "d")):
    executor = ScriptedExecutor(capacity, script)
    done = {}
    Scheduler(executor, max_attempts, lambda r, o, n: done.setdefault(r.id, (o.status, n))).run(Req(i) for i in ids)
    return done, executor


def test_every_row_finishes_once_and_in_flight_is_bounded():
    done, executor = run({}, capacity=2, ids=[str(i) for i in range(10)])
    assert done == {str(i): (OK, 1) for i in range(10)}
    assert executor.max_running == 2


def test_error_and_crash_are_retried_until_success():
    done, executor = run({"a": [ERROR, OK], "b": [CRASHED, CRASHED, OK]})
    assert done["a"] == (OK, 2) and done["b"] == (OK, 3)
    assert executor.submitted.count("b") == 3


def test_attempts_are_capped_and_the_run_goes_on():
    done, executor = run({"b": [CRASHED]}, max_attempts=3)
    assert done["b"] == (CRASHED, 3)
    assert {k: v for k, v in done.items() if k != "b"} == {"a": (OK, 1), "c": (OK, 1), "d": (OK, 1)}


def test_rejected_rows_are_never_retried():
    done, executor = run({"c": [REJECTED, OK]})
    assert done["c"] == (REJECTED, 1)
    assert executor.submitted.count("c") == 1


def test_requeued_rows_are_not_charged_an_attempt():
    done, executor = run({"a": ["requeue", "requeue", "requeue", OK]}, max_attempts=2)
    assert done["a"] == (OK, 1)
    assert executor.submitted.count("a") == 4
