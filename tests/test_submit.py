"""`render submit/status/logs/stop` against a real Ray head started on loopback for this module."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from cluster.submit import Submission, SubmitError, _client, auth_warning, check_working_dir
from conftest import copy_example, read_metadata, write_table
from invariants import check_invariants
from jobs.cli import main
from renderer.testing.ports import listen_port

BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def ray_head(tmp_path_factory):
    """`ray start --head` on loopback in its own process group, killed whole afterwards (never `ray stop`,
    which would also stop the tests' own local Ray)."""
    dashboard = listen_port()
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    head = subprocess.Popen(
        [str(BIN / "ray"), "start", "--head", f"--port={listen_port()}", "--dashboard-host=127.0.0.1",
         f"--dashboard-port={dashboard}", "--num-cpus=3", "--disable-usage-stats", "--block",
         # its own agent and metrics ports: the defaults are taken by the tests' local Ray on this machine
         f"--dashboard-agent-listen-port={listen_port()}", f"--dashboard-agent-grpc-port={listen_port()}",
         f"--metrics-export-port={listen_port()}", f"--runtime-env-agent-port={listen_port()}",
         f"--temp-dir={tmp_path_factory.mktemp('ray')}"],
        env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    address = f"http://127.0.0.1:{dashboard}"
    deadline = time.monotonic() + 120
    while not _dashboard_up(address):
        assert head.poll() is None and time.monotonic() < deadline, "the Ray head did not start"
        time.sleep(1)
    yield address
    os.killpg(head.pid, signal.SIGTERM)
    try:
        head.wait(30)
    except subprocess.TimeoutExpired:
        os.killpg(head.pid, signal.SIGKILL)


def _dashboard_up(address: str) -> bool:
    try:
        _client(address).list_jobs()
        return True
    except Exception:
        return False


def cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def wait_for(address, job_id, statuses=("SUCCEEDED", "FAILED", "STOPPED"), timeout=300) -> str:
    client, deadline = _client(address), time.monotonic() + timeout
    while (status := str(client.get_job_status(job_id).value)) not in statuses:
        assert time.monotonic() < deadline, f"{job_id} still {status}"
        time.sleep(1)
    return status


def submitted_id(result) -> str:
    assert result.exit_code == 0, result.output
    return result.output.split("submitted ")[1].split(":")[0]


def test_submit_renders_the_example_and_status_logs_report_it(ray_head, tmp_path):
    table, out = copy_example(tmp_path), tmp_path / "out"
    job = submitted_id(cli("submit", table, "--out", out, "--address", ray_head))
    assert wait_for(ray_head, job) == "SUCCEEDED", cli("logs", job, "--address", ray_head).output
    records = check_invariants(out, ["dusk", "fox-in-snow", "ocean-waves", "sunrise"], 0)  # SUCCEEDED: exit 0
    assert all(r["status"] == "ok" for r in records.values())
    assert f"{job}: SUCCEEDED" in cli("status", job, "--address", ray_head).output
    assert "done: 4 ok" in cli("logs", job, "--address", ray_head).output
    again = cli("submit", table, "--out", out, "--address", ray_head)
    assert again.exit_code == 2 and f"already submitted (succeeded): follow it with `render logs {job}`" in again.output


def test_stop_halfway_then_submit_again_resumes_without_rendering_a_row_twice(ray_head, tmp_path):
    rows = [dict(id=f"r{i}", prompt=f"scene {i}", num_frames=6, num_inference_steps=2) for i in range(12)]
    table, out = write_table(tmp_path / "t.parquet", rows), tmp_path / "out"
    args = ("submit", table, "--out", out, "--address", ray_head, "--model", "tiny-animatediff")
    job = submitted_id(cli(*args))
    refused = cli(*args)
    assert refused.exit_code == 2 and "already submitted" in refused.output  # while it runs
    # stopped once a flush has recorded rows: a video on disk is recorded only once the driver collects its
    # encode, so counting videos would race with that
    deadline = time.monotonic() + 240
    while not (out / "metadata.parquet").exists() or "ok" not in [r["status"] for r in read_metadata(out).values()]:
        assert time.monotonic() < deadline and wait_for(ray_head, job, ("RUNNING", "SUCCEEDED", "FAILED")) == "RUNNING"
        time.sleep(0.5)
    assert "stopping" in cli("stop", job, "--address", ray_head).output
    assert wait_for(ray_head, job) == "STOPPED"
    committed = {k: r for k, r in read_metadata(out).items() if r["status"] == "ok"}
    assert 1 <= len(committed) < 12, "the stop came too late to leave anything to resume"
    mtimes = {k: (out / r["video_path"]).stat().st_mtime_ns for k, r in committed.items()}
    assert not (out / ".render.lock").exists()

    resumed = submitted_id(cli(*args))
    assert resumed == f"{job}-2"
    assert wait_for(ray_head, resumed) == "SUCCEEDED"
    records = check_invariants(out, [r["id"] for r in rows], 0)
    assert all(r["status"] == "ok" for r in records.values())
    assert {k: (out / records[k]["video_path"]).stat().st_mtime_ns for k in committed} == mtimes
    assert f"({len(committed)} already rendered, skipped)" in cli("logs", resumed, "--address", ray_head).output


def test_a_working_dir_holding_weights_is_refused_before_anything_is_sent(tmp_path):
    (tmp_path / "renderer").mkdir()
    (tmp_path / "renderer" / "code.py").write_text("x = 1\n")
    (tmp_path / "model.weights").write_bytes(b"\0" * 4096)
    (tmp_path / "unet.safetensors").write_bytes(b"\0" * 8192)  # excluded like every weight format
    assert check_working_dir(tmp_path, limit=10_000) == 4096 + 6
    with pytest.raises(SubmitError, match=r"over Ray's limit .* largest files: model.weights"):
        check_working_dir(tmp_path, limit=4000)


def test_the_submission_id_depends_on_the_run_and_nothing_else():
    base = Submission(("a.parquet",), "/mnt/out", "http://127.0.0.1:8265", ("--model", "x"), {"HF_HOME": "/h"})
    same = Submission(("a.parquet",), "/mnt/out", "http://10.0.0.1:8265", ("--model", "x"), {"HF_HOME": "/other"})
    assert base.submission_id() == same.submission_id()  # the dashboard's address and env values are not the run
    for other in (Submission(("b.parquet",), "/mnt/out", ""), Submission(("a.parquet",), "/mnt/out2", ""),
                  Submission(("a.parquet",), "/mnt/out", "", ("--model", "y"))):
        assert other.submission_id() != base.submission_id()
    assert base.entrypoint() == "python -m jobs.cli run a.parquet --out /mnt/out --address auto --model x"


def test_a_dashboard_beyond_loopback_without_token_auth_gets_a_warning(monkeypatch):
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    assert "anyone who reaches that port can run code" in auth_warning("http://10.1.2.3:8265")
    assert auth_warning("http://127.0.0.1:8265") is None and auth_warning("auto") is None
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    assert auth_warning("http://10.1.2.3:8265") is None


def test_two_runs_on_one_output_the_second_refuses_naming_the_holder(tmp_path):
    from renderer.errors import ConfigError
    from renderer.paths import output_lock

    with output_lock(tmp_path):
        with pytest.raises(ConfigError, match=rf"in use by another run: pid {os.getpid()} on {socket.gethostname()}"):
            with output_lock(tmp_path):
                pass
    (tmp_path / ".render.lock").write_text(f'{{"host": "{socket.gethostname()}", "pid": 999999999}}')
    with output_lock(tmp_path):  # a dead holder on this host: taken over
        assert (tmp_path / ".render.lock").read_text().count(str(os.getpid())) == 1
    assert not (tmp_path / ".render.lock").exists()
