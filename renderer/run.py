"""A whole run: tables -> requests -> actor pools -> mp4 files and metadata.parquet.

Ray must already be connected (the CLI does it through `cluster`); without a connection an embedded
local Ray is started.
"""
from __future__ import annotations

import functools
import os
import sys
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from . import storage
from .catalog import resolve_model
from .dispatch import OK, Dispatcher, Outcome, WriteBreaker
from .errors import ConfigError, RowRejected
from .metadata import MetadataStore, rejected_record, request_record
from .metrics import RunMetrics
from .options import LoadOptions
from .paths import clean_temp_files, output_lock, refuse_linked_videos_dir
from .progress import Progress
from .request import MAX_FRAMES, RenderRequest, to_request
from .tables import read_tables

DEVICES = ("auto", "cpu", "cuda")
# how a gang shares a video (see gang.py)
PARALLEL_MODES = ("ulysses", "ring", "ulysses_anything")
# diffusers attention backends a CPU runs: PyTorch's own scaled_dot_product_attention
CPU_ATTENTION = ("native", "_native_math")


@dataclass(frozen=True, kw_only=True)
class RunConfig:
    # local paths or object URIs (s3://, gs://)
    tables: tuple[str, ...]
    # a local folder or an object-store prefix; kept as a str
    out: str | Path
    # for rows without a `model`
    model: str | None = None
    # per model; default one per GPU (one on a CPU-only cluster)
    actors: int | None = None
    gpus_per_actor: float = 1.0
    # CPU actors: torch threads each; default the node's CPUs shared among the actors. Pin it to compare runs
    # of different actor counts exactly: the thread count changes the order of float sums
    threads_per_actor: int | None = None
    device: str = "auto"
    seed: int = 0
    max_attempts: int = 3
    resume: bool = True
    ignore_extra: bool = False
    # a row asking for more is rejected
    max_frames: int = MAX_FRAMES
    # seconds a task (a row, or a chunk or stitch of a long one) may execute
    row_timeout: float | None = None
    # devices that render one video together (a gang), for models whose family can (Family.context_parallel);
    # others keep one device per video
    gpus_per_video: int = 1
    # how a gang shares a video: "ulysses", "ring" (CUDA) or "ulysses_anything" (see gang.py)
    context_parallel: str = "ulysses"
    # seconds a gang member waits in a collective for the others before the gang breaks and forms again
    collective_timeout: float = 300.0
    # how every actor loads its model
    load: LoadOptions = field(default_factory=LoadOptions)

    def __post_init__(self):
        object.__setattr__(self, "out", os.fspath(self.out))
        object.__setattr__(self, "tables", tuple(self.tables))
        if not self.tables:
            raise ValueError("at least one table is required")
        if self.actors is not None and self.actors < 1:
            raise ValueError(f"actors={self.actors}: must be >= 1")
        if self.gpus_per_actor <= 0:
            raise ValueError(f"gpus_per_actor={self.gpus_per_actor}: must be > 0")
        if self.gpus_per_video < 1:
            raise ValueError(f"gpus_per_video={self.gpus_per_video}: must be >= 1")
        if self.context_parallel not in PARALLEL_MODES:
            raise ValueError(f"context_parallel={self.context_parallel!r}: must be one of {', '.join(PARALLEL_MODES)}")
        if self.collective_timeout <= 0:
            raise ValueError(f"collective_timeout={self.collective_timeout}: must be > 0")
        if self.threads_per_actor is not None and self.threads_per_actor < 1:
            raise ValueError(f"threads_per_actor={self.threads_per_actor}: must be >= 1")
        if self.device not in DEVICES:
            raise ValueError(f"device={self.device!r}: must be one of {', '.join(DEVICES)}")
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts={self.max_attempts}: must be >= 1")
        if self.max_frames < 1:
            raise ValueError(f"max_frames={self.max_frames}: must be >= 1")
        if self.row_timeout is not None and self.row_timeout <= 0:
            raise ValueError(f"row_timeout={self.row_timeout}: must be > 0")


@dataclass
class CheckedRows:
    # every input id, in input order
    ids: list[str]
    requests: list[RenderRequest]
    # records
    rejected: list[dict]


@dataclass
class RunSummary:
    counts: Counter = field(default_factory=Counter)
    # (id, error), first few
    errors: list[tuple[str, str]] = field(default_factory=list)
    # already rendered by an earlier run
    skipped: int = 0
    # rendered by an earlier run, rendered again because its video was missing or not the file committed
    # (metadata.VIDEO_MISSING, VIDEO_SIZE_DIFFERS -> rows)
    rerendered: Counter = field(default_factory=Counter)
    # why the run stopped taking new work, if it did
    stopped: str | None = None
    # the gallery's page, unless it could not be written
    gallery: str | None = None

    @property
    def exit_code(self) -> int:
        return 0 if set(self.counts) <= {"ok"} else 1


