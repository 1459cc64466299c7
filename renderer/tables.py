"""Reading input tables and the table-level checks (pyarrow only, before Ray starts)."""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from . import storage
from .errors import TableError
from .request import COLUMNS


@dataclass(frozen=True)
class TableRow:
    row: dict
    table_dir: str  # relative image paths resolve against the table's own location (folder or prefix)
    source: str


def read_tables(paths, ignore_extra: bool = False) -> list[TableRow]:
    """Rows of every table (local paths or object URIs), after the table-level checks."""
    rows: list[TableRow] = []
    for path in map(str, paths):
        table = _read(path)
        _check_columns(path, table.column_names, ignore_extra)
        ids = table.column("id").to_pylist()
        for index, row_id in enumerate(ids):
            if not isinstance(row_id, str) or not row_id:
                raise TableError(f"{path}: column 'id' row {index}: {row_id!r} is not a non-empty string")
        keep = [c for c in table.column_names if c in COLUMNS]
        folder = storage.parent(path)
        rows += [TableRow(row, folder, path) for row in table.select(keep).to_pylist()]
    duplicates = [i for i, n in Counter(r.row["id"] for r in rows).items() if n > 1]
    if duplicates:
        shown = ", ".join(repr(i) for i in duplicates[:5])
        raise TableError(f"column 'id': duplicate ids over all inputs ({len(duplicates)}): {shown}")
    return rows


def _read(path: str):
    try:
        found = storage.kind(path)
    except (OSError, ValueError) as exc:  # no credentials, unreachable store, unknown scheme
        raise TableError(f"{path}: cannot reach ({exc})") from None
    if found is None:
        raise TableError(f"{path}: no such file")
    if found == "dir":
        raise TableError(f"{path}: is a directory; name the Parquet files")
    try:
        return storage.read_parquet(path)
    except Exception as exc:  # ArrowInvalid, OSError: a corrupt, truncated or non-Parquet file
        raise TableError(f"{path}: not a readable Parquet file ({exc})") from None


def _check_columns(path: str, names: list[str], ignore_extra: bool) -> None:
    if "id" not in names:
        raise TableError(f"{path}: no 'id' column (columns: {', '.join(names) or 'none'})")
    unknown = [n for n in names if n not in COLUMNS]
    if unknown and not ignore_extra:
        raise TableError(f"{path}: unknown columns {', '.join(map(repr, unknown))} "
                         f"(known: {', '.join(COLUMNS)}; pass --ignore-extra to skip them)")
