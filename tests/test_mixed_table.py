"""One table mixing every family (text, image and video rows) renders in one `render run`."""
import numpy as np
from click.testing import CliRunner

from conftest import write_table
from invariants import check_invariants
from jobs.cli import main
from renderer.families.registry import FAMILIES
from renderer.testing.videos import read_mp4
from renderer.video import write_mp4


def test_every_family_in_one_run(ray_session, tmp_path, image_file):
    (tmp_path / "cond.png").write_bytes(image_file.read_bytes())
    moving = np.zeros((4, 64, 64, 3), np.uint8)
    for i in range(4):
        moving[i, 20:40, 10 * i:10 * i + 20] = 255
    write_mp4(moving, tmp_path / "control.mp4", 4)
    rows = []
    for name, family in FAMILIES.items():
        # 4 frames, or the next count a family renders: 5 (4k+1) or 9 (8k+1) where its latents hold 4 or 8 frames
        # after a lone first one
        count = next(n for n in range(4, 4 + family.layout.temporal + 1) if family.layout.valid_frames(n))
        row = {"id": f"row-{name}", "model": f"tiny-{name}", "num_frames": count, "height": 64, "width": 64,
               "num_inference_steps": 2}
        if "prompt" in family.required:
            row["prompt"] = f"a {name} test scene"
        if "image" in family.required:
            row["image"] = "cond.png"
        if "video" in family.required:
            row["video"] = "control.mp4"
        rows.append(row)
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["run", str(write_table(tmp_path / "mixed.parquet", rows)), "--out", str(out)])
    assert result.exit_code == 0, result.output
    records = check_invariants(out, [r["id"] for r in rows], result.exit_code)
    for name in FAMILIES:
        record = records[f"row-{name}"]
        assert record["status"] == "ok" and record["family"] == name, record
        frames, fps = read_mp4(out / record["video_path"])
        assert frames.shape == (record["num_frames"], 64, 64, 3) and record["num_frames"] in (4, 5, 9)
        assert fps == record["fps"]
