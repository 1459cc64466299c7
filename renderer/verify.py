"""`render verify`: whether the files of a run are the ones its records say were committed.

Every `ok` record names its video (and its poster) with the size and checksum the encode committed. The quick
check lists `videos/` once (sizes included: no request per file) and compares; `deep` also reads every file back,
compares its checksum, and decodes each video whole, expecting the recorded frame count, size and fps. Files in
`videos/` that no record names are reported too. `repair` turns the bad rows' records into `failed` ones, so the
next `render run` renders them again; it never deletes a file.
"""
from __future__ import annotations

import io
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from . import storage
from .metadata import read_records
from .paths import METADATA_FILE, VIDEOS_DIR, output_lock, poster_relpath, video_relpath
from .video import decode

# what can be wrong with a file
MISSING = "missing"
TRUNCATED = "truncated"
CORRUPT = "corrupt"
NO_RECORD = "no record"
# files read back and decoded at once by a deep check: the work is mostly waiting for a disk or an object store,
# and PyAV's decoding releases the GIL
DEEP_WORKERS = 8


@dataclass(frozen=True)
class Problem:
    """One file that is not what its record says: `row_id` None for a file with no record."""
    row_id: str | None
    file: str
    kind: str
    detail: str


@dataclass(frozen=True)
class Expected:
    """A committed file as its record describes it; frames, width, height and fps for a video (None: a poster)."""
    row_id: str
    file: str
    size: int | None
    checksum: str | None
    frames: int | None = None
    width: int | None = None
    height: int | None = None
    fps: int | None = None


@dataclass
class Report:
    # files checked, records' and unrecorded ones
    checked: int = 0
    problems: list[Problem] = field(default_factory=list)
    # records turned `failed` by repair
    repaired: int = 0


def verify(out, deep: bool = False, repair: bool = False, workers: int = DEEP_WORKERS) -> Report:
    """Check the run in `out` (a folder or an object-store prefix); with `repair`, under the output lock, record
    the rows with a bad file as failed. Raises ConfigError when `out` holds no readable records."""
    if not repair:
        return check(out, read_records(out), deep, workers)
    # a writer of OUT like a run: never beside one, and the records read inside the lock are the latest
    with output_lock(out):
        table = read_records(out)
        report = check(out, table, deep, workers)
        report.repaired = _mark_failed(out, table, report.problems)
    return report


def check(out, table, deep: bool, workers: int) -> Report:
    """The problems of `table`'s files in `out`: presence and size from one listing; checksum and decode when `deep`."""
    sizes = {f"{VIDEOS_DIR}/{name}": size for name, size in storage.file_sizes(storage.join(out, VIDEOS_DIR)).items()}
    expected = _expected(table)
    listed = [(item, _listed_problem(item, sizes.get(item.file))) for item in expected]
    problems = [problem for _, problem in listed if problem]
    if deep:
        listed_fine = [item for item, problem in listed if problem is None]
        with ThreadPoolExecutor(workers) as pool:
            problems += [problem for problem in pool.map(lambda item: _read_problem(out, item), listed_fine) if problem]
    recorded = _recorded_files(table)
    # temporary files are an unfinished (or interrupted) write's, removed by the next run
    orphans = sorted(path for path in sizes if path not in recorded and not _is_temporary(path))
    problems += [Problem(None, path, NO_RECORD, "no record names this file") for path in orphans]
    return Report(checked=len(expected) + len(orphans), problems=problems)


def _expected(table) -> list[Expected]:
    """The files of the `ok` records: each video, and its poster where the record has the poster's size."""
    rows = table.select([name for name in ("id", "status", "video_path", "num_frames", "width", "height", "fps",
                                           "video_bytes", "video_sha256", "poster_bytes", "poster_sha256")
                         if name in table.column_names]).to_pylist()
    expected = []
    for row in rows:
        if row["status"] != "ok" or not row.get("video_path"):
            continue
        expected.append(Expected(row["id"], row["video_path"], row.get("video_bytes"), row.get("video_sha256"),
                                 row["num_frames"], row["width"], row["height"], row["fps"]))
        if row.get("poster_bytes") is not None:
            expected.append(Expected(row["id"], poster_relpath(row["video_path"]), row["poster_bytes"],
                                     row.get("poster_sha256")))
    return expected


def _recorded_files(table) -> set[str]:
    """The files some record names: each row's video path (whatever its status: a failed row's file is its own,
    to be replaced by the next run), the video path its id gives, and their posters."""
    columns = table.column_names
    paths = {video_relpath(row_id) for row_id in table.column("id").to_pylist()}
    if "video_path" in columns:
        paths |= {path for path in table.column("video_path").to_pylist() if path}
    return paths | {poster_relpath(path) for path in paths}


def _listed_problem(item: Expected, size: int | None) -> Problem | None:
    """What the listing shows: the file absent, or of another size than recorded (records without a size: any)."""
    if size is None:
        return Problem(item.row_id, item.file, MISSING, "no such file")
    if item.size is not None and size != item.size:
        return Problem(item.row_id, item.file, TRUNCATED, f"{size} bytes, {item.size} on record")
    return None


def _read_problem(out, item: Expected) -> Problem | None:
    """What reading the file back shows: another checksum, or (a video) a decode that fails or disagrees with the
    record. The file is fetched once, for both."""
    import av

    try:
        data = storage.read_bytes(storage.join(out, item.file))
    except OSError as exc:
        return Problem(item.row_id, item.file, MISSING, f"cannot be read ({exc})")
    if item.checksum is not None and storage.digest_of(data).checksum != item.checksum:
        return Problem(item.row_id, item.file, CORRUPT, f"{storage.CHECKSUM} differs from the record")
    if item.frames is None:
        return None
    try:
        frames, fps = decode(io.BytesIO(data))
    except (ValueError, av.FFmpegError) as exc:
        return Problem(item.row_id, item.file, CORRUPT, f"does not decode ({exc})")
    found = (len(frames), *(frames[0].shape[1::-1] if frames else (0, 0)), round(fps))
    wanted = (item.frames, item.width, item.height, item.fps)
    if found != wanted:
        return Problem(item.row_id, item.file, CORRUPT, f"decodes to {_video(*found)}, {_video(*wanted)} on record")
    return None


def _video(frames: int, width: int, height: int, fps: int) -> str:
    return f"{frames} frames {width}x{height} at {fps} fps"


def _is_temporary(path: str) -> bool:
    return path.rsplit("/", 1)[-1].startswith(storage.TEMP_MARK)


def _mark_failed(out, table, problems: list[Problem]) -> int:
    """Rewrite `out`'s records (atomically) with each row that has a problem `failed`, its error naming the file
    and the problem, and no video path: the next run renders it again. Returns the rows changed."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    errors = {}
    for problem in problems:
        if problem.row_id is not None and problem.row_id not in errors:
            errors[problem.row_id] = (f"verify_{problem.kind.replace(' ', '_')}: {problem.file}: {problem.detail}; "
                                      "the next run renders it again")
    if not errors:
        return 0
    ids = table.column("id").to_pylist()
    replacements = {"status": lambda row_id: "failed", "error": errors.get, "video_path": lambda row_id: None}
    for name, replacement in replacements.items():
        index = table.column_names.index(name)
        values = [replacement(row_id) if row_id in errors else value
                  for row_id, value in zip(ids, table.column(index).to_pylist(), strict=True)]
        table = table.set_column(index, table.field(index), pa.array(values, table.field(index).type))
    with storage.writing(storage.join(out, METADATA_FILE)) as temp:
        pq.write_table(table, temp)
    return len(errors)
