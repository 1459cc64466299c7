"""The reliability checklist's scenarios that cross several parts at once: an output that cannot be written, tables
whose rows all are rejected or that hold no row, a row's slow encode outliving its actor and the row timeout, actors
killed again and again during a run. Each test first proves that its fault happened, then checks the run's records
and files with check_invariants."""
from __future__ import annotations

import hashlib
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import pyarrow as pa
import pyarrow.parquet as pq
from click.testing import CliRunner

from conftest import ROOT, read_metadata, write_table
from invariants import check_invariants
from jobs.cli import main
from renderer.paths import video_relpath
from renderer.run import RunConfig, run
from renderer.testing import faults
from renderer.testing.videos import read_mp4

# tiny-animatediff rows that render in about a second
FAST = dict(num_frames=6, num_inference_steps=2)
MODEL = "tiny-animatediff"
# `render ...` in a fresh interpreter that says on stderr, as it exits, whether Ray was started in it
NO_RAY_DRIVER = """
import sys
import ray
from jobs.cli import main
from renderer.paths import video_relpath
from renderer.run import RunConfig, run
from renderer.testing import faults
from renderer.testing.videos import read_mp4
try:
    main(sys.argv[1:])
except SystemExit as end:
    print(f"ray started: {ray.is_initialized()}", file=sys.stderr)
    sys.exit(end.code)
"""

# a run on an embedded Ray of an 80 MiB object store spilling to the folder given first, with a stand-in for the
# render actor (run()'s actor_class, as bench/scaling.py uses it) that returns each row's large frames at once (a
# tiny preset takes over a minute per 512x512 row of 16 frames on the test machine's CPU). Prints the store's
# statistics on stderr
SMALL_STORE_DRIVER = """
import json
import os
import socket
import sys
import numpy as np
import ray
from ray._private.internal_api import memory_summary
from renderer.run import RunConfig, run

@ray.remote
class InstantFrames:
    def __init__(self, model, device, threads, load_options):
        self.name = f"{socket.gethostname()}:{os.getpid()}"

    def ready(self):
        return ray.get_runtime_context().get_node_id()

    @ray.method(num_returns=2)
    def render(self, request):
        ramp = np.linspace(0, 255, request.width, dtype=np.uint8)
        frames = np.broadcast_to(ramp[None, None, :, None], (request.num_frames, request.height, request.width, 3))
        return np.ascontiguousarray(frames), {"seconds": 0.0, "gpu": "cpu", "actor": self.name, "recoveries": []}

spilling = {"type": "filesystem", "params": {"directory_path": sys.argv[1]}}
ray.init(address="local", num_cpus=4, include_dashboard=False, object_store_memory=80 * 2**20,
         _system_config={"object_spilling_config": json.dumps(spilling)})
summary = run(RunConfig(tables=(sys.argv[2],), out=sys.argv[3], model="tiny-animatediff", actors=2,
                        threads_per_actor=1), actor_class=InstantFrames)
print(memory_summary(ray.get_runtime_context().gcs_address, stats_only=True), file=sys.stderr)
sys.exit(summary.exit_code)
"""


def rows(ids, **values) -> list[dict]:
    return [dict(id=i, prompt=f"scene {i}", **{**FAST, **values}) for i in ids]


def render_fresh(*args) -> subprocess.CompletedProcess:
    """`render ARGS` in a subprocess of its own (its own Ray, if it starts one)."""
    return subprocess.run([sys.executable, "-c", NO_RAY_DRIVER, *map(str, args)], cwd=ROOT, capture_output=True,
                          text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT)})


# ---------------------------------------------------------------- an output that cannot be written

def unwritable_outputs(tmp_path: Path) -> dict[str, Path]:
    """Outputs a run cannot write, whoever runs the tests: permissions do not bind root, so for root a folder that
    cannot be written is one of the kernel's (sysfs takes no new file, even from root) and a folder that cannot
    be created is one under a regular file."""
    regular = tmp_path / "a-file"
    regular.write_bytes(b"not a folder")
    outputs = {"a regular file": regular, "a folder under a regular file": regular / "out"}
    if os.geteuid() == 0:
        outputs["a folder root cannot write"] = Path("/sys/kernel")
    else:
        locked = tmp_path / "read-only"
        locked.mkdir(mode=0o500)
        outputs["a folder root cannot write"] = locked
    return outputs


def test_an_output_that_cannot_be_written_exits_2_naming_it_before_ray_starts(tmp_path):
    table = write_table(tmp_path / "t.parquet", rows(["a"]))
    for what, out in unwritable_outputs(tmp_path).items():
        result = render_fresh("run", table, "--out", out, "--model", MODEL)
        assert result.returncode == 2, (what, result.stderr[-2000:])
        assert str(out) in result.stderr and "Traceback" not in result.stderr, (what, result.stderr)
        assert result.stderr.rstrip().endswith("ray started: False"), (what, result.stderr)
        assert not (tmp_path / "a-file" / "out").exists() and not (out / "metadata.parquet").exists()


