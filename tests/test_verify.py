"""What was committed, on record: each video's (and poster's) size and sha256, resume that renders a video again
when its size differs from the record, and `render verify [--deep] [--repair]` on a real run, locally and on S3."""
from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from conftest import BUCKET, read_metadata, upload, write_table
from invariants import check_invariants
from jobs.cli import main
from renderer.paths import poster_relpath, video_relpath
from renderer.video import write_mp4

# tiny-animatediff rows that render in a fraction of a second
FAST = dict(num_frames=6, num_inference_steps=2)
IDS = ["r0", "r1", "r2", "r3"]
ORPHAN = "videos/stray.mp4"


def cli(*args):
    return CliRunner().invoke(main, [*map(str, args)])


def render(tmp_path: Path, out: Path):
    return cli("run", tmp_path / "t.parquet", "--out", out, "--model", "tiny-animatediff")


def mtimes(out: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in (out / "videos").glob("*.mp4")}


def changed_since(before: dict[str, int], out: Path) -> set[str]:
    """The ids whose video was written since `before`."""
    after = mtimes(out)
    return {row_id for row_id in IDS if before.get(Path(video_relpath(row_id)).name) != after.get(
        Path(video_relpath(row_id)).name)}


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:3000])


def flip_middle(path: Path) -> None:
    """Damage a file in its middle, its size unchanged: only a checksum or a decode can tell."""
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 64] = bytes(b ^ 0xFF for b in data[middle:middle + 64])
    path.write_bytes(bytes(data))


@pytest.fixture(scope="module")
def rendered(ray_session, tmp_path_factory) -> Path:
    """Four rows rendered once for this module; each test works on its own copy (`run_copy`)."""
    folder = tmp_path_factory.mktemp("rendered")
    write_table(folder / "t.parquet", [dict(id=row_id, prompt=f"scene {row_id}", **FAST) for row_id in IDS])
    result = render(folder, folder / "out")
    assert result.exit_code == 0, result.output
    return folder


@pytest.fixture
def run_copy(rendered, tmp_path) -> Path:
    shutil.copy(rendered / "t.parquet", tmp_path / "t.parquet")
    shutil.copytree(rendered / "out", tmp_path / "out")
    return tmp_path / "out"


def test_every_ok_record_carries_the_size_and_sha256_of_its_video_and_poster(rendered):
    out = rendered / "out"
    for row_id, record in read_metadata(out).items():
        video = (out / record["video_path"]).read_bytes()
        poster = (out / poster_relpath(record["video_path"])).read_bytes()
        assert record["video_bytes"] == len(video) > 3000, row_id
        assert record["video_sha256"] == hashlib.sha256(video).hexdigest(), row_id
        assert record["poster_bytes"] == len(poster) and poster[:2] == b"\xff\xd8", row_id
        assert record["poster_sha256"] == hashlib.sha256(poster).hexdigest(), row_id


def test_resume_renders_again_a_truncated_and_a_missing_video_and_says_why(run_copy):
    out = run_copy
    truncate(out / video_relpath("r0"))
    (out / video_relpath("r1")).unlink()
    before = mtimes(out)

    result = render(out.parent, out)
    assert result.exit_code == 0, result.output
    assert "done: 4 ok (2 already rendered, skipped)" in result.output
    assert "  1 re-rendered: their video's size differed from the record (truncated or replaced)" in result.output
    assert "  1 re-rendered: their recorded video was missing" in result.output
    assert changed_since(before, out) == {"r0", "r1"}
    records = check_invariants(out, IDS, result.exit_code)
    for row_id in ("r0", "r1"):
        assert records[row_id]["video_bytes"] == (out / video_relpath(row_id)).stat().st_size > 3000


def test_verify_finds_each_problem_and_repair_makes_the_next_run_render_exactly_those(run_copy):
    out = run_copy
    good = cli("verify", out, "--deep")
    assert (good.exit_code, good.output) == (0, f"checked 8 files (deep) in {out}: all as recorded\n")

    truncate(out / video_relpath("r0"))
    (out / video_relpath("r1")).unlink()
    flip_middle(out / video_relpath("r2"))
    (out / ORPHAN).write_bytes(b"not a video")

    quick = cli("verify", out)
    assert quick.exit_code == 1
    lines = quick.output.splitlines()
    assert lines[0].split() == ["id", "file", "problem", "detail"]
    assert [line.split()[:3] for line in lines[1:3]] == [["r0", video_relpath("r0"), "truncated"],
                                                         ["r1", video_relpath("r1"), "missing"]]
    assert lines[3].split()[:4] == ["-", ORPHAN, "no", "record"]
    assert lines[-1] == f"checked 9 files in {out}: 1 missing, 1 truncated, 1 no record"

    deep = cli("verify", out, "--deep", "--repair")
    assert deep.exit_code == 1
    assert ["r2", video_relpath("r2"), "corrupt", "sha256"] in [line.split()[:4] for line in deep.output.splitlines()]
    assert deep.output.splitlines()[-2:] == [
        f"checked 9 files (deep) in {out}: 1 missing, 1 truncated, 1 corrupt, 1 no record",
        "repaired: 3 rows recorded failed; the next `render run` renders them again"]
    records = read_metadata(out)
    assert {row_id: (r["status"], r["video_path"]) for row_id, r in records.items()} == {
        "r0": ("failed", None), "r1": ("failed", None), "r2": ("failed", None), "r3": ("ok", video_relpath("r3"))}
    assert records["r2"]["error"] == (f"verify_corrupt: {video_relpath('r2')}: sha256 differs from the record; "
                                      "the next run renders it again")
    # reported, never deleted
    assert (out / ORPHAN).read_bytes() == b"not a video"

    (out / ORPHAN).unlink()
    before = mtimes(out)
    again = render(out.parent, out)
    assert "done: 4 ok (1 already rendered, skipped)" in again.output
    assert changed_since(before, out) == {"r0", "r1", "r2"}
    check_invariants(out, IDS, again.exit_code)
    assert cli("verify", out, "--deep").exit_code == 0


