"""Table-level problems stop the run before Ray starts: exit 2, a message naming file and column."""
import pyarrow as pa
import pytest
from click.testing import CliRunner

from conftest import write_table
from jobs.cli import main


def corrupt(tmp_path):
    path = write_table(tmp_path / "t.parquet", [{"id": "a", "prompt": "x"}] * 1)
    path.write_bytes(path.read_bytes()[:40])
    return path


CASES = {
    "missing file": (lambda p: p / "nope.parquet", "no such file"),
    "truncated file": (corrupt, "not a readable Parquet file"),
    "csv renamed": (lambda p: (p / "t.parquet").write_text("id,prompt\na,x\n") and p / "t.parquet",
                    "not a readable Parquet file"),
    "empty file": (lambda p: (p / "t.parquet").write_bytes(b"") or p / "t.parquet", "not a readable Parquet file"),
    "no id column": (lambda p: write_table(p / "t.parquet", [{"prompt": "x"}]), "no 'id' column"),
    "null id": (lambda p: write_table(p / "t.parquet", [{"id": None, "prompt": "x"}], {"id": pa.string()}),
                "column 'id' row 0"),
    "integer id": (lambda p: write_table(p / "t.parquet", [{"id": 5, "prompt": "x"}]), "column 'id' row 0"),
    "duplicate ids": (lambda p: write_table(p / "t.parquet", [{"id": "a", "prompt": "x"}, {"id": "a", "prompt": "y"}]),
                      "duplicate ids"),
    "unknown column": (lambda p: write_table(p / "t.parquet", [{"id": "a", "prompt": "x", "colour": "red"}]),
                       "unknown columns 'colour'"),
}


@pytest.mark.parametrize("case", CASES)
def test_table_errors_exit_2_and_render_nothing(case, tmp_path):
    make, words = CASES[case]
    table = make(tmp_path)
    result = CliRunner().invoke(main, ["run", str(table), "--out", str(tmp_path / "out"), "--model", "tiny-animatediff"])
    assert result.exit_code == 2, result.output
    assert words in result.output and "error:" in result.output
    assert not (tmp_path / "out").exists()
    assert CliRunner().invoke(main, ["validate", str(table)]).exit_code == 2


def test_duplicate_ids_across_two_tables(tmp_path):
    a = write_table(tmp_path / "a.parquet", [{"id": "same", "prompt": "x"}])
    b = write_table(tmp_path / "b.parquet", [{"id": "same", "prompt": "y"}])
    result = CliRunner().invoke(main, ["validate", str(a), str(b)])
    assert result.exit_code == 2 and "'same'" in result.output


def test_ignore_extra_skips_unknown_columns(tmp_path):
    table = write_table(tmp_path / "t.parquet", [{"id": "a", "prompt": "x", "colour": "red"}])
    result = CliRunner().invoke(main, ["validate", str(table), "--model", "tiny-animatediff", "--ignore-extra"])
    assert result.exit_code == 0 and "1 ok, 0 rejected" in result.output


def test_validate_lists_rejected_rows(tmp_path):
    table = write_table(tmp_path / "t.parquet", [{"id": "good", "prompt": "x"}, {"id": "bad", "prompt": "x", "height": 60}])
    result = CliRunner().invoke(main, ["validate", str(table), "--model", "tiny-animatediff"])
    assert result.exit_code == 1
    assert "rejected 'bad': height=60: must be divisible by 8" in result.output
    assert "2 rows: 1 ok, 1 rejected" in result.output
