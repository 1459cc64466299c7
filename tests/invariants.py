"""What every finished run must leave behind, checked after each end-to-end run test."""
from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq

from renderer.storage import TEMP_MARK
from renderer.testing.videos import read_mp4


def check_invariants(out: Path, input_ids, exit_code: int) -> dict[str, dict]:
    """Each input id exactly once in the metadata; every `ok` video is an H.264 yuv420p mp4 with its index first
    and plays with its recorded frame count, size and fps; no video at a final path without an `ok` record
    naming it; the exit code is 0 exactly when every row is ok (1 otherwise); no temporary file left anywhere
    under `out`. Returns the records by id."""
    rows = pq.read_table(out / "metadata.parquet").to_pylist()
    ids = [row["id"] for row in rows]
    assert sorted(ids) == sorted(input_ids), "metadata must hold each input id exactly once"
    records = {row["id"]: row for row in rows}
    ok = {row_id: r for row_id, r in records.items() if r["status"] == "ok"}
    for row_id, record in ok.items():
        assert encoding(out / record["video_path"]) == ("isom", "h264", "yuv420p", True), row_id
        frames, fps = read_mp4(out / record["video_path"])
        assert frames.shape == (record["num_frames"], record["height"], record["width"], 3), row_id
        assert fps == record["fps"], row_id
    videos = {p.relative_to(out).as_posix() for p in out.glob("videos/*.mp4") if p.is_file()}
    assert videos == {r["video_path"] for r in ok.values()}, "a final path holds a video no ok record names"
    assert exit_code == (0 if len(ok) == len(records) else 1), (exit_code, {k: r["status"] for k, r in records.items()})
    assert not [p for p in out.rglob("*") if p.name.startswith(TEMP_MARK)], "a temporary file was left behind"
    return records


def encoding(path: Path) -> tuple[str, str, str, bool]:
    """(the file's major brand: "isom" for an mp4, the codec, the pixel format, whether the index comes first)."""
    import av

    data = path.read_bytes()
    with av.open(str(path)) as container:
        context = container.streams.video[0].codec_context
        return data[8:12].decode("latin-1"), context.name, context.pix_fmt, data.find(b"moov") < data.find(b"mdat")