def check_rows(tables, model: str | None, seed: int = 0, ignore_extra: bool = False,
               max_frames: int = MAX_FRAMES) -> CheckedRows:
    """Table checks (raise TableError) and row checks (become rejected records); no Ray, no torch."""
    rows = CheckedRows([], [], [])
    # (column, file) pairs that passed: each read once, however many rows
    checked: set[tuple[str, str]] = set()
    for item in read_tables(tables, ignore_extra):
        rows.ids.append(item.row["id"])
        try:
            rows.requests.append(to_request(item.row, default_model=model, base_seed=seed, table_dir=item.table_dir,
                                            max_frames=max_frames, checked=checked))
        except RowRejected as exc:
            rows.rejected.append(rejected_record(item.row, str(exc)))
    return rows


def run(config: RunConfig, checked: CheckedRows | None = None, connect: Callable[[], None] | None = None,
        actor_class=None) -> RunSummary:
    """Render what `checked` (checked from `config` when not given) still needs; `connect` joins Ray lazily,
    so a run with nothing left to render never starts it. `actor_class` replaces ray_replica.RenderActor (a
    stand-in with its interface, for benchmarks of the orchestration alone)."""
    checked = checked or check_rows(config.tables, config.model, config.seed, config.ignore_extra, config.max_frames)
    try:
        storage.make_dirs(config.out)
    except OSError as exc:
        # a regular file on the way, a read-only or virtual filesystem: a usage error, before Ray starts
        raise ConfigError(f"{config.out}: cannot create the output folder ({exc})") from None
    # before cleaning: temporary files may be another live run's
    with output_lock(config.out):
        # before cleaning too: never delete through a planted link
        refuse_linked_videos_dir(config.out)
        clean_temp_files(config.out)
        try:
            return _run_locked(config, checked, connect, actor_class)
        finally:
            # a worker killed mid-write leaves its temporary file behind; this run's workers are done
            clean_temp_files(config.out)


def _run_locked(config: RunConfig, checked: CheckedRows, connect, actor_class) -> RunSummary:
    import pyarrow.compute as pc

    store = MetadataStore(config.out, resume=config.resume)
    summary = RunSummary()
    breaker = WriteBreaker()
    for record in checked.rejected:
        store.add(record)
    todo = [request for request in checked.requests if not store.carry(request)]
    summary.skipped = len(checked.requests) - len(todo)
    summary.rerendered = store.rerendered
    try:
        _render(todo, config, store, connect, breaker, actor_class, checked.rejected)
    finally:
        # also on Ctrl-C or a driver error: what finished is recorded, the rest resumes next time
        # raises WriteFailed when it cannot: the previous file stays intact
        table = store.flush(order=checked.ids)
    summary.gallery = _write_gallery(config.out, table)
    summary.stopped = breaker.reason
    summary.counts.update(table.column("status").to_pylist())
    failed = table.filter(pc.not_equal(table.column("status"), "ok")).slice(0, 5)
    summary.errors = list(zip(failed.column("id").to_pylist(), failed.column("error").to_pylist(), strict=True))
    return summary


def _write_gallery(out, table) -> str | None:
    """The run's gallery (index.html), its location; a failure to write it is a warning: the videos and records
    stand."""
    from . import gallery

    try:
        return gallery.write(out, table)
    # whatever went wrong (a full disk, a folder in the way, a bug in the page's writer), the run's work is done
    except Exception as exc:
        print(f"warning: the gallery could not be written ({type(exc).__name__}: {exc}); `render preview {out}` "
              "writes it again", file=sys.stderr, flush=True)
        return None


