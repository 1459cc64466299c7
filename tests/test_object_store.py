"""Tables, inputs and outputs on an object store: a real S3 API (moto's server on 127.0.0.1) reached through
pyarrow, and `render run` in a fresh process, so that its Ray workers inherit the store's environment."""
from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from conftest import BUCKET, copy_example, objects, render_cli, upload, write_table
from jobs.cli import main
from renderer.errors import ConfigError
from renderer.inputs import load_video
from renderer.paths import output_lock, poster_relpath, video_relpath
from renderer.run import check_rows
from renderer.testing.videos import read_mp4
from renderer.video import write_mp4

TABLE = f"s3://{BUCKET}/in/example.parquet"
OUT = f"s3://{BUCKET}/out"


@pytest.fixture
def s3_env(s3, monkeypatch):
    """The store's environment for code that runs in this process."""
    for key, value in s3.env.items():
        monkeypatch.setenv(key, value)
    return s3


@pytest.fixture(scope="module")
def rendered(s3, tmp_path_factory):
    """The example table and its images uploaded under in/, rendered to out/ once for this module."""
    upload(s3.client, copy_example(tmp_path_factory.mktemp("example")).parent, "in")
    proc = render_cli(s3, TABLE, "--out", OUT)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    return proc


def test_example_table_on_s3_renders_to_s3(s3, rendered, tmp_path):
    import pyarrow.parquet as pq

    assert f"done: 4 ok -> {OUT}/metadata.parquet" in rendered.stdout
    assert f"gallery: {OUT}/index.html" in rendered.stdout.splitlines()
    s3.client.download_file(BUCKET, "out/metadata.parquet", str(tmp_path / "metadata.parquet"))
    records = {r["id"]: r for r in pq.read_table(tmp_path / "metadata.parquet").to_pylist()}
    assert sorted(records) == ["dusk", "fox-in-snow", "ocean-waves", "sunrise"]
    for row_id, rec in records.items():
        assert rec["status"] == "ok" and rec["video_path"] == video_relpath(row_id)
        local = tmp_path / Path(rec["video_path"]).name
        s3.client.download_file(BUCKET, f"out/{rec['video_path']}", str(local))
        frames, fps = read_mp4(local)
        assert frames.shape == (rec["num_frames"], rec["height"], rec["width"], 3) and fps == rec["fps"]
    # the rows' relative images were read beside the table, in the bucket
    assert records["sunrise"]["status"] == records["dusk"]["status"] == "ok"
    # only committed outputs: no temporary object, no lock left. Deleting the lock makes pyarrow write the
    # prefix's zero-byte "folder" marker `out/` (apache/arrow#36275), which is no file of the run
    keys = objects(s3.client, "out/")
    assert keys.pop("out/", {"Size": 0})["Size"] == 0
    gallery_data = [key for key in keys if key.startswith("out/gallery/")]
    assert len(gallery_data) == 1 and re.fullmatch(r"out/gallery/rows-00000-[0-9a-f]{12}\.js", gallery_data[0])
    videos = [f"out/{video_relpath(i)}" for i in records]
    assert sorted(keys) == sorted(["out/metadata.parquet", "out/index.html", *gallery_data, *videos,
                                   *map(poster_relpath, videos)])


def test_a_second_run_on_s3_resumes_and_renders_nothing(s3, rendered):
    before = {key: item["LastModified"] for key, item in objects(s3.client, "out/videos/").items()}
    proc = render_cli(s3, TABLE, "--out", OUT)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    assert "done: 4 ok (4 already rendered, skipped)" in proc.stdout
    assert {key: item["LastModified"] for key, item in objects(s3.client, "out/videos/").items()} == before


TABLE_ERRORS = {  # table location under s3://renders/ -> words of the error
    "bad/missing.parquet": "no such file",
    "bad/corrupt.parquet": "not a readable Parquet file",
    "bad": "is a directory",
}


@pytest.mark.parametrize("location", TABLE_ERRORS)
def test_table_errors_on_s3_exit_2_and_write_nothing(s3_env, location):
    s3_env.client.put_object(Bucket=BUCKET, Key="bad/corrupt.parquet", Body=b"PAR1 not really")
    result = CliRunner().invoke(main, ["run", f"s3://{BUCKET}/{location}", "--out", f"s3://{BUCKET}/bad-out",
                                       "--model", "tiny-animatediff"])
    assert result.exit_code == 2, result.output
    assert f"error: s3://{BUCKET}/{location}: {TABLE_ERRORS[location]}" in result.output
    assert objects(s3_env.client, "bad-out") == {}


def test_row_inputs_resolve_beside_a_table_on_s3(s3_env, tmp_path):
    write_mp4(np.full((4, 64, 64, 3), 120, np.uint8), tmp_path / "clips" / "edges.mp4", 4)
    (tmp_path / "clips" / "text.mp4").write_text("not a video")
    rows = [dict(id="ok", prompt="x", video="clips/edges.mp4"), dict(id="missing", prompt="x", video="clips/no.mp4"),
            dict(id="not-a-video", prompt="x", video="clips/text.mp4"),
            dict(id="uri", prompt="x", video=f"s3://{BUCKET}/v/clips/edges.mp4"),
            dict(id="climbs", prompt="x", video="../../../v/clips/edges.mp4")]
    write_table(tmp_path / "t.parquet", rows)
    upload(s3_env.client, tmp_path, "v")
    plan = check_rows([f"s3://{BUCKET}/v/t.parquet"], "tiny-controlnet-video")
    requests = {r.id: r for r in plan.requests}
    assert requests["ok"].video == f"s3://{BUCKET}/v/clips/edges.mp4"
    assert requests["climbs"].video == f"s3://{BUCKET}/v/clips/edges.mp4"  # `..` stops at the bucket's root
    errors = {r["id"]: r["error"] for r in plan.rejected}
    assert f"no such file (resolved to s3://{BUCKET}/v/clips/no.mp4)" in errors["missing"]
    assert "absolute URLs/URIs are not fetched" in errors["uri"]
    assert "not a readable video (InvalidDataError" in errors["not-a-video"]
    assert len(load_video(requests["ok"].video, 4, 64, 64)) == 4  # as the actor loads it


def test_the_lock_on_s3_refuses_a_second_run_naming_the_holder(s3_env):
    with output_lock(f"s3://{BUCKET}/locked"):
        assert "locked/.render.lock" in objects(s3_env.client, "locked/")
        with pytest.raises(ConfigError, match=rf"in use by another run: pid {os.getpid()} on "):
            with output_lock(f"s3://{BUCKET}/locked"):
                pass
    assert "locked/.render.lock" not in objects(s3_env.client, "locked/")
