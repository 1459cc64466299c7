"""The reliability checklist's scenarios that cross several parts at once: an output that cannot be written, tables
whose rows all are rejected or that hold no row, a row's slow encode outliving its actor and the row timeout, actors
killed again and again during a run, and a small object store under large frames. Each test first proves that its
fault happened, then checks the run's records and files with check_invariants."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from click.testing import CliRunner

from conftest import ROOT, read_metadata, write_table
from invariants import check_invariants
from jobs.cli import main

# tiny-animatediff rows that render in about a second
FAST = dict(num_frames=6, num_inference_steps=2)
MODEL = "tiny-animatediff"
# `render ...` in a fresh interpreter that says on stderr, as it exits, whether Ray was started in it
NO_RAY_DRIVER = """
import sys
import ray
from jobs.cli import main
try:
    main(sys.argv[1:])
except SystemExit as end:
    print(f"ray started: {ray.is_initialized()}", file=sys.stderr)
    sys.exit(end.code)
"""


def rows(ids, **values) -> list[dict]:
    return [dict(id=i, prompt=f"scene {i}", **FAST, **values) for i in ids]


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
