"""The contact sheet, drawn from real mp4 files and a metadata table in the run's schema."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from PIL import Image

from jobs.cli import main
from renderer.metadata import schema
from renderer.paths import video_relpath
from renderer.sheet import GAP, LABEL_WIDTH, write_sheet
from renderer.video import write_mp4

HEIGHT = 48


def solid_video(out, row_id: str, colours: list[tuple[int, int, int]]) -> str:
    """An mp4 whose frame i is filled with colours[i]; returns its path relative to `out`."""
    frames = np.stack([np.full((64, 96, 3), colour, np.uint8) for colour in colours])
    relative = video_relpath(row_id)
    write_mp4(frames, out / relative, fps=8)
    return relative


def metadata(records: list[dict]) -> pa.Table:
    return pa.Table.from_pylist([{name: record.get(name) for name in schema().names} for record in records],
                                schema=schema())


@pytest.fixture
def run_out(tmp_path):
    """A run's folder: two rendered rows (8 and 3 frames of known colours) and a failed one between them."""
    greys = [(i * 30, i * 30, i * 30) for i in range(8)]
    reds = [(200, 0, 0), (0, 200, 0), (0, 0, 200)]
    table = metadata([
        {"id": "greys", "status": "ok", "model": "tiny-animatediff",
         "video_path": solid_video(tmp_path, "greys", greys)},
        {"id": "broken", "status": "failed", "model": "tiny-animatediff", "error": "nan_frames"},
        {"id": "rgb", "status": "ok", "model": "tiny-svd", "video_path": solid_video(tmp_path, "rgb", reds)},
    ])
    return tmp_path, table, [greys, reds]


def centre(sheet: np.ndarray, row: int, column: int, width: int) -> np.ndarray:
    """The pixel at the middle of a frame of the sheet (every frame here is `width` wide)."""
    top = GAP + row * (HEIGHT + GAP)
    left = GAP + LABEL_WIDTH + column * (width + GAP)
    return sheet[top + HEIGHT // 2, left + width // 2].astype(int)


def test_a_row_of_evenly_spread_frames_per_rendered_video(run_out):
    out, table, colours = run_out
    drawn = write_sheet(out, table, out / "sheet.png", frames=4, height=HEIGHT)
    sheet = np.asarray(Image.open(out / "sheet.png").convert("RGB"))
    # 96x64 frames scaled to a height of 48
    width = 72
    assert drawn == 2
    assert sheet.shape == (GAP + 2 * (HEIGHT + GAP), 2 * GAP + LABEL_WIDTH + 4 * (width + GAP), 3)
    # frames 0, 2, 5, 7 of the 8 greys (linspace 0..7 in 4, rounded)
    for column, frame in enumerate([0, 2, 5, 7]):
        assert np.abs(centre(sheet, 0, column, width) - colours[0][frame]).max() <= 6
    # a 3-frame video shows its 3 frames, the rest of its row stays background
    for column in range(3):
        assert np.abs(centre(sheet, 1, column, width) - colours[1][column]).max() <= 12
    assert tuple(centre(sheet, 1, 3, width)) == (24, 26, 30)


def test_the_limit_takes_the_first_rendered_rows(run_out):
    out, table, _ = run_out
    assert write_sheet(out, table, out / "one.png", frames=2, limit=1, height=HEIGHT) == 1
    assert Image.open(out / "one.png").height == GAP + HEIGHT + GAP


def test_a_run_without_a_rendered_video_says_so_and_writes_nothing(run_out):
    out, table, _ = run_out
    failed = table.slice(1, 1)
    with pytest.raises(ValueError, match="no `ok` row"):
        write_sheet(out, failed, out / "none.png")
    assert not (out / "none.png").exists()


def test_render_preview_sheet_draws_the_runs_videos_and_leaves_the_run_alone(run_out):
    out, table, _ = run_out
    pq.write_table(table, out / "metadata.parquet")
    before = sorted(path.name for path in out.rglob("*"))
    result = CliRunner().invoke(main, ["preview", str(out), "--sheet", str(out.parent / "sheet.png"), "--frames", "3"])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == f"drew 2 videos into {out.parent / 'sheet.png'}"
    assert Image.open(out.parent / "sheet.png").height == GAP + 2 * (96 + GAP)
    # no gallery, no poster, no lock: the sheet only reads the run
    assert sorted(path.name for path in out.rglob("*")) == before


def test_render_preview_sheet_of_a_folder_without_a_run_exits_2(tmp_path):
    result = CliRunner().invoke(main, ["preview", str(tmp_path), "--sheet", str(tmp_path / "sheet.png")])
    assert result.exit_code == 2
    assert "no metadata.parquet there" in result.output
    assert not (tmp_path / "sheet.png").exists()
