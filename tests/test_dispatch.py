"""The driver-side dispatcher, without Ray: a scripted executor decides each attempt's outcome."""
from dataclasses import dataclass

from renderer.chunks import plan_chunks, plan_keyframe_windows
from renderer.dispatch import CRASHED, ERROR, FAILED, OK, REJECTED, STITCH, Dispatcher, Outcome


@dataclass(frozen=True)
class Req:
    id: str
    plan: tuple = plan_chunks(16, 16, 0)  # one chunk: a whole row
    chunk_mode: str | None = None


def name(task) -> str:
    """A task's key in the script: the row id, or id#chunk / id#stitch for the tasks of a long row."""
    if task.whole_row:
        return task.request.id
    if task.keyframe is not None:
        return f"{task.request.id}#key{task.keyframe}"
    return f"{task.request.id}#{'stitch' if task.chunk == STITCH else task.chunk}"


WRITE = "write"  # in a script: the attempt raised because its video could not be written


class ScriptedExecutor:
    """Finishes one task per wait, oldest first; `script[name]` lists the statuses of successive attempts."""

    def __init__(self, capacity, script):
        self.capacity, self.script = capacity, {k: list(v) for k, v in script.items()}
        self.running, self.max_running, self.submitted, self.tasks = [], 0, [], []

    def submit(self, task):
        self.submitted.append(name(task))
        self.tasks.append(task)
        ticket = len(self.submitted)
        self.running.append((ticket, task))
        self.max_running = max(self.max_running, len(self.running))
        return ticket

    @property
    def free(self):
        return self.capacity - len(self.running)

    def wait(self, timeout):
        ticket, task = self.running.pop(0)
        statuses = self.script.get(name(task), [OK])
        status = statuses.pop(0) if len(statuses) > 1 else statuses[0]
        info = {"seconds": 1.0, "actor": f"actor{ticket % 3}"}
        if status == WRITE:
            return [(ticket, Outcome(ERROR, f"write_failed: {name(task)}", info, write_failed=True))]
        return [(ticket, Outcome(status, None if status == OK else f"{status} on {name(task)}", info,
                                 output=f"out:{name(task)}"))]


def run(script, capacity=2, max_attempts=3, rows=("a", "b", "c", "d"), executor=None):
    executor = executor or ScriptedExecutor(capacity, script)
    done = {}
    requests = [Req(r) if isinstance(r, str) else r for r in rows]
    Dispatcher(executor, max_attempts,
              lambda r, o, n: done.setdefault(r.id, (o.status, n, o.info, o.error))).run(requests)
    return {k: v[:2] for k, v in done.items()}, executor, {k: v[2] for k, v in done.items()}, \
        {k: v[3] for k, v in done.items()}


def test_every_row_finishes_once_and_in_flight_is_bounded():
    done, executor, *_ = run({}, capacity=2, rows=[str(i) for i in range(10)])
    assert done == {str(i): (OK, 1) for i in range(10)}
    assert executor.max_running == 2


def test_error_and_crash_are_retried_until_success():
    done, executor, *_ = run({"a": [ERROR, OK], "b": [CRASHED, CRASHED, OK]})
    assert done["a"] == (OK, 2) and done["b"] == (OK, 3)
    assert executor.submitted.count("b") == 3


def test_attempts_are_capped_and_the_run_goes_on():
    done, executor, *_ = run({"b": [CRASHED]}, max_attempts=3)
    assert done["b"] == (CRASHED, 3)
    assert {k: v for k, v in done.items() if k != "b"} == {"a": (OK, 1), "c": (OK, 1), "d": (OK, 1)}


def test_rejected_rows_are_never_retried():
    done, executor, *_ = run({"c": [REJECTED, OK]})
    assert done["c"] == (REJECTED, 1)
    assert executor.submitted.count("c") == 1


def test_requeued_rows_are_not_charged_an_attempt():
    done, executor, *_ = run({"a": ["requeue", "requeue", "requeue", OK]}, max_attempts=2)
    assert done["a"] == (OK, 1)
    assert executor.submitted.count("a") == 4


ANCHORED = Req("long", plan_chunks(40, 16, 4), "anchored")  # chunks [0,16) [12,28) [24,40)
CHAINED = Req("chain", plan_chunks(40, 14, 1), "chain")  # chunks [0,14) [13,27) [26,40)


def test_anchored_chunks_run_side_by_side_then_one_stitch_gets_every_output_in_order():
    done, executor, infos, _ = run({}, capacity=3, rows=[ANCHORED])
    assert done == {"long": (OK, 1)}
    assert executor.submitted == ["long#0", "long#1", "long#2", "long#stitch"]
    assert executor.max_running == 3  # the three chunks were in flight together
    stitch = executor.tasks[-1]
    assert stitch.parts == ("out:long#0", "out:long#1", "out:long#2")
    assert infos["long"]["chunk_actors"] == ["actor1", "actor2", "actor0"]
    assert infos["long"]["seconds"] == 4.0  # three chunks and the stitch


def test_chained_chunks_run_in_order_each_given_the_last_output_and_the_first():
    done, executor, *_ = run({}, capacity=4, rows=[CHAINED, "x", "y"])
    assert done == {"chain": (OK, 1), "x": (OK, 1), "y": (OK, 1)}
    order = [n for n in executor.submitted if n.startswith("chain")]
    assert order == ["chain#0", "chain#1", "chain#2", "chain#stitch"]
    chunk2 = next(t for t in executor.tasks if name(t) == "chain#2")
    assert (chunk2.previous, chunk2.first) == ("out:chain#1", "out:chain#0")
    # while a chained row waits on its next chunk, other rows use the free capacity
    assert executor.submitted.index("x") < executor.submitted.index("chain#1")


