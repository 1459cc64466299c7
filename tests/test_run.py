"""End to end on a real local Ray with the real tiny pipelines: Parquet in, mp4 + metadata out."""
from __future__ import annotations

import io
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
from click.testing import CliRunner
from PIL import Image

from conftest import ROOT, copy_example, own_ray_workers, read_metadata, write_table
from invariants import check_invariants
from jobs.cli import main
from renderer.paths import video_relpath
from renderer.run import RunConfig, run
from renderer.testing.videos import read_mp4

FAST = dict(num_frames=6, num_inference_steps=2)  # tiny-animatediff rows that render in a fraction of a second


def render(table, out, *args):
    result = CliRunner().invoke(main, ["run", *map(str, table if isinstance(table, list) else [table]),
                                       "--out", str(out), *args])
    return result


def mtimes(out: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in (out / "videos").glob("*.mp4")}


def test_example_table_renders_to_checked_mp4s(ray_session, tmp_path):
    table = copy_example(tmp_path)
    out = tmp_path / "out"
    result = render(table, out)
    assert result.exit_code == 0, result.output
    records = read_metadata(out)
    assert sorted(records) == sorted(["fox-in-snow", "ocean-waves", "sunrise", "dusk"])
    for row_id, rec in records.items():
        assert rec["status"] == "ok" and rec["error"] is None and rec["attempts"] == 1
        assert rec["video_path"] == video_relpath(row_id)
        frames, fps = read_mp4(out / rec["video_path"])
        assert frames.shape == (rec["num_frames"], rec["height"], rec["width"], 3)
        assert fps == rec["fps"] and rec["chunks"] == 1 and rec["gpu"] == "cpu" and rec["seconds"] > 0
    assert ((records["ocean-waves"]["num_frames"], records["dusk"]["fps"], records["sunrise"]["num_frames"])
            == (12, 6, 14))
    check_invariants(out, list(records), result.exit_code)
    # no temporary file left
    assert sorted(p.name for p in out.iterdir()) == ["gallery", "index.html", "metadata.parquet", "videos"]


def test_resume_renders_only_what_is_missing_or_changed(ray_session, tmp_path):
    rows = [dict(id=f"r{i}", prompt=f"scene {i}", **FAST) for i in range(3)]
    out = tmp_path / "out"
    config = RunConfig(tables=(str(write_table(tmp_path / "t.parquet", rows)),), out=out, model="tiny-animatediff")
    first = run(config)
    assert first.counts == {"ok": 3} and first.skipped == 0
    before = mtimes(out)

    again = run(config)
    assert again.skipped == 3 and again.counts == {"ok": 3}
    assert mtimes(out) == before  # nothing rendered, nothing rewritten

    rows.append(dict(id="r3", prompt="scene 3", **FAST))
    rows[0]["num_inference_steps"] = 3  # a result-affecting change re-renders that row
    grown = run(RunConfig(tables=(str(write_table(tmp_path / "t.parquet", rows)),), out=out, model="tiny-animatediff"))
    assert grown.skipped == 2 and grown.counts == {"ok": 4}
    after = mtimes(out)
    changed = {name for name in after if before.get(name) != after[name]}
    assert changed == {Path(video_relpath("r0")).name, Path(video_relpath("r3")).name}
    check_invariants(out, [row["id"] for row in rows], grown.exit_code)


def test_resume_reads_an_older_metadata_file_and_rerenders_a_deleted_video(ray_session, tmp_path):
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from renderer.metadata import FIELDS

    rows = [dict(id=f"r{i}", prompt=f"scene {i}", **FAST) for i in range(3)]
    out = tmp_path / "out"
    config = RunConfig(tables=(str(write_table(tmp_path / "t.parquet", rows)),), out=out, model="tiny-animatediff")
    assert run(config).counts == {"ok": 3}
    # as an earlier version wrote it: without the newer columns, with one this version no longer writes
    older = pq.read_table(out / "metadata.parquet").drop_columns(["recoveries", "prompt_truncated", "finished_at"])
    pq.write_table(older.append_column("legacy", pa.array(["x"] * 3)), out / "metadata.parquet")
    (out / video_relpath("r1")).unlink()
    before = mtimes(out)

    again = run(config)
    assert again.skipped == 2 and again.counts == {"ok": 3}
    changed = {name for name, mtime in mtimes(out).items() if before.get(name) != mtime}
    assert changed == {Path(video_relpath("r1")).name}
    table = pq.read_table(out / "metadata.parquet")
    assert table.column_names == list(FIELDS)
    kept = table.filter(pc.not_equal(table.column("id"), "r1"))
    assert kept.column("finished_at").null_count == 2  # carried as they were: the old file had no such column
    check_invariants(out, [row["id"] for row in rows], again.exit_code)


def test_frames_do_not_depend_on_actor_count_or_row_order(ray_session, tmp_path):
    # 128x128: x264 encodes 64x64 frames differently from one run to the next (see test_long_videos.py)
    rows = [dict(id=f"s{i}", prompt=f"a boat {i}", height=128, width=128, **FAST) for i in range(4)]
    one = render(write_table(tmp_path / "a.parquet", rows), tmp_path / "one", "--model", "tiny-animatediff",
                 "--actors", "1", "--threads-per-actor", "1")
    random.Random(1).shuffle(rows)
    two = render(write_table(tmp_path / "b.parquet", rows), tmp_path / "two", "--model", "tiny-animatediff",
                 "--actors", "2", "--threads-per-actor", "1")
    assert one.exit_code == two.exit_code == 0
    a, b = (check_invariants(tmp_path / name, [row["id"] for row in rows], 0) for name in ("one", "two"))
    assert len({r["actor"] for r in b.values()}) == 2  # both actors took rows
    for row_id in a:
        assert a[row_id]["seed"] == b[row_id]["seed"]
        frames_a, _ = read_mp4(tmp_path / "one" / a[row_id]["video_path"])
        frames_b, _ = read_mp4(tmp_path / "two" / b[row_id]["video_path"])
        # same seed, same noise, same thread count per actor: the same frames, bit for bit
        assert np.array_equal(frames_a, frames_b), row_id


