"""Table-level problems stop the run before Ray starts: exit 2, a message naming file and column."""
from pathlib import Path

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
    result = CliRunner().invoke(main, ["run", str(table), "--out", str(tmp_path / "out"),
                                       "--model", "tiny-animatediff"])
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
    table = write_table(tmp_path / "t.parquet",
                        [{"id": "good", "prompt": "x"}, {"id": "bad", "prompt": "x", "height": 60}])
    result = CliRunner().invoke(main, ["validate", str(table), "--model", "tiny-animatediff"])
    assert result.exit_code == 1
    assert "rejected 'bad': height=60: must be divisible by 8" in result.output
    assert "2 rows: 1 ok, 1 rejected" in result.output


def test_rows_sharing_an_input_file_read_it_once_and_a_bad_one_rejects_every_row(tmp_path, monkeypatch):
    """Many rows often share one image or source video: planning checks each file once, as the real check."""
    import numpy as np
    from PIL import Image

    import renderer.inputs
    import renderer.request
    from renderer.run import check_rows
    from renderer.video import write_mp4

    write_mp4(np.full((4, 64, 64, 3), 120, np.uint8), tmp_path / "clip.mp4", 4)
    (tmp_path / "bad.mp4").write_text("not a video")
    Image.new("RGB", (64, 64), (200, 40, 40)).save(tmp_path / "cond.png")
    reads = []  # every file the checks read, through the real checks
    decode, check_image = renderer.inputs.decode, renderer.request.check_image
    monkeypatch.setattr(renderer.inputs, "decode", lambda path, *a: reads.append(("video", path)) or decode(path, *a))
    monkeypatch.setattr(renderer.request, "check_image",
                        lambda ref, column: reads.append((column, ref)) or check_image(ref, column))
    rows = [dict(id=f"clip{i}", model="tiny-controlnet-video", prompt="x", video="clip.mp4") for i in range(4)]
    rows += [dict(id=f"bad{i}", model="tiny-controlnet-video", prompt="x", video="bad.mp4") for i in range(2)]
    rows += [dict(id=f"image{i}", model="tiny-svd", image="cond.png") for i in range(3)]
    plan = check_rows([str(write_table(tmp_path / "t.parquet", rows))], None)
    assert sorted(r.id for r in plan.requests) == ["clip0", "clip1", "clip2", "clip3", "image0", "image1", "image2"]
    assert {r["id"]: "not a readable video" in r["error"] for r in plan.rejected} == {"bad0": True, "bad1": True}
    assert sorted((kind, Path(path).name) for kind, path in reads) == [
        ("image", "cond.png"), ("video", "bad.mp4"), ("video", "bad.mp4"), ("video", "clip.mp4")]