# ---------------------------------------------------------------- tables with nothing to render

def test_a_table_whose_rows_all_are_rejected_exits_1_with_every_row_recorded_rejected(tmp_path):
    table = write_table(tmp_path / "t.parquet", [dict(id="blank", prompt="   ", **FAST),
                                                 dict(id="odd", prompt="x", height=60, **FAST)])
    out = tmp_path / "out"
    result = render_fresh("run", table, "--out", out, "--model", MODEL)
    assert result.returncode == 1, result.stderr[-2000:]
    # nothing to render: the run never needed Ray
    assert result.stderr.rstrip().endswith("ray started: False")
    assert f"done: 2 rejected -> {out / 'metadata.parquet'}" in result.stdout
    records = check_invariants(out, ["blank", "odd"], result.returncode)
    assert {i: (r["status"], r["attempts"], r["video_path"]) for i, r in records.items()} == \
        {"blank": ("rejected", 0, None), "odd": ("rejected", 0, None)}
    assert "prompt" in records["blank"]["error"] and "height" in records["odd"]["error"]
    assert not list(out.glob("videos/*.mp4"))


def test_a_table_of_zero_rows_beside_a_good_one_renders_the_good_one_and_exits_0(ray_session, tmp_path):
    empty = tmp_path / "empty.parquet"
    pq.write_table(pa.table({"id": pa.array([], pa.string()), "prompt": pa.array([], pa.string())}), empty)
    good = write_table(tmp_path / "good.parquet", rows(["a", "b"]))
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["run", str(empty), str(good), "--out", str(out), "--model", MODEL,
                                       "--actors", "1"])
    assert result.exit_code == 0, result.output
    records = check_invariants(out, ["a", "b"], result.exit_code)
    assert {i: (r["status"], r["attempts"]) for i, r in records.items()} == {"a": ("ok", 1), "b": ("ok", 1)}
    assert sorted(read_metadata(out)) == ["a", "b"]


# ---------------------------------------------------------------- a row's encode outliving its actor

def render_actor_pids(rendering: bool = False) -> list[int]:
    """The RenderActor processes of this test's run: those handed this test's fault log (through runtime_env);
    `rendering`: only those executing a render now (Ray titles a worker after the method it executes)."""
    title = "ray::RenderActor.render" if rendering else "ray::RenderActor"
    pids = []
    for process in psutil.process_iter(["cmdline"]):
        try:
            mine = process.environ().get("RENDER_FAULTS_LOG") == os.environ["RENDER_FAULTS_LOG"]
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        if mine and " ".join(process.info["cmdline"] or []).startswith(title):
            pids.append(process.pid)
    return pids


class Killer(threading.Thread):
    """Kills render actors of the running test from beside the run: `kills` times, `every` seconds apart, each time
    one actor executing a render (chosen in turn), once `ready()` says so. Records what it killed, and when."""

    def __init__(self, kills: int, every: float, ready=lambda: True, rendering: bool = True):
        super().__init__(daemon=True)
        self.kills, self.every, self.ready, self.rendering = kills, every, ready, rendering
        self.killed: list[tuple[int, float]] = []
        self.error: BaseException | None = None

    def run(self):
        try:
            deadline = time.monotonic() + 300
            while len(self.killed) < self.kills:
                assert time.monotonic() < deadline, f"only {len(self.killed)} of {self.kills} kills in 300 s"
                pids = render_actor_pids(self.rendering) if self.ready() else []
                if not pids:
                    time.sleep(0.1)
                    continue
                pid = pids[len(self.killed) % len(pids)]
                os.kill(pid, signal.SIGKILL)
                self.killed.append((pid, time.time()))
                time.sleep(self.every)
        except BaseException as exc:
            self.error = exc


