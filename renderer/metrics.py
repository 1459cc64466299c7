"""A run's Ray metrics (ray.util.metrics), for the Ray Dashboard's Prometheus and Grafana.

The driver records them and sends them to its node's metrics agent every `metrics_report_interval_ms` (Ray's
default 10 s) and once more as it exits; the agent serves them at `http://NODE:<MetricsExportPort>/metrics` under
Ray's prefix `ray_` (a counter with the suffix `_total`): `ray_render_rows_total`, `ray_render_frames_total`,
`ray_render_row_seconds`, `ray_render_rows_in_flight`, `ray_render_rows_waiting`, `ray_render_restarts_total`.
Every series is tagged with the run's output (`out`), so the runs sharing a cluster stay apart, and the row's
`model`. Counters stay at the agent after the driver exits; a gauge goes two export intervals after it was last
recorded, so the run records its gauges again every second while it lasts.
"""
from __future__ import annotations

import threading
from collections import Counter
from functools import cache
from types import SimpleNamespace

# a row's render seconds: from a tiny preset on a CPU to a long video of a 14B model on one GPU
SECONDS_BUCKETS = [0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200]
RUN_TAGS = ("out", "model")
# Ray's export interval is 1 s at the least, and a gauge lasts two of them
GAUGE_REFRESH_S = 1.0


@cache
def _instruments() -> SimpleNamespace:
    """Made once per process, on first use: by then the driver is connected to Ray. They keep working across a
    ray.shutdown() and a new ray.init() in the same process."""
    from ray.util import metrics

    return SimpleNamespace(
        rows=metrics.Counter("render_rows", "Rows finished, by status: ok, failed, rejected",
                             RUN_TAGS + ("status",)),
        frames=metrics.Counter("render_frames", "Frames of the rows rendered ok (rate() is frames per second)",
                               RUN_TAGS),
        seconds=metrics.Histogram("render_row_seconds", "Seconds a row rendered ok took (its record's `seconds`)",
                                  SECONDS_BUCKETS, RUN_TAGS),
        in_flight=metrics.Gauge("render_rows_in_flight", "Rows started and not yet finished", RUN_TAGS),
        waiting=metrics.Gauge("render_rows_waiting", "Rows not yet started", RUN_TAGS),
        restarts=metrics.Counter("render_restarts", "Replicas restarted after a death, a kill or a timeout, by kind: "
                                 "actor, gang", RUN_TAGS + ("kind",)),
    )


class RunMetrics:
    """The metrics of one run over `requests` (the rows it renders), after `rejected` (the records of the rows
    rejected before it started; `default_model` names the model of those without a `model`)."""

    def __init__(self, out: str, requests: list, rejected: list[dict], default_model: str | None):
        self.out = out
        self.default_model = default_model
        self.instruments = _instruments()
        self.waiting = Counter(request.model for request in requests)
        self.in_flight = Counter(dict.fromkeys(self.waiting, 0))
        # gauges are read and recorded under it: a value the refresher read is never recorded after a newer one
        self.lock = threading.Lock()
        for record in rejected:
            self._count(record)
        self.stopped = threading.Event()
        self.refresher = threading.Thread(target=self._refresh, name="render-metrics", daemon=True)
        self.refresher.start()

    def started(self, request) -> None:
        self.waiting[request.model] -= 1
        self.in_flight[request.model] += 1
        self._set_gauges(request.model)

    def finished(self, record: dict) -> None:
        """A row's final record (see metadata.request_record)."""
        self.in_flight[record["model"]] -= 1
        self._set_gauges(record["model"])
        self._count(record)

    def close(self) -> None:
        """The run is over: its gauges are no longer recorded, and leave the export two intervals later."""
        self.stopped.set()
        self.refresher.join()

    def restarted(self, model: str, kind: str) -> None:
        """One restart of a replica of `model`; `kind`: "actor" or "gang"."""
        self.instruments.restarts.inc(1, {**self._tags(model), "kind": kind})

    def _count(self, record: dict) -> None:
        tags = self._tags(record["model"] or self.default_model or "")
        self.instruments.rows.inc(1, {**tags, "status": record["status"]})
        if record["status"] == "ok":
            self.instruments.frames.inc(record["num_frames"], tags)
            self.instruments.seconds.observe(record["seconds"], tags)

    def _refresh(self) -> None:
        while True:
            for model in self.waiting:
                self._set_gauges(model)
            if self.stopped.wait(GAUGE_REFRESH_S):
                return

    def _set_gauges(self, model: str) -> None:
        tags = self._tags(model)
        with self.lock:
            self.instruments.waiting.set(self.waiting[model], tags)
            self.instruments.in_flight.set(self.in_flight[model], tags)

    def _tags(self, model: str) -> dict:
        return {"out": self.out, "model": model}
