"""The orchestration scaling benchmark (bench/scaling.py) runs end to end on its own small Ray cluster."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import ROOT, read_metadata
from renderer.testing.videos import read_mp4


def test_scaling_benchmark_runs_every_row_through_the_real_run_on_stand_in_actors(tmp_path):
    report_path, keep = tmp_path / "scaling.json", tmp_path / "runs"
    bench = subprocess.run(
        [sys.executable, "bench/scaling.py", str(report_path), "--actors", "1,2", "--step-seconds", "0.2",
         "--rows-per-actor", "3", "--nodes", "2", "--keep", str(keep)],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert bench.returncode == 0, bench.stdout + bench.stderr
    assert "orchestration only, not rendering" in bench.stdout
    report = json.loads(report_path.read_text())
    assert report["measures"].startswith("orchestration only")
    assert [r["actors"] for r in report["results"]] == [1, 2]
    for result in report["results"]:
        rows = result["actors"] * 3
        # every row rendered once by the stand-in, recorded ok and encoded to its own mp4
        assert result["rows"] == result["renders"] == result["ok"] == result["videos"] == rows
        assert result["exit_code"] == 0
        assert result["actors_used"] == result["actors"]
        assert not result["torch_in_actors"]  # the stand-in stays light: 64 of them must fit in memory
        # each actor sleeps the step for each of its rows in turn, so no run beats the ideal; how far below it a
        # run lands is a timing on a shared machine and is left to the benchmark's table
        assert 0 < result["vs_ideal"] <= 1
        assert result["efficiency"] == pytest.approx(result["vs_ideal"] / report["results"][0]["vs_ideal"])
        assert result["ideal_rows_s"] == result["actors"] / 0.2
        assert result["wall_s"] > 0 and result["driver_cpu_s"] >= 0 and 0 <= result["machine_cpu"] <= 1
    assert report["results"][0]["efficiency"] == 1.0  # the baseline, by definition

    out = keep / "out-2"
    records = read_metadata(out)
    assert sorted(records) == [f"row{i:05d}" for i in range(6)]
    assert {r["gpu"] for r in records.values()} == {"stand-in"}
    frames, fps = read_mp4(out / records["row00004"]["video_path"])
    assert frames.shape == (2, 16, 16, 3) and fps == records["row00004"]["fps"]