def test_a_slow_encode_outlives_its_actor_and_the_row_timeout_and_commits_once_with_no_retry(ray_session, tmp_path,
                                                                                             inject):
    """The race of two attempts of one row cannot start: a row's task is final only when its encode is (the pool
    waits on the encode task itself, which Ray never retries), the row timeout covers the render alone, and an
    actor's death is charged to the task it was executing. So a retry never overlaps the encode of an attempt
    before it. Here the first row's encode pauses 15 s (past the row timeout) and its actor is killed meanwhile:
    the row commits once, from its one attempt, after the kill; the row being rendered when it came pays."""
    # the pause fires at each frame written past half way: three frames, 15 s, in one encode
    inject({"point": "encode", "fault": "slow", "id": "slow", "times": 3})
    ids = ["slow", "next1", "next2", "next3"]
    out = tmp_path / "out"
    killer = Killer(kills=1, every=0, ready=lambda: bool(faults.fired("encode", "slow", "slow")), rendering=False)
    killer.start()
    summary = run(RunConfig(tables=(str(write_table(tmp_path / "t.parquet", rows(ids))),), out=out, model=MODEL,
                            actors=1, threads_per_actor=1, row_timeout=12))
    killer.join(timeout=10)
    assert killer.error is None and len(killer.killed) == 1, killer.error
    [(pid, killed_at)] = killer.killed
    # one encode of the row ever ran: every pause in one worker process
    assert len({entry["pid"] for entry in faults.fired("encode", "slow", "slow")}) == 1
    records = check_invariants(out, ids, summary.exit_code)
    assert summary.counts == {"ok": 4}
    slow = records["slow"]
    # rendered by the actor that was killed while its video was still being encoded
    assert slow["actor"] == f"{socket.gethostname()}:{pid}"
    assert (slow["status"], slow["attempts"]) == ("ok", 1)
    assert [p.name for p in out.glob("videos/*.mp4")].count(Path(video_relpath("slow")).name) == 1
    # the one file at the row's path is the one its record describes: committed after the kill, before the record
    assert killed_at < (out / slow["video_path"]).stat().st_mtime <= slow["finished_at"]
    committed = (out / slow["video_path"]).read_bytes()
    assert (len(committed), hashlib.sha256(committed).hexdigest()) == (slow["video_bytes"], slow["video_sha256"])
    # the kill cost one attempt at most, to the row the actor was rendering (if it was rendering one by then)
    assert sum(records[i]["attempts"] for i in ids[1:]) in (3, 4)


# ---------------------------------------------------------------- chaos: actors killed again and again

def test_actors_killed_five_times_during_a_run_cost_no_row_and_change_no_frame(ray_session, tmp_path, inject):
    # no fault fires: the variables only mark this test's actors (runtime_env) for the killer to find them
    inject({"point": "render", "fault": "raise", "id": "no such row"})
    ids = [f"c{i:02}" for i in range(10)]
    # 128x128 and one thread per actor: the same frames make the same mp4 (RELIABILITY.md, Rows and runs)
    table = str(write_table(tmp_path / "t.parquet", rows(ids, height=128, width=128)))
    options = ["--model", MODEL, "--actors", "2", "--threads-per-actor", "1", "--max-attempts", "6"]
    calm = CliRunner().invoke(main, ["run", table, "--out", str(tmp_path / "calm"), *options])
    assert calm.exit_code == 0, calm.output
    killer = Killer(kills=5, every=2)
    killer.start()
    chaos = CliRunner().invoke(main, ["run", table, "--out", str(tmp_path / "chaos"), *options])
    killer.join(timeout=10)
    assert killer.error is None and len({pid for pid, _ in killer.killed}) == 5, (killer.error, killer.killed)
    records = check_invariants(tmp_path / "chaos", ids, chaos.exit_code)
    assert chaos.exit_code == 0 and {r["status"] for r in records.values()} == {"ok"}, chaos.output
    # each death is charged to the row its actor was rendering (none when it died between rows)
    assert 1 <= sum(r["attempts"] for r in records.values()) - len(ids) <= 5
    calm_records = read_metadata(tmp_path / "calm")
    for row_id in ids:
        frames, _ = read_mp4(tmp_path / "chaos" / records[row_id]["video_path"])
        undisturbed, _ = read_mp4(tmp_path / "calm" / calm_records[row_id]["video_path"])
        assert np.array_equal(frames, undisturbed), row_id



# ---------------------------------------------------------------- a small object store, large frames

def test_large_frames_through_a_small_object_store_spill_and_every_row_renders(tmp_path, inject):
    """Ten rows of 640x640x16 frames (20 MB each, one model window) from two actors through an 80 MiB object store,
    their encodes paused 5 s each so that rendered frames pile up waiting for them (up to 8 rows, 160 MB): they
    spill to disk, and the run finishes with every row ok."""
    ids = [f"big{i}" for i in range(10)]
    inject(*({"point": "encode", "fault": "slow", "id": i, "times": 1} for i in ids))
    table = write_table(tmp_path / "t.parquet", rows(ids, height=640, width=640, num_frames=16))
    out = tmp_path / "out"
    result = subprocess.run([sys.executable, "-c", SMALL_STORE_DRIVER, str(tmp_path / "spill"), str(table), str(out)],
                            cwd=ROOT, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert len(faults.fired("encode", fault="slow")) == len(ids)
    assert "ObjectStoreFullError" not in result.stdout + result.stderr
    assert result.returncode == 0, result.stderr[-3000:]
    records = check_invariants(out, ids, result.returncode)
    assert {(r["status"], r["attempts"], r["width"], r["num_frames"]) for r in records.values()} == {("ok", 1, 640, 16)}
    spilled = re.search(r"Spilled (\d+) MiB, (\d+) objects", result.stderr)
    assert spilled and int(spilled[1]) >= 19 and int(spilled[2]) >= 1, result.stderr[-3000:]
