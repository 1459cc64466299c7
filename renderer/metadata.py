"""The metadata table: one record per input id, rewritten atomically, and what resume trusts."""
from __future__ import annotations

import functools
import json
import sys
import time
from collections import Counter
from pathlib import Path

from . import fault_hook, storage
from .errors import ConfigError, WriteFailed
from .paths import METADATA_FILE, VIDEOS_DIR
from .request import RenderRequest

# the next flush waits at least 20 times as long as the last write took
WRITE_SHARE_INVERSE = 20

# name -> pyarrow type name ("list<T>": a list of T)
FIELDS = {
    "id": "string", "status": "string", "error": "string", "video_path": "string", "model": "string",
    # as the table gave it, byte for byte
    "prompt": "string",
    "family": "string", "seed": "int64", "num_frames": "int64", "fps": "int64", "width": "int64",
    "height": "int64", "chunks": "int64", "attempts": "int64", "seconds": "float64", "gpu": "string", "actor": "string",
    # devices that rendered the video together, and how (a gang's context parallelism: "ulysses", "ring", ...)
    "gpus": "int64", "parallel": "string",
    "params": "string", "fingerprint": "string",
    # what the render needed to succeed: an out-of-memory ladder, a float32 VAE
    "recoveries": "list<string>",
    # the text encoder saw only the prompt's first tokens (CLIP: 77)
    "prompt_truncated": "bool_",
    # when the row's record was made, in seconds since the Unix epoch
    "finished_at": "float64",
    # long rows (null for a row rendered in one call)
    "chunk_mode": "string", "chunk_plan": "string", "chunk_actors": "list<string>",
    "seams": "list<float64>", "drift": "list<float64>",
    # what the encode committed (ok rows): each file's size in bytes and sha256, which resume and `render verify`
    # compare with the file found (null in records of runs from before them, and for a row without a poster)
    "video_bytes": "int64", "video_sha256": "string", "poster_bytes": "int64", "poster_sha256": "string",
}
# why an ok record of the previous run was rendered again (MetadataStore.rerendered): its video is gone, or is not
# the file that was committed
VIDEO_MISSING = "missing"
VIDEO_SIZE_DIFFERS = "size differs"


def request_record(request: RenderRequest, status: str, error: str | None, attempts: int, info: dict) -> dict:
    chunked = len(request.plan) > 1
    return {
        "id": request.id, "status": status, "error": error,
        "video_path": request.video_path if status == "ok" else None,
        "model": request.model, "prompt": request.prompt, "family": request.family, "seed": request.seed,
        "num_frames": request.num_frames, "fps": request.fps, "width": request.width, "height": request.height,
        "chunks": len(request.plan), "attempts": attempts, "seconds": info.get("seconds"), "gpu": info.get("gpu"),
        "actor": info.get("actor"), "gpus": info.get("gpus"), "parallel": info.get("parallel"),
        "params": json.dumps(request.params, sort_keys=True), "fingerprint": request.fingerprint,
        "recoveries": info.get("recoveries") or None, "prompt_truncated": info.get("prompt_truncated"),
        "finished_at": time.time(),
        "chunk_mode": request.chunk_mode,
        "chunk_plan": json.dumps([[c.start, c.end] for c in request.plan]) if chunked else None,
        "chunk_actors": info.get("chunk_actors"), "seams": info.get("seams"), "drift": info.get("drift"),
        "video_bytes": info.get("video_bytes"), "video_sha256": info.get("video_sha256"),
        "poster_bytes": info.get("poster_bytes"), "poster_sha256": info.get("poster_sha256"),
    }


def _arrow_type(kind: str):
    import pyarrow as pa

    if kind.startswith("list<"):
        return pa.list_(_arrow_type(kind[5:-1]))
    return getattr(pa, kind)()


def rejected_record(row: dict, error: str) -> dict:
    model, prompt = row.get("model"), row.get("prompt")
    return {"id": row["id"], "status": "rejected", "error": error, "attempts": 0,
            "model": model if isinstance(model, str) else None, "prompt": prompt if isinstance(prompt, str) else None}


def read_records(out):
    """The records of the run in `out`; ConfigError naming the path when there are none or they are unreadable."""
    path = storage.join(out, METADATA_FILE)
    try:
        if storage.kind(path) != "file":
            raise ConfigError(f"{path}: no {METADATA_FILE} there; is {out} the --out of a `render run`?")
        return storage.read_parquet(path)
    except (OSError, ValueError) as exc:
        # a damaged file, an unreachable store (pyarrow's errors are OSError or ValueError)
        raise ConfigError(f"{path}: cannot read the run's records ({exc})") from None


