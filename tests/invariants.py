"""What every finished run must leave behind, checked after each end-to-end run test."""
from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq

from renderer.storage import TEMP_MARK
from renderer.video import read_mp4


def check_invariants(out: Path, input_ids, exit_code: int) -> dict[str, dict]:
    """Each input id exactly once in the metadata; every `ok` video plays with its recorded frame count, size
    and fps; no video at a final path without an `ok` record naming it; the exit code is 0 exactly when every
    row is ok (1 otherwise); no temporary file left anywhere under `out`. Returns the records by id."""
    rows = pq.read_table(out / "metadata.parquet").to_pylist()
    ids = [row["id"] for row in rows]
    assert sorted(ids) == sorted(input_ids), "metadata must hold each input id exactly once"
    records = {row["id"]: row for row in rows}
    ok = {row_id: r for row_id, r in records.items() if r["status"] == "ok"}
    for row_id, record in ok.items():
        frames, fps = read_mp4(out / record["video_path"])
        assert frames.shape == (record["num_frames"], record["height"], record["width"], 3), row_id
        assert fps == record["fps"], row_id
    videos = {p.relative_to(out).as_posix() for p in out.glob("videos/*.mp4") if p.is_file()}
    assert videos == {r["video_path"] for r in ok.values()}, "a final path holds a video no ok record names"
    assert exit_code == (0 if len(ok) == len(records) else 1), (exit_code, {k: r["status"] for k, r in records.items()})
    assert not [p for p in out.rglob("*") if p.name.startswith(TEMP_MARK)], "a temporary file was left behind"
    return records