def test_a_failed_chunk_is_retried_alone_and_a_lost_one_fails_the_row_only():
    done, executor, *_ = run({"long#1": [ERROR, OK]}, capacity=3, rows=[ANCHORED, "z"])
    assert done == {"long": (OK, 2), "z": (OK, 1)}
    assert executor.submitted.count("long#1") == 2 and executor.submitted.count("long#0") == 1
    done, executor, *_ = run({"long#2": [CRASHED]}, capacity=3, max_attempts=2, rows=[ANCHORED, "z"])
    assert done == {"long": (CRASHED, 2), "z": (OK, 1)}
    assert "long#stitch" not in executor.submitted


def test_progress_counts_rows_chunks_and_retries():
    import io

    from renderer.progress import Progress

    stream = io.StringIO()
    progress = Progress(2, chunks=3, stream=stream, every=0)
    executor = ScriptedExecutor(3, {"long#1": [ERROR, OK]})

    def done(request, outcome, attempts):
        progress.event("done", ok=outcome.status == OK)

    Dispatcher(executor, 3, done, lambda kind, _: kind != "done" and progress.event(kind)).run([ANCHORED, Req("a")])
    progress.close()
    assert "2/2 rows | failed 0 | in flight 0 | chunks 3/3 | retries 1 |" in stream.getvalue().splitlines()[-1]


def test_write_failures_of_three_rows_in_a_row_stop_the_run_and_the_rest_is_reported_not_rendered():
    rows = [str(i) for i in range(8)]
    done, executor, _, errors = run({r: [WRITE] for r in rows}, capacity=1, rows=rows)
    assert executor.submitted == ["0", "0", "0", "1", "1", "1", "2"]  # no retry, no new row once tripped
    assert {k: done[k] for k in "012"} == {"0": (ERROR, 3), "1": (ERROR, 3), "2": (ERROR, 1)}
    assert errors["2"] == "write_failed: 2"
    for row in rows[3:]:
        assert done[row] == (FAILED, 0) and errors[row].startswith("not rendered: the run stopped after 3 rows")


def test_one_row_failing_to_write_or_failures_between_good_writes_never_stop_the_run():
    done, *_ = run({"a": [WRITE]}, capacity=1, rows=["a", "b", "c", "d"])
    assert done == {"a": (ERROR, 3), "b": (OK, 1), "c": (OK, 1), "d": (OK, 1)}
    done, *_ = run({"a": [WRITE, OK], "b": [WRITE, OK], "d": [WRITE, OK], "e": [WRITE, OK]}, capacity=1,
                   rows=["a", "b", "c", "d", "e", "f"])
    assert set(done.values()) <= {(OK, 1), (OK, 2)}  # c's good write in between: d and e start a new count


class RestartingExecutor(ScriptedExecutor):
    """Its one worker dies with the first task and is away for a few waits: capacity 0, nothing in flight."""

    def __init__(self):
        super().__init__(1, {"a": [CRASHED]})
        self.away = 0

    @property
    def capacity(self):
        return 0 if self.away else 1

    @capacity.setter
    def capacity(self, value):
        pass

    def wait(self, timeout):
        if self.away:
            self.away -= 1
            return []
        self.away = 3
        return super().wait(timeout)


def test_a_run_waits_for_a_restarting_worker_instead_of_dropping_the_rows_not_started():
    done, *_ = run({}, max_attempts=1, rows=["a", "b", "c"], executor=RestartingExecutor())
    assert done == {"a": (CRASHED, 1), "b": (OK, 1), "c": (OK, 1)}


def test_a_row_between_keyframes_renders_its_first_keyframe_then_the_others_then_the_windows_then_the_stitch():
    # 40 frames, windows of 16: keyframes on frames 0, 15, 30 and 39, windows [0,16), [15,31), [30,40)
    row = Req("k", plan_keyframe_windows(40, 16), "keyframes")
    executor = ScriptedExecutor(8, {"k#key2": [CRASHED, OK]})
    done, _, infos, _ = run({}, rows=(row,), executor=executor)
    assert done["k"] == (OK, 2)
    assert executor.submitted == ["k#key0", "k#key1", "k#key2", "k#key3", "k#key2", "k#0", "k#1", "k#2", "k#stitch"]
    tasks = {name(t): t for t in executor.tasks}
    # the later keyframes start from the first; each window from its own two keyframes
    assert {tasks[f"k#key{k}"].previous for k in (1, 2, 3)} == {"out:k#key0"}
    assert [(tasks[f"k#{i}"].previous, tasks[f"k#{i}"].first) for i in range(3)] == [
        ("out:k#key0", "out:k#key1"), ("out:k#key1", "out:k#key2"), ("out:k#key2", "out:k#key3")]
    assert tasks["k#stitch"].parts == ("out:k#0", "out:k#1", "out:k#2")
    # the seconds of every task's rendering attempt count: 4 keyframes, 3 windows and the stitch
    assert infos["k"]["seconds"] == 8.0 and len(infos["k"]["chunk_actors"]) == 3