class MetadataStore:
    """The run's records, one per input id, and `metadata.parquet`, replaced atomically every few seconds.

    Records are kept as Arrow tables, not one dict per record, and a flush converts only the records added
    since the last one (bench/table_scale.py). Writing a big table still takes a while (0.6 s for a million
    rows), so flushes are spaced to keep them to a twentieth of the driver's time."""

    def __init__(self, out_dir: str | Path, resume: bool = True, flush_every: float = 5.0):
        self.path = storage.join(out_dir, METADATA_FILE)
        self.out_dir = out_dir
        self.flush_every = flush_every
        self._interval = flush_every
        self._previous = self._read_previous() if resume else _empty()
        self._previous_rows = {row_id: i for i, row_id in enumerate(self._previous.column("id").to_pylist())}
        # the video files in place (relative path -> size in bytes), listed on first need
        self._videos: dict[str, int] | None = None
        # previous ok records rendered again, by reason (VIDEO_MISSING, VIDEO_SIZE_DIFFERS)
        self.rerendered: Counter = Counter()
        # the records converted so far
        self._table = _empty()
        # records added since the last conversion
        self._pending: list[dict] = []
        # rows of the previous table kept since the last conversion
        self._carried: list[int] = []
        self._last_flush = time.monotonic()

    def carry(self, request: RenderRequest) -> bool:
        """Keep the previous run's record if this exact request is already rendered and its video is in place,
        the size on record (records from before sizes: any size). Otherwise the row renders again, and a video
        missing or of another size is counted in `rerendered`."""
        row = self._previous_rows.get(request.id)
        if row is None:
            return False
        status, fingerprint, video_path, recorded = (self._previous.column(name)[row].as_py()
                                                     for name in ("status", "fingerprint", "video_path", "video_bytes"))
        if status != "ok" or fingerprint != request.fingerprint or video_path is None:
            return False
        if self._videos is None:
            sizes = storage.file_sizes(storage.join(self.out_dir, VIDEOS_DIR))
            self._videos = {f"{VIDEOS_DIR}/{name}": size for name, size in sizes.items()}
        size = self._videos.get(video_path)
        if size is None or (recorded is not None and size != recorded):
            self.rerendered[VIDEO_MISSING if size is None else VIDEO_SIZE_DIFFERS] += 1
            return False
        self._carried.append(row)
        return True

    def add(self, record: dict) -> None:
        self._pending.append(record)
        if time.monotonic() - self._last_flush >= self._interval:
            try:
                self.flush()
            except WriteFailed as exc:
                # the run goes on: the records are kept and written by a later flush
                print(f"warning: {exc}; the previous {METADATA_FILE} stays until a later write succeeds",
                      file=sys.stderr)

    def flush(self, order: list[str] | None = None):
        """Replace the file atomically, its rows in `order` (ids) when given; on failure (WriteFailed) the previous
        one stays intact and readable. Returns the table written."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = self._converted()
        if order is not None:
            position = {row_id: i for i, row_id in enumerate(table.column("id").to_pylist())}
            table = table.take(pa.array([position[row_id] for row_id in order if row_id in position], pa.int64()))
        start = time.monotonic()
        try:
            with storage.writing(self.path) as temp:
                pq.write_table(table, temp)
                fault_hook.strike("metadata", METADATA_FILE)
        finally:
            # a failing write is not retried at every record either
            self._last_flush = time.monotonic()
            self._interval = max(self.flush_every, WRITE_SHARE_INVERSE * (self._last_flush - start))
        return table

    def _converted(self):
        """Every record so far as one table, converting only what was added since the last call."""
        import pyarrow as pa

        parts = [self._table]
        if self._carried:
            parts.append(self._previous.take(self._carried))
        if self._pending:
            parts.append(pa.Table.from_pylist([{name: r.get(name) for name in FIELDS} for r in self._pending],
                                              schema=schema()))
        self._table = pa.concat_tables(parts)
        self._carried, self._pending = [], []
        return self._table

    def _read_previous(self):
        if storage.kind(self.path) is None:
            return _empty()
        try:
            return _conformed(storage.read_parquet(self.path))
        except Exception as exc:
            print(f"warning: ignoring unreadable {self.path} ({exc}); every row renders again", file=sys.stderr)
            return _empty()


@functools.cache
def schema():
    import pyarrow as pa

    return pa.schema([(name, _arrow_type(kind)) for name, kind in FIELDS.items()])


def _empty():
    return schema().empty_table()


def _conformed(table):
    """A previous run's table in this version's schema: columns it lacks are null, columns it has extra are
    dropped. Raises when a column cannot be cast (not a table this tool wrote)."""
    import pyarrow as pa

    columns = [table.column(f.name).cast(f.type) if f.name in table.column_names else pa.nulls(len(table), f.type)
               for f in schema()]
    return pa.Table.from_arrays(columns, schema=schema())
