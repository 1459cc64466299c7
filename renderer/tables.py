"""Reading input tables and the table-level checks (pyarrow only, before Ray starts)."""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from . import storage
from .errors import TableError
from .paths import video_relpath
from .request import COLUMNS

# a column may hold a path string in one table and PNG/JPEG bytes in another: both are the contract's forms
MIXED_KINDS = {"image", "last_image"}


@dataclass(frozen=True)
class TableRow:
    row: dict
    # relative image paths resolve against the table's own location (folder or prefix)
    table_dir: str
    source: str


def read_tables(paths, ignore_extra: bool = False) -> list[TableRow]:
    """Rows of every table (local paths or object URIs), after the table-level checks."""
    rows: list[TableRow] = []
    # column -> (kind, type, table) of the first table giving it
    seen: dict[str, tuple[str, object, str]] = {}
    for path in map(str, paths):
        table = _read(path)
        _check_columns(path, table.column_names, ignore_extra)
        _check_kinds(path, table.schema, seen)
        ids = table.column("id").to_pylist()
        for index, row_id in enumerate(ids):
            if not isinstance(row_id, str) or not row_id:
                raise TableError(f"{path}: column 'id' row {index}: {row_id!r} is not a non-empty string")
        keep = [c for c in table.column_names if c in COLUMNS]
        folder = storage.parent(path)
        rows += [TableRow(row, folder, path) for row in table.select(keep).to_pylist()]
    if not rows:
        # most likely the wrong file or an export that went wrong, not a run meant to do nothing
        raise TableError(f"{', '.join(map(str, paths))}: no rows; nothing to render")
    duplicates = [i for i, n in Counter(r.row["id"] for r in rows).items() if n > 1]
    if duplicates:
        shown = ", ".join(repr(i) for i in duplicates[:5])
        raise TableError(f"column 'id': duplicate ids over all inputs ({len(duplicates)}): {shown}")
    _check_video_paths(rows)
    return rows


def _check_kinds(path: str, schema, seen: dict) -> None:
    """Every table gives a column values of one kind: a `num_frames` of strings beside one of integers is a
    broken export, reported once for the table rather than as a rejection per row."""
    for column in schema:
        kind = _kind(column.type)
        if column.name not in COLUMNS or kind is None or column.name in MIXED_KINDS:
            continue
        first = seen.setdefault(column.name, (kind, column.type, path))
        if first[0] != kind:
            raise TableError(f"{path}: column {column.name!r} is {column.type} here but {first[1]} in {first[2]}; "
                             "every table must give a column the same type")


def _kind(arrow_type) -> str | None:
    """What a column's values are to a row: tables may differ in width (int32, int64, double), not in kind;
    an all-null column (type null) fits any."""
    import pyarrow.types as t

    if t.is_null(arrow_type):
        return None
    if t.is_integer(arrow_type) or t.is_floating(arrow_type) or t.is_decimal(arrow_type):
        return "number"
    if t.is_string(arrow_type) or t.is_large_string(arrow_type) or t.is_string_view(arrow_type):
        return "string"
    if t.is_binary(arrow_type) or t.is_large_binary(arrow_type) or t.is_binary_view(arrow_type) \
            or t.is_fixed_size_binary(arrow_type):
        return "binary"
    return str(arrow_type)


def _check_video_paths(rows: list[TableRow]) -> None:
    """Two ids whose video files would be one file, also on a case-insensitive filesystem (same slug up to
    case and the same 8 hex digits of their hashes: rare, but possible over millions of ids)."""
    owners: dict[str, str] = {}
    for item in rows:
        row_id = item.row["id"]
        other = owners.setdefault(video_relpath(row_id).lower(), row_id)
        if other != row_id:
            raise TableError(f"column 'id': ids {other!r} and {row_id!r} map to the same video file "
                             f"{video_relpath(row_id)!r} (compared case-insensitively); rename one")


def _read(path: str):
    try:
        found = storage.kind(path)
    except (OSError, ValueError) as exc:
        # no credentials, unreachable store, unknown scheme
        raise TableError(f"{path}: cannot reach ({exc})") from None
    if found is None:
        raise TableError(f"{path}: no such file")
    if found == "dir":
        raise TableError(f"{path}: is a directory; name the Parquet files")
    try:
        return storage.read_parquet(path)
    except Exception as exc:
        # ArrowInvalid, OSError: a corrupt, truncated or non-Parquet file
        raise TableError(f"{path}: not a readable Parquet file ({exc})") from None


def _check_columns(path: str, names: list[str], ignore_extra: bool) -> None:
    if "id" not in names:
        raise TableError(f"{path}: no 'id' column (columns: {', '.join(names) or 'none'})")
    unknown = [n for n in names if n not in COLUMNS]
    if unknown and not ignore_extra:
        raise TableError(f"{path}: unknown columns {', '.join(map(repr, unknown))} "
                         f"(known: {', '.join(COLUMNS)}; pass --ignore-extra to skip them)")