def test_bad_rows_are_rejected_and_cost_no_other_row(ray_session, tmp_path, image_file):
    rows = [
        dict(id="good", prompt="a lighthouse", model="tiny-animatediff", **FAST),
        dict(id="no-prompt", model="tiny-animatediff"),
        dict(id="no-image", model="tiny-svd"),
        dict(id="url-image", model="tiny-svd", image="http://example.com/x.png"),
        dict(id="odd-size", prompt="x", model="tiny-animatediff", height=60),
        dict(id="too-long", prompt="x", model="tiny-animatediff", num_frames=5000),
        dict(id="bad-knob", prompt="x", model="tiny-animatediff", params='{"motion_scale": 1}'),
        dict(id="../../escape", prompt="x", model="tiny-animatediff", **FAST),
    ]
    # a second table with encoded images: passes the driver's cheap header check, fails the actor's full
    # decode, so it is rejected there and not retried
    binary = write_table(tmp_path / "bytes.parquet",
                         [dict(id="truncated-jpeg", model="tiny-svd", image=truncated_jpeg())])
    (tmp_path / "cond.png").write_bytes(image_file.read_bytes())
    out = tmp_path / "out"
    result = render([write_table(tmp_path / "t.parquet", rows), binary], out)
    assert result.exit_code == 1, result.output
    records = check_invariants(out, [row["id"] for row in rows] + ["truncated-jpeg"], result.exit_code)
    assert records["good"]["status"] == records["../../escape"]["status"] == "ok"
    expected = {"no-prompt": "prompt=None: required", "no-image": "image=None: required",
                "url-image": "image='http://example.com/x.png': absolute URLs",
                "odd-size": "height=60: must be divisible", "too-long": "num_frames=5000: exceeds the cap of 2048",
                "bad-knob": "params.motion_scale=1: not a parameter", "truncated-jpeg": "image=<"}
    for row_id, words in expected.items():
        assert records[row_id]["status"] == "rejected" and words in records[row_id]["error"], records[row_id]
        assert records[row_id]["video_path"] is None
    assert (out / records["../../escape"]["video_path"]).resolve().parent == (out / "videos").resolve()
    truncated = records["truncated-jpeg"]
    assert "image file is truncated" in truncated["error"] and truncated["attempts"] == 1
    assert "7 rejected" in result.output and "2 ok" in result.output


def truncated_jpeg() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)).save(buffer, "JPEG")
    return buffer.getvalue()[: len(buffer.getvalue()) // 2]


def test_a_failing_row_is_retried_then_failed_and_the_run_goes_on(ray_session, tmp_path):
    rows = [dict(id=f"w{i}", prompt="x", **FAST) for i in range(3)]
    out = tmp_path / "out"
    (out / video_relpath("w1")).mkdir(parents=True)  # the commit of w1 must fail: a folder holds its path
    summary = run(RunConfig(tables=(str(write_table(tmp_path / "t.parquet", rows)),), out=out, model="tiny-animatediff",
                            max_attempts=2))
    assert summary.exit_code == 1 and summary.counts == {"ok": 2, "failed": 1}
    record = check_invariants(out, [row["id"] for row in rows], summary.exit_code)["w1"]
    assert record["status"] == "failed" and record["attempts"] == 2
    assert "IsADirectoryError" in record["error"] and record["video_path"] is None


def test_a_killed_actor_row_is_retried_on_a_fresh_actor(ray_session, tmp_path):
    rows = [dict(id=f"k{i}", prompt="x", num_frames=16, num_inference_steps=12) for i in range(3)]
    out = tmp_path / "out"
    table = str(write_table(tmp_path / "t.parquet", rows))
    config = RunConfig(tables=(table,), out=out, model="tiny-animatediff", actors=1)
    result = {}
    worker = threading.Thread(target=lambda: result.setdefault("summary", run(config)))
    worker.start()
    killed = kill_actor_mid_row(timeout=120)
    worker.join(timeout=300)
    summary = result["summary"]
    assert killed, "no actor was found rendering"
    assert summary.counts == {"ok": 3}
    records = check_invariants(out, [row["id"] for row in rows], summary.exit_code)
    assert sorted(r["attempts"] for r in records.values()) == [1, 1, 2]
    retried = next(r for r in records.values() if r["attempts"] == 2)
    assert not retried["actor"].endswith(f":{killed}")  # finished by the restarted actor process


def kill_actor_mid_row(timeout: float) -> int | None:
    """SIGKILL the first process busy in RenderActor.render of this test's own Ray."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for pid in own_ray_workers("ray::RenderActor.render"):
            os.kill(pid, signal.SIGKILL)
            return pid
        time.sleep(0.05)
    return None


def test_readme_command_renders_the_example_in_a_fresh_process(tmp_path):
    table = copy_example(tmp_path)
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "jobs.cli", "run", str(table), "--out", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    assert "done: 4 ok" in proc.stdout
    assert f"gallery: {out / 'index.html'}" in proc.stdout.splitlines()
    assert len(check_invariants(out, ["fox-in-snow", "ocean-waves", "sunrise", "dusk"], proc.returncode)) == 4
