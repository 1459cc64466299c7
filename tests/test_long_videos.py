"""Long rows: chunks of the model's window spread over actors and stitched into one video (real Ray, tiny presets)."""
from __future__ import annotations

import json

import numpy as np
import pytest

import renderer
from conftest import write_table
from invariants import check_invariants
from renderer.inputs import load_image
from renderer.request import to_request
from renderer.run import RunConfig, run
from renderer.testing.videos import read_mp4

STEPS = dict(num_inference_steps=2)


def rendered(out, record) -> np.ndarray:
    frames, fps = read_mp4(out / record["video_path"])
    assert fps == record["fps"]
    return frames


def test_rows_of_3x_and_7x_the_window_render_to_exactly_that_many_frames(ray_session, tmp_path, image_file):
    rows = [
        dict(id="anim-3x", model="tiny-animatediff", prompt="a paper boat", num_frames=48, **STEPS),  # latents
        dict(id="zero-7x", model="tiny-t2v-zero", prompt="a red kite", num_frames=56, **STEPS),  # frames + anchor
        dict(id="svd-chain-3x", model="tiny-svd", image=image_file.name, num_frames=42,
             params='{"chunk_mode": "chain"}', **STEPS),
    ]
    out = tmp_path / "out"
    summary = run(RunConfig(tables=(str(write_table(image_file.parent / "long.parquet", rows)),), out=out, actors=3))
    assert summary.counts == {"ok": 3}, summary.errors
    records = check_invariants(out, [row["id"] for row in rows], summary.exit_code)
    expected = {"anim-3x": ("anchored", 4, 16), "zero-7x": ("anchored", 9, 8), "svd-chain-3x": ("chain", 4, 14)}
    for row_id, (mode, chunks, window) in expected.items():
        record = records[row_id]
        frames = rendered(out, record)
        assert frames.shape == (record["num_frames"], 64, 64, 3)
        assert (record["chunk_mode"], record["chunks"], len(record["chunk_actors"])) == (mode, chunks, chunks)
        plan = json.loads(record["chunk_plan"])
        assert plan[0][0] == 0 and plan[-1][1] == record["num_frames"] and all(e - s == window for s, e in plan)
        assert len(record["seams"]) == chunks - 1 and len(record["drift"]) == chunks
        assert all(np.isfinite(record["seams"])) and all(np.isfinite(record["drift"])) and record["drift"][0] == 0
    # no temporary file left
    assert sorted(p.name for p in out.iterdir()) == ["gallery", "index.html", "metadata.parquet", "videos"]


def test_anchored_chunks_spread_over_actors_and_the_frames_do_not_depend_on_the_actor_count(ray_session, tmp_path):
    # 128x128, not the preset's 64x64: x264 encodes frames that small differently from one run to the next, so
    # two committed videos of identical frames could differ; from 128x128 up the same frames give the same file
    rows = [dict(id="long", model="tiny-animatediff", prompt="a lighthouse at night", num_frames=112, height=128,
                 width=128, **STEPS)]
    table = str(write_table(tmp_path / "t.parquet", rows))
    videos = {}
    for actors in (1, 3):
        out = tmp_path / f"out{actors}"
        # one thread per actor either way: the thread count changes the order of float sums
        config = RunConfig(tables=(table,), out=out, actors=actors, threads_per_actor=1)
        assert run(config).counts == {"ok": 1}
        record = check_invariants(out, ["long"], 0)["long"]
        assert record["chunks"] == 9 and len(set(record["chunk_actors"])) == actors
        videos[actors] = rendered(out, record)
    assert videos[1].shape == (112, 128, 128, 3)
    assert np.array_equal(videos[1], videos[3])


@pytest.fixture(scope="module")
def animatediff():
    return renderer.load("tiny-animatediff")


def test_overlapping_frames_start_from_the_same_noise_and_the_prompt_is_encoded_once(animatediff, monkeypatch):
    calls, encodes = [], []
    pipeline_call, encode_prompt = type(animatediff.pipeline).__call__, animatediff.pipeline.encode_prompt
    monkeypatch.setattr(type(animatediff.pipeline), "__call__",
                        lambda self, **kw: calls.append(kw) or pipeline_call(self, **kw))
    monkeypatch.setattr(animatediff.pipeline, "encode_prompt",
                        lambda *a, **kw: encodes.append(a[0]) or encode_prompt(*a, **kw))
    frames = animatediff.render({"prompt": "a windmill", "num_frames": 40, **STEPS})  # chunks [0,16) [12,28) [24,40)
    assert frames.shape == (40, 64, 64, 3) and len(calls) == 3
    assert [text for text in encodes if text is not None] == ["a windmill"]  # the text encoder ran once
    first, second, third = (call["latents"] for call in calls)
    assert first.shape == (1, 4, 16, 8, 8)
    assert np.array_equal(first[:, :, 12:], second[:, :, :4]) and np.array_equal(second[:, :, 12:], third[:, :, :4])
    assert not np.array_equal(first[:, :, :4], second[:, :, :4])
    assert all(call["prompt_embeds"] is calls[0]["prompt_embeds"] for call in calls)


def test_a_chained_chunk_starts_from_the_previous_chunks_last_frame(monkeypatch, image_file):
    model = renderer.load("tiny-svd")
    images = []
    pipeline_call = type(model.pipeline).__call__
    monkeypatch.setattr(type(model.pipeline), "__call__",
                        lambda self, **kw: images.append(np.asarray(kw["image"])) or pipeline_call(self, **kw))
    request = to_request({"id": "c", "image": str(image_file), "num_frames": 27, "params": '{"chunk_mode": "chain"}',
                          **STEPS}, default_model="tiny-svd")
    assert [(c.start, c.end) for c in request.plan] == [(0, 14), (13, 27)]  # overlap 1: the shared frame is 13
    first = model.render_chunk(request, 0)
    second = model.render_chunk(request, 1, first, first)
    assert np.array_equal(images[0], np.asarray(load_image(str(image_file))))  # chunk 0: the row's image
    assert np.array_equal(images[1], first[-1])  # chunk 1: chunk 0's last frame
    reference = (first.reshape(-1, 3).mean(0), first.reshape(-1, 3).std(0))
    assert np.allclose(second.reshape(-1, 3).mean(0), reference[0], atol=1.0)  # colour matched to the first chunk
    assert np.allclose(second.reshape(-1, 3).std(0), reference[1], atol=1.5)
