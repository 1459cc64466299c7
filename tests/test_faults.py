"""Process and storage faults on a real local Ray, injected through renderer/testing/faults.py: workers killed mid-row
and mid-encode, a poison row, a hanging row, the driver killed mid-run, a full disk, a metadata write that
fails. Each test first proves that its fault fired (the fault log), then checks the run's records and files
with check_invariants."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
from click.testing import CliRunner

from conftest import ROOT, read_metadata, write_table
from invariants import check_invariants
from jobs.cli import main
from renderer.paths import video_relpath
from renderer.run import RunConfig, run
from renderer.testing import faults

FAST = dict(num_frames=6, num_inference_steps=2)  # tiny-animatediff rows that render in about a second
MODEL = "tiny-animatediff"


def table(tmp_path: Path, ids) -> str:
    return str(write_table(tmp_path / "t.parquet", [dict(id=i, prompt=f"scene {i}", **FAST) for i in ids]))


def render(tmp_path: Path, ids, out: Path, *args):
    """`render run` in this process (the tests' local Ray)."""
    return CliRunner().invoke(main, ["run", table(tmp_path, ids), "--out", str(out), "--model", MODEL, *map(str, args)])


def test_a_worker_killed_mid_row_or_mid_encode_is_retried_and_leaves_no_partial_file(ray_session, tmp_path, inject):
    inject({"point": "render", "fault": "kill", "id": "mid-row", "times": 1},
           {"point": "encode", "fault": "kill", "id": "mid-encode", "times": 1})
    ids = ["first", "mid-row", "mid-encode", "last"]
    out = tmp_path / "out"
    summary = run(RunConfig(tables=(table(tmp_path, ids),), out=out, model=MODEL, actors=1))
    assert len(faults.fired("render", "mid-row", "kill")) == len(faults.fired("encode", "mid-encode", "kill")) == 1
    records = check_invariants(out, ids, summary.exit_code)  # killed half way through its mp4: no partial file
    assert summary.counts == {"ok": 4}
    assert {i: r["attempts"] for i, r in records.items()} == {"first": 1, "mid-row": 2, "mid-encode": 2, "last": 1}
    assert records["mid-row"]["actor"] != records["first"]["actor"]  # a fresh actor process finished it


def test_a_poison_row_that_kills_every_worker_fails_after_max_attempts_and_costs_no_other_row(ray_session, tmp_path,
                                                                                              inject):
    inject({"point": "render", "fault": "kill", "id": "poison"})
    ids = ["a", "poison", "b", "c"]
    out = tmp_path / "out"
    summary = run(RunConfig(tables=(table(tmp_path, ids),), out=out, model=MODEL, actors=1, max_attempts=2))
    assert len(faults.fired("render", "poison", "kill")) == 2
    records = check_invariants(out, ids, summary.exit_code)
    poison = records["poison"]
    assert (poison["status"], poison["attempts"], poison["video_path"]) == ("failed", 2, None)
    assert poison["error"].startswith("worker_crashed")
    assert all(records[i]["status"] == "ok" and records[i]["attempts"] == 1 for i in ("a", "b", "c"))
    assert summary.exit_code == 1


def test_a_hanging_row_times_out_without_retry_and_its_actor_is_replaced(ray_session, tmp_path, inject):
    inject({"point": "render", "fault": "hang", "id": "hang"})
    ids = ["before", "hang", "after", "later"]
    out = tmp_path / "out"
    result = render(tmp_path, ids, out, "--actors", 1, "--row-timeout", 20)
    assert len(faults.fired("render", "hang", "hang")) == 1  # hung once, never tried again
    records = check_invariants(out, ids, result.exit_code)
    hang = records["hang"]
    assert (hang["status"], hang["attempts"]) == ("failed", 1)
    assert hang["error"].startswith("timeout: the task ran past --row-timeout 20s"), hang["error"]
    assert all(records[i]["status"] == "ok" and records[i]["attempts"] == 1 for i in ("before", "after", "later"))
    assert records["after"]["actor"] != records["before"]["actor"]  # the hung actor was killed and replaced


def test_the_row_timeout_is_an_option_of_run_and_submit():
    for command in ("run", "submit"):
        assert "--row-timeout SECONDS" in CliRunner().invoke(main, [command, "--help"]).output
    assert CliRunner().invoke(main, ["run", "t.parquet", "--out", "o", "--row-timeout", "0"]).exit_code == 2


def test_a_killed_driver_resumes_without_rendering_a_committed_row_again(tmp_path):
    ids = [f"r{i}" for i in range(8)]
    out = tmp_path / "out"
    command = [sys.executable, "-m", "jobs.cli", "run", table(tmp_path, ids), "--out", str(out), "--model", MODEL,
               "--actors", "1"]
    driver = subprocess.Popen(command, cwd=ROOT, start_new_session=True, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while not ok_records(out):  # the first flush comes with the first finished row
            assert driver.poll() is None and time.monotonic() < deadline, "the run ended before it was killed"
            time.sleep(0.1)
    finally:
        kill_group(driver)
    committed = ok_records(out)
    assert 1 <= len(committed) < len(ids), "the kill came too late to leave anything to resume"
    assert (out / ".render.lock").exists()  # left by the dead driver: the next run takes it over
    mtimes = {i: (out / video_relpath(i)).stat().st_mtime_ns for i in committed}
    # what a run killed mid-write leaves, planted where the next rows will be written: never promoted
    pending = next(i for i in ids if i not in committed)
    planted = [out / "videos" / f".tmp-0123456789ab-{Path(video_relpath(pending)).name}",
               out / ".tmp-0123-metadata.parquet"]
    for path in planted:
        path.write_bytes(b"partial")

    resumed = subprocess.Popen(command, cwd=ROOT, start_new_session=True, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    try:
        stdout, stderr = resumed.communicate(timeout=600)
    finally:
        kill_group(resumed)
    assert resumed.returncode == 0, stdout + stderr[-3000:]
    assert f"({len(committed)} already rendered, skipped)" in stdout
    records = check_invariants(out, ids, resumed.returncode)  # the planted temporary files are gone
    assert {i: (out / video_relpath(i)).stat().st_mtime_ns for i in committed} == mtimes
    assert all(records[i]["status"] == "ok" for i in ids) and not (out / ".render.lock").exists()


def kill_group(process: subprocess.Popen) -> None:
    """SIGKILL a driver started in a session of its own and everything in it (its local Ray), and wait until
    none of them is left."""
    deadline = time.monotonic() + 60
    while True:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            break
        process.poll()  # reap the driver itself
        assert time.monotonic() < deadline, "the process group outlived SIGKILL"
        time.sleep(0.2)
    process.wait()


def ok_records(out: Path) -> set[str]:
    """The ids the metadata on disk records `ok` (the file is replaced atomically, so it always reads whole)."""
    path = out / "metadata.parquet"
    if not path.exists():
        return set()
    return {r["id"] for r in pq.read_table(path).to_pylist() if r["status"] == "ok"}


def test_slow_encodes_never_idle_the_actor(ray_session, tmp_path, inject):
    """Two videos stuck in their encode (a slow disk) hold the rows the actor queue allowed before; the actor
    still takes the next rows as soon as its renders return."""
    inject(*({"point": "encode", "fault": "slow", "id": row_id, "times": 1} for row_id in ("slow1", "slow2")))
    ids = ["slow1", "slow2", "next1", "next2"]
    out = tmp_path / "out"
    summary = run(RunConfig(tables=(table(tmp_path, ids),), out=out, model=MODEL, actors=1))
    assert len(faults.fired("encode", fault="slow")) == 2
    records = check_invariants(out, ids, summary.exit_code)
    assert summary.counts == {"ok": 4}
    # rendered and written while both slow encodes were still paused
    assert max(records[i]["finished_at"] for i in ("next1", "next2")) < \
        min(records[i]["finished_at"] for i in ("slow1", "slow2"))


def test_a_full_disk_fails_the_row_naming_the_path_after_max_attempts_and_leaves_no_partial_file(ray_session, tmp_path,
                                                                                                 inject):
    inject({"point": "encode", "fault": "enospc", "id": "full"})
    ids = ["a", "full", "b"]
    out = tmp_path / "out"
    summary = run(RunConfig(tables=(table(tmp_path, ids),), out=out, model=MODEL, actors=1, max_attempts=2))
    assert len(faults.fired("encode", "full", "enospc")) == 2  # retried like any error, up to --max-attempts
    records = check_invariants(out, ids, summary.exit_code)  # the half-written temporary file was removed
    full = records["full"]
    assert (full["status"], full["attempts"]) == ("failed", 2)
    assert full["error"] == f"write_failed: {out / video_relpath('full')}: No space left on device (OSError)"
    assert records["a"]["status"] == records["b"]["status"] == "ok" and summary.stopped is None


def test_writes_failing_for_three_rows_in_a_row_stop_the_run_and_the_same_command_completes_later(
        ray_session, tmp_path, inject, monkeypatch):
    # more rows than 3 failures plus the encodes one actor can have in flight (4), however slow each encode is
    ids = [f"r{i}" for i in range(10)]
    inject(*({"point": "encode", "fault": "enospc", "id": i} for i in ids))  # the disk is full for every row
    out = tmp_path / "out"
    full = render(tmp_path, ids, out, "--actors", 1, "--max-attempts", 1)
    tried = {entry["id"] for entry in faults.fired("encode", fault="enospc")}
    assert 3 <= len(tried) < len(ids)
    records = check_invariants(out, ids, full.exit_code)
    assert full.exit_code == 1
    stopped = "the run stopped after 3 rows in a row failed to write their video (disk full?)"
    assert f"stopping: {stopped}" in full.stderr and f"stopped early: {stopped}" in full.stdout
    for row_id in ids:
        record = records[row_id]
        assert record["status"] == "failed"
        words = "No space left on device" if row_id in tried else f"not rendered: {stopped}"
        assert words in record["error"], record
    assert all(records[i]["attempts"] == 0 for i in ids if i not in tried)

    monkeypatch.delenv("RENDER_FAULTS")  # space freed
    freed = render(tmp_path, ids, out, "--actors", 1)
    assert freed.exit_code == 0, freed.output
    assert all(r["status"] == "ok" for r in check_invariants(out, ids, freed.exit_code).values())


def test_a_failed_metadata_write_keeps_the_previous_file_and_the_run_exits_non_zero(ray_session, tmp_path, inject,
                                                                                    monkeypatch):
    out = tmp_path / "out"
    first = render(tmp_path, ["a", "b"], out, "--actors", 1)
    check_invariants(out, ["a", "b"], first.exit_code)
    before = (out / "metadata.parquet").read_bytes()

    inject({"point": "metadata", "fault": "enospc", "id": "metadata.parquet"})
    failed = render(tmp_path, ["a", "b", "c"], out, "--actors", 1)
    assert faults.fired("metadata", "metadata.parquet", "enospc")
    assert failed.exit_code == 1
    assert (f"the run's records could not be saved: write_failed: {out / 'metadata.parquet'}: No space left on device"
            in failed.stderr)
    assert (out / "metadata.parquet").read_bytes() == before and sorted(read_metadata(out)) == ["a", "b"]
    assert not list(out.glob(".tmp-*")) and not (out / ".render.lock").exists()

    monkeypatch.delenv("RENDER_FAULTS")
    again = render(tmp_path, ["a", "b", "c"], out, "--actors", 1)
    assert again.exit_code == 0 and "(2 already rendered, skipped)" in again.stdout
    check_invariants(out, ["a", "b", "c"], again.exit_code)


def test_a_fault_due_once_fires_once_when_many_processes_reach_it_together(tmp_path, inject):
    # the members of a gang reach their row's render point at the same moment
    inject({"point": "render", "fault": "raise", "id": "gang-row", "times": 1})
    racer = ("import sys, time\nfrom renderer.testing import faults\n"
             "time.sleep(max(0.0, float(sys.argv[1]) - time.time()))\nprint(faults.due('render', 'gang-row'))")
    start = time.time() + 2
    racers = [subprocess.Popen([sys.executable, "-c", racer, str(start)], stdout=subprocess.PIPE, text=True,
                               cwd=ROOT) for _ in range(8)]
    answers = sorted(racer.communicate(timeout=60)[0].strip() for racer in racers)
    assert answers == ["None"] * 7 + ["raise"]
    assert len(faults.fired("render", "gang-row", "raise")) == 1