def _render(requests: list[RenderRequest], config: RunConfig, store: MetadataStore, connect,
            breaker: WriteBreaker, actor_class, rejected: list[dict]) -> None:
    import ray

    from .pool import ModelLoadError

    if not requests:
        return
    if not ray.is_initialized():
        (connect or ray.init)()
    device, actors, threads = _placement(config)
    long_rows = [request for request in requests if len(request.plan) > 1]
    progress = Progress(len(requests), chunks=sum(len(request.plan) for request in long_rows))
    # `rejected` counted here, once Ray is connected: a run with nothing to render exports nothing
    run_metrics = RunMetrics(config.out, requests, rejected, config.model)

    def done(request, outcome: Outcome, attempts: int) -> None:
        status = "ok" if outcome.status == OK else "rejected" if outcome.status == "rejected" else "failed"
        record = request_record(request, status, outcome.error, attempts, outcome.info)
        store.add(record)
        run_metrics.finished(record)
        progress.event("done", ok=status == "ok")

    def event(kind: str, request: RenderRequest) -> None:
        # a row's end comes through `done`, with its status
        if kind == "start":
            run_metrics.started(request)
        if kind != "done":
            progress.event(kind)

    by_model: dict[str, list[RenderRequest]] = {}
    for request in requests:
        by_model.setdefault(request.model, []).append(request)

    def fail_all(group: list[RenderRequest], outcome: Outcome) -> None:
        for request in group:
            # each row starts and fails at once
            event("start", request)
            done(request, outcome, 0)

    try:
        # one model at a time gets every actor slot
        for model, group in by_model.items():
            if breaker.reason:
                fail_all(group, breaker.not_rendered())
                continue
            try:
                pool, size = _start_replicas(model, group, config, device, actors, threads, actor_class)
            except ModelLoadError as exc:
                fail_all(group, Outcome("error", str(exc)))
                continue
            pool.on_restart = functools.partial(run_metrics.restarted, model, "gang" if size > 1 else "actor")
            try:
                Dispatcher(pool, config.max_attempts, done, event, breaker).run(group)
            finally:
                pool.shutdown()
            if breaker.reason:
                print(f"\nstopping: {breaker.reason}; the rows left are recorded `failed` (not rendered) and render "
                      "when the same command runs again", file=sys.stderr, flush=True)
    finally:
        run_metrics.close()
    progress.close()


def _start_replicas(model: str, group: list[RenderRequest], config: RunConfig, device: str, actors: int, threads: int,
                    actor_class):
    """The pool of `model`'s replicas for `group` (actors, or gangs where its family can share a video) and the
    devices per video; raises ModelLoadError when the model cannot load."""
    from .ray_gang import start_gangs
    from .ray_replica import RenderActor, start_pool

    # a long row's chunks can use several actors
    tasks = sum(len(request.plan) for request in group)
    size = gang_size(config, model)
    if size < config.gpus_per_video:
        print(f"{model}: family {resolve_model(model).family.name!r} has no context-parallel plan; one device per "
              "video", file=sys.stderr, flush=True)
    if size == 1:
        return start_pool(model, config.out, min(actors, tasks), device, config.gpus_per_actor, threads, config.load,
                          actor_class or RenderActor, config.row_timeout), size
    # the actors of one replica are the gang's members
    gangs = config.actors or max(1, actors // size)
    return start_gangs(model, config.out, min(gangs, tasks), size, device, config.gpus_per_actor,
                       config.threads_per_actor or max(1, threads // size), config.load, config.context_parallel,
                       config.collective_timeout, config.row_timeout), size


def gang_size(config: RunConfig, model: str) -> int:
    """Devices per video for a model: --gpus-per-video where its family can share a video, else 1."""
    return config.gpus_per_video if resolve_model(model).family.context_parallel else 1


def _placement(config: RunConfig) -> tuple[str, int, int]:
    """(device, actors per model, CPU threads per actor) from the cluster's resources."""
    import ray

    resources = ray.cluster_resources()
    gpus = resources.get("GPU", 0)
    device = config.device if config.device != "auto" else ("cuda" if gpus else "cpu")
    if device == "cuda" and not gpus:
        raise ConfigError("--device cuda, but the Ray cluster has no GPU")
    if config.load.cpu_offload and device != "cuda":
        raise ConfigError("--cpu-offload needs CUDA: on the CPU every model already lives in host memory")
    if config.context_parallel == "ring" and device != "cuda":
        raise ConfigError("--context-parallel ring needs CUDA: the CPU's attention gives no log-sum-exp")
    if config.load.dtype and device != "cuda":
        raise ConfigError(f"--dtype {config.load.dtype} needs CUDA: the CPU always runs float32")
    backend = config.load.attention_backend
    if backend not in (None, *CPU_ATTENTION) and device != "cuda":
        raise ConfigError(f"--attention {backend} needs CUDA: on the CPU the backends are {', '.join(CPU_ATTENTION)} "
                          "(PyTorch's own scaled_dot_product_attention)")
    default = max(1, int(gpus // config.gpus_per_actor)) if device == "cuda" else 1
    actors = config.actors or default
    # a share of the cluster's CPUs, but never more than one node has: an actor runs on one node
    largest_node = max((node["Resources"].get("CPU", 0) for node in ray.nodes() if node["Alive"]), default=0)
    threads = max(1, min(int(resources.get("CPU", os.cpu_count() or 1)) // actors, int(largest_node)))
    return device, actors, config.threads_per_actor or threads
