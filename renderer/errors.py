"""Errors that decide a row's or a run's fate."""


class TableError(Exception):
    """A table-level problem: nothing is rendered and the CLI exits 2."""


class ConfigError(Exception):
    """Run options that cannot work on this cluster: nothing is rendered and the CLI exits 2."""


class UnsafeCheckpoint(Exception):
    """A checkpoint whose weights would be unpickled (pickle can run code) while that is not allowed."""


class RowRejected(Exception):
    """A row whose input breaks a rule: recorded as `rejected`, never retried.

    The message always names the column, the offending value and the rule.
    """

    def __init__(self, column: str, value, rule: str):
        self.column = column
        self.value = value
        self.rule = rule
        super().__init__(f"{column}={_show(value)}: {rule}")

    # crosses process boundaries (actor -> driver) intact
    def __reduce__(self):
        return type(self), (self.column, self.value, self.rule)


class BadOutput(Exception):
    """The pipeline produced frames that must never be committed (NaN, all black)."""


class WriteFailed(OSError):
    """An output file could not be written (disk full, read-only or vanished mount, a folder in the way).

    The message starts `write_failed:` and names the path and the reason. Several rows in a row failing so
    stop the run (see scheduler.WriteBreaker): their cause is the storage, not the rows."""


def _show(value) -> str:
    if isinstance(value, (bytes, bytearray)):
        return f"<{len(value)} bytes>"
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
