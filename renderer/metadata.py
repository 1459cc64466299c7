"""The metadata table: one record per input id, rewritten atomically, and what resume trusts."""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from . import faults, storage
from .errors import WriteFailed
from .paths import METADATA_FILE
from .request import RenderRequest

FIELDS = {  # name -> pyarrow type name ("list<T>": a list of T)
    "id": "string", "status": "string", "error": "string", "video_path": "string", "model": "string",
    "prompt": "string",  # as the table gave it, byte for byte
    "family": "string", "seed": "int64", "num_frames": "int64", "fps": "int64", "width": "int64",
    "height": "int64", "chunks": "int64", "attempts": "int64", "seconds": "float64", "gpu": "string", "actor": "string",
    "params": "string", "fingerprint": "string",
    "recoveries": "list<string>",  # what the render needed to succeed: an out-of-memory ladder, a float32 VAE
    "prompt_truncated": "bool_",  # the text encoder saw only the prompt's first tokens (CLIP: 77)
    "finished_at": "float64",  # when the row's record was made, in seconds since the Unix epoch
    # long rows (null for a row rendered in one call)
    "chunk_mode": "string", "chunk_plan": "string", "chunk_actors": "list<string>",
    "seams": "list<float64>", "drift": "list<float64>",
}


def request_record(request: RenderRequest, status: str, error: str | None, attempts: int, info: dict) -> dict:
    chunked = len(request.plan) > 1
    return {
        "id": request.id, "status": status, "error": error,
        "video_path": request.video_path if status == "ok" else None,
        "model": request.model, "prompt": request.prompt, "family": request.family, "seed": request.seed,
        "num_frames": request.num_frames, "fps": request.fps, "width": request.width, "height": request.height,
        "chunks": len(request.plan), "attempts": attempts, "seconds": info.get("seconds"), "gpu": info.get("gpu"), "actor": info.get("actor"),
        "params": json.dumps(request.params, sort_keys=True), "fingerprint": request.fingerprint(),
        "recoveries": info.get("recoveries") or None, "prompt_truncated": info.get("prompt_truncated"),
        "finished_at": time.time(),
        "chunk_mode": request.chunk_mode,
        "chunk_plan": json.dumps([[c.start, c.end] for c in request.plan]) if chunked else None,
        "chunk_actors": info.get("chunk_actors"), "seams": info.get("seams"), "drift": info.get("drift"),
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


class MetadataStore:
    """Holds the records of a run and writes `metadata.parquet` atomically, at most every few seconds."""

    def __init__(self, out_dir: str | Path, resume: bool = True, flush_every: float = 5.0):
        self.path = storage.join(out_dir, METADATA_FILE)
        self.out_dir = out_dir
        self.flush_every = flush_every
        self.records: dict[str, dict] = {}
        self.previous = self._read_previous() if resume else {}
        self._last_flush = time.monotonic()

    def committed(self, request: RenderRequest) -> dict | None:
        """The previous run's record if this exact request is already rendered and its video is in place."""
        prev = self.previous.get(request.id)
        if prev and prev["status"] == "ok" and prev.get("fingerprint") == request.fingerprint() \
                and storage.is_file(storage.join(self.out_dir, prev["video_path"])):
            return prev
        return None

    def add(self, record: dict) -> None:
        self.records[record["id"]] = record
        if time.monotonic() - self._last_flush >= self.flush_every:
            try:
                self.flush()
            except WriteFailed as exc:  # the run goes on: the records are kept and written by a later flush
                print(f"warning: {exc}; the previous {METADATA_FILE} stays until a later write succeeds",
                      file=sys.stderr)

    def flush(self, order: list[str] | None = None) -> None:
        """Replace the file atomically; on failure (WriteFailed) the previous one stays intact and readable."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        ids = order if order is not None else list(self.records)
        rows = [{name: self.records[i].get(name) for name in FIELDS} for i in ids if i in self.records]
        schema = pa.schema([(name, _arrow_type(kind)) for name, kind in FIELDS.items()])
        self._last_flush = time.monotonic()  # a failing write is not retried at every record either
        with storage.writing(self.path) as temp:
            pq.write_table(pa.Table.from_pylist(rows, schema=schema), temp)
            faults.at_write("metadata", METADATA_FILE, 1.0)

    def _read_previous(self) -> dict[str, dict]:
        if storage.kind(self.path) is None:
            return {}
        try:
            return {r["id"]: r for r in storage.read_parquet(self.path).to_pylist()}
        except Exception as exc:
            print(f"warning: ignoring unreadable {self.path} ({exc}); every row renders again", file=sys.stderr)
            return {}