def test_deep_verify_decodes_each_video_against_its_record(run_copy):
    out = run_copy
    table = pq.read_table(out / "metadata.parquet")
    # as if r3 had been recorded with more frames than its video holds
    frames = table.column("num_frames").to_pylist()
    frames[3] += 1
    pq.write_table(table.set_column(table.column_names.index("num_frames"), "num_frames",
                                    [np.array(frames, dtype=np.int64)]), out / "metadata.parquet")
    result = cli("verify", out, "--deep")
    assert result.exit_code == 1
    assert result.output.splitlines()[1].split(maxsplit=3) == [
        "r3", video_relpath("r3"), "corrupt", "decodes to 6 frames 64x64 at 8 fps, 7 frames 64x64 at 8 fps on record"]


def test_records_from_before_sizes_keep_todays_resume(run_copy):
    out = run_copy
    older = pq.read_table(out / "metadata.parquet").drop_columns(
        ["video_bytes", "video_sha256", "poster_bytes", "poster_sha256"])
    pq.write_table(older, out / "metadata.parquet")
    truncate(out / video_relpath("r0"))
    # no size on record: the quick check and resume trust a video that is there; only a decode tells
    assert cli("verify", out).exit_code == 0
    assert "r0" in cli("verify", out, "--deep").output
    before = mtimes(out)
    result = render(out.parent, out)
    assert "done: 4 ok (4 already rendered, skipped)" in result.output and "re-rendered" not in result.output
    assert changed_since(before, out) == set()


def test_verify_of_a_folder_without_records_exits_2(tmp_path):
    result = cli("verify", tmp_path)
    assert result.exit_code == 2 and "no metadata.parquet there" in result.output


def test_verify_on_s3_finds_problems_and_repairs_the_records(rendered, s3, monkeypatch):
    for key, value in s3.env.items():
        monkeypatch.setenv(key, value)
    prefix = "verified"
    upload(s3.client, rendered / "out", prefix)
    video = (rendered / "out" / video_relpath("r0")).read_bytes()
    s3.client.put_object(Bucket=BUCKET, Key=f"{prefix}/{video_relpath('r0')}", Body=video[:3000])
    s3.client.delete_object(Bucket=BUCKET, Key=f"{prefix}/{poster_relpath(video_relpath('r1'))}")
    s3.client.put_object(Bucket=BUCKET, Key=f"{prefix}/{ORPHAN}", Body=b"x")

    out = f"s3://{BUCKET}/{prefix}"
    result = cli("verify", out, "--deep", "--repair")
    assert result.exit_code == 1, result.output
    assert [line.split()[:3] for line in result.output.splitlines()[1:4]] == [
        ["r0", video_relpath("r0"), "truncated"], ["r1", poster_relpath(video_relpath("r1")), "missing"],
        ["-", ORPHAN, "no"]]
    assert result.output.splitlines()[-1] == ("repaired: 2 rows recorded failed; the next `render run` renders "
                                              "them again")
    local = rendered / "repaired.parquet"
    s3.client.download_file(BUCKET, f"{prefix}/metadata.parquet", str(local))
    statuses = {r["id"]: r["status"] for r in pq.read_table(local).to_pylist()}
    assert statuses == {"r0": "failed", "r1": "failed", "r2": "ok", "r3": "ok"}


def test_an_upload_records_the_digest_of_the_object_committed(s3, monkeypatch):
    for key, value in s3.env.items():
        monkeypatch.setenv(key, value)
    frames = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    digest = write_mp4(frames, f"s3://{BUCKET}/digest/v.mp4", fps=8)
    body = s3.client.get_object(Bucket=BUCKET, Key="digest/v.mp4")["Body"].read()
    assert (digest.size, digest.checksum) == (len(body), hashlib.sha256(body).hexdigest())
