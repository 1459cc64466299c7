"""How the `render` commands end on an error: exit 2 for usage, table-level and output-level errors (nothing done)."""
from __future__ import annotations

import sys

import click


def table_error(exc: Exception):
    click.echo(f"error: {exc}", err=True)
    sys.exit(2)
