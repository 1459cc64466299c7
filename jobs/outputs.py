"""The `render` commands that look at a run's output: `preview` (the gallery, or a contact sheet) and `verify`."""
from __future__ import annotations

import sys

import click

from renderer.errors import ConfigError, WriteFailed
from renderer.paths import METADATA_FILE

from .exits import table_error


@click.command()
@click.argument("out", metavar="OUT")
@click.option("--sheet", metavar="PNG", help="Draw a contact sheet into PNG (a path or an object URI) instead: a row "
                                             "of frames per rendered video, for a terminal, a notebook or a pull "
                                             "request.")
@click.option("--frames", type=click.IntRange(min=1), default=8, show_default=True,
              help="--sheet: frames per video, spread evenly from its first to its last.")
@click.option("--limit", type=click.IntRange(min=1), default=32, show_default=True,
              help="--sheet: videos drawn, the first rendered ones in the table's order.")
def preview(out, sheet, frames, limit):
    """Write the gallery of the run in OUT (a folder or an object-store prefix): OUT/index.html, a page that
    opens from the folder itself (no server) and shows every row as a card: its poster, its video on hover,
    its record. Posters missing beside `ok` videos (runs from before posters) are made first.

    \b
    Examples:
      render preview out/
      render preview s3://bucket/runs/e
      render preview out/ --sheet sheet.png --frames 6 --limit 10
    """
    from renderer.metadata import read_records
    from renderer.paths import output_lock

    try:
        table = read_records(out)
        if sheet:
            _write_sheet(out, table, sheet, frames, limit)
            return
        # a writer of OUT like a run: never beside one
        with output_lock(out):
            _write_gallery(out, table)
    except ConfigError as exc:
        table_error(exc)


def _write_sheet(out: str, table, sheet: str, frames: int, limit: int) -> None:
    """`render preview --sheet`: reads OUT only, so it needs no lock and may draw a run in progress."""
    from renderer.sheet import write_sheet

    try:
        drawn = write_sheet(out, table, sheet, frames=frames, limit=limit)
    except ValueError as exc:
        table_error(exc)
    except WriteFailed as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    click.echo(f"drew {drawn} videos into {sheet}")


def _write_gallery(out: str, table) -> None:
    """`render preview`'s page: the missing posters, then OUT/index.html, whose location it prints."""
    from renderer import gallery

    written, problems = gallery.write_missing_posters(out, table)
    for problem in problems:
        click.echo(f"warning: {problem}", err=True)
    if written:
        click.echo(f"wrote {written} missing posters")
    try:
        page = gallery.write(out, table)
    except WriteFailed as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    click.echo(page)


@click.command()
@click.argument("out", metavar="OUT")
@click.option("--deep", is_flag=True, help="Also read every file back: its checksum, and a full decode of each video "
                                           "with the recorded frame count, size and fps.")
@click.option("--repair", is_flag=True, help="Record the rows whose file is bad as failed, so that the next `render "
                                             "run` renders them again (files with no record are only reported).")
def verify(out, deep, repair):
    """Check that the files of the run in OUT (a folder or an object-store prefix) are the ones its records say
    were committed: every `ok` row's video (and poster) present with its recorded size, and with --deep the
    same checksum and a video that decodes whole as recorded. Files in OUT/videos that no record names are
    reported too.

    \b
    Exit codes: 0 every file as recorded; 1 something is wrong (listed); 2 OUT has no readable metadata.parquet.

    \b
    Examples:
      render verify out/
      render verify s3://bucket/runs/e --deep
      render verify out/ --deep --repair && render run TABLE --out out/
    """
    from renderer.verify import verify as verify_run

    try:
        report = verify_run(out, deep=deep, repair=repair)
    except ConfigError as exc:
        table_error(exc)
    except WriteFailed as exc:
        click.echo(f"error: the repaired records could not be saved: {exc}. The previous {METADATA_FILE} is intact.",
                   err=True)
        sys.exit(1)
    _print_verify_report(report, out, deep)
    sys.exit(1 if report.problems else 0)


def _print_verify_report(report, out: str, deep: bool) -> None:
    from renderer.verify import CORRUPT, MISSING, NO_RECORD, TRUNCATED

    if report.problems:
        rows = [("id", "file", "problem", "detail"),
                *[(p.row_id or "-", p.file, p.kind, p.detail) for p in report.problems]]
        widths = [max(len(row[column]) for row in rows) for column in range(3)]
        for row in rows:
            click.echo("  ".join([*(value.ljust(width) for value, width in zip(row[:3], widths, strict=True)), row[3]]))
    counts = {kind: sum(p.kind == kind for p in report.problems) for kind in (MISSING, TRUNCATED, CORRUPT, NO_RECORD)}
    found = ", ".join(f"{n} {kind}" for kind, n in counts.items() if n) or "all as recorded"
    click.echo(f"checked {report.checked} files{' (deep)' if deep else ''} in {out}: {found}")
    if report.repaired:
        click.echo(f"repaired: {report.repaired} rows recorded failed; the next `render run` renders them again")
