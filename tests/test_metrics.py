"""A run's Ray metrics (renderer/metrics.py), read back where Prometheus reads them: the metrics export of the
tests' local Ray (each node's agent serves them at http://127.0.0.1:<MetricsExportPort>/metrics)."""
from __future__ import annotations

import math
import re
import time
import urllib.request
from pathlib import Path
from types import SimpleNamespace

from conftest import copy_example, read_metadata, write_table
from renderer.metrics import SECONDS_BUCKETS, RunMetrics
from renderer.run import RunConfig, run
from renderer.testing import faults

ANIMATEDIFF, SVD, WAN = "tiny-animatediff", "tiny-svd", "tiny-wan"
FAST = dict(num_frames=6, num_inference_steps=2)
# the driver sends its metrics to the agent every 10 s (Ray's metrics_report_interval_ms)
EXPORT_DEADLINE_S = 60
# a gauge recorded once is gone from the export by then: at most one interval to reach the agent, two there
GAUGE_LIFETIME_S = 31
SERIES = re.compile(r"^(\w+)\{(.*)\} (\S+)$")
LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')
# the labels that tell our series apart (Ray adds its own: the node, the session, the worker); le: a bucket
OURS = ("model", "status", "kind", "le")


def test_a_runs_rows_frames_seconds_and_restarts_reach_the_ray_metrics_export(ray_session, tmp_path, inject):
    inject({"point": "render", "fault": "raise", "id": "raises"},
           {"point": "render", "fault": "kill", "id": "killed", "times": 1},
           {"point": "render", "fault": "kill", "id": "gang-killed", "times": 1})
    # rows without a model render with --model (tiny-animatediff); the example's rows name theirs; tiny-wan renders
    # each video on a gang of two actors
    extra = write_table(tmp_path / "extra.parquet", [
        dict(id="raises", prompt="a row whose render always raises", **FAST),
        dict(id="killed", prompt="a row whose actor is killed once", **FAST),
        dict(id="no-prompt", **FAST),
        dict(id="no-image", model=SVD),
        dict(id="gang-killed", model=WAN, prompt="a row whose gang loses a member once", num_frames=9, height=128,
             width=128, num_inference_steps=2),
    ])
    out = tmp_path / "out"
    # another run's metrics, held open from before this run until after it, longer than Ray keeps a gauge that is
    # not recorded again
    held = RunMetrics(str(tmp_path / "held"), [SimpleNamespace(model=ANIMATEDIFF)], [], None)
    held_since = time.monotonic()
    try:
        summary = run(RunConfig(tables=(str(copy_example(tmp_path)), str(extra)), out=out, model=ANIMATEDIFF,
                                actors=1, gpus_per_video=2, max_attempts=2))
        assert_exported(out, summary)
        time.sleep(max(0.0, held_since + GAUGE_LIFETIME_S - time.monotonic()))
        assert run_series(scrape(), str(tmp_path / "held")) == {
            ("ray_render_rows_waiting", ANIMATEDIFF): 1, ("ray_render_rows_in_flight", ANIMATEDIFF): 0}
    finally:
        held.close()


def assert_exported(out: Path, summary) -> None:
    """The run's faults fired and its records are as planned, and its series at the export count exactly them."""
    assert len(faults.fired("render", "raises", "raise")) == 2
    assert len(faults.fired("render", "killed", "kill")) == len(faults.fired("render", "gang-killed", "kill")) == 1
    records = read_metadata(out)
    assert summary.counts == {"ok": 6, "failed": 1, "rejected": 2}
    ok = {model: [r for r in records.values() if r["model"] == model and r["status"] == "ok"]
          for model in (ANIMATEDIFF, SVD, WAN)}
    assert sorted(r["id"] for r in ok[ANIMATEDIFF]) == ["fox-in-snow", "killed", "ocean-waves"]
    expected = {
        ("ray_render_rows_total", ANIMATEDIFF, "ok"): 3, ("ray_render_rows_total", ANIMATEDIFF, "failed"): 1,
        ("ray_render_rows_total", ANIMATEDIFF, "rejected"): 1,
        ("ray_render_rows_total", SVD, "ok"): 2, ("ray_render_rows_total", SVD, "rejected"): 1,
        ("ray_render_rows_total", WAN, "ok"): 1,
        ("ray_render_frames_total", ANIMATEDIFF): sum(r["num_frames"] for r in ok[ANIMATEDIFF]),
        ("ray_render_frames_total", SVD): sum(r["num_frames"] for r in ok[SVD]), ("ray_render_frames_total", WAN): 9,
        ("ray_render_row_seconds_count", ANIMATEDIFF): 3, ("ray_render_row_seconds_count", SVD): 2,
        ("ray_render_row_seconds_count", WAN): 1,
        **{(gauge, model): 0 for gauge in ("ray_render_rows_in_flight", "ray_render_rows_waiting")
           for model in (ANIMATEDIFF, SVD, WAN)},
        ("ray_render_restarts_total", ANIMATEDIFF, "actor"): 1, ("ray_render_restarts_total", WAN, "gang"): 1,
        **buckets(ok[ANIMATEDIFF]), **buckets(ok[SVD]), **buckets(ok[WAN]),
    }
    exported = exported_once_equal(str(out), expected)
    # every series of these names, so that an extra one (a restart of tiny-svd, a status never seen) fails it
    names = {name for name, *_ in expected}
    assert {key: value for key, value in exported.items() if key[0] in names} == expected


def buckets(records: list[dict]) -> dict:
    """The seconds histogram's buckets of these records (of one model), as the export names them: how many took
    at most `le` seconds. (Ray sends the buckets and the agent rebuilds the histogram from their midpoints, so the
    counts are exact and the exported sum is not.)"""
    model = records[0]["model"]
    return {("ray_render_row_seconds_bucket", model, "+Inf" if le == math.inf else str(float(le))):
            sum(r["seconds"] <= le for r in records) for le in (*SECONDS_BUCKETS, math.inf)}


def exported_once_equal(out: str, expected: dict) -> dict:
    """The run's series at the metrics export once they equal `expected`, or as they are at the deadline."""
    deadline = time.monotonic() + EXPORT_DEADLINE_S
    while True:
        exported = run_series(scrape(), out)
        if all(exported.get(key) == value for key, value in expected.items()) or time.monotonic() > deadline:
            return exported
        time.sleep(0.5)


def scrape() -> str:
    import ray

    port = next(node["MetricsExportPort"] for node in ray.nodes() if node["Alive"])
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        return response.read().decode()


def run_series(text: str, out: str) -> dict:
    """{(name, model[, status or kind][, le]): value} of the series tagged with this run's `out`."""
    series = {}
    for line in text.splitlines():
        match = SERIES.match(line)
        if not match:
            continue
        name, labels, value = match.groups()
        labels = dict(LABEL.findall(labels))
        if labels.get("out") == out:
            key = (name, *(labels[k] for k in OURS if k in labels))
            series[key] = float(value)
    return series
