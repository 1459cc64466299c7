"""Wan 2.1 text-to-video (tiny-wan): parity with the plain WanPipeline call, its frame and size rules, long rows
planned in latent frames and stitched as latents, a saved checkpoint loaded back, and a row through `render run`."""
import json

import numpy as np
import pytest
import torch

import renderer
from conftest import plain_uint8, psnr, recorded_calls, write_table
from invariants import check_invariants
from renderer.errors import RowRejected
from renderer.request import to_request
from renderer.run import RunConfig, run

ROW = {"id": "a", "prompt": "a red kite over a beach", "negative_prompt": "blurry", "seed": 3, "num_frames": 9,
       "num_inference_steps": 2}


@pytest.fixture(scope="module")
def model():
    return renderer.load("tiny-wan")


def plain(model, **extra):
    call = dict(prompt=ROW["prompt"], negative_prompt="blurry", num_frames=9, height=32, width=32,
                num_inference_steps=2, guidance_scale=5.0)
    frames = model.pipeline(**{**call, **extra}, generator=torch.Generator("cpu").manual_seed(3),
                            output_type="np").frames[0]
    return plain_uint8(frames)


def test_a_row_equals_the_plain_diffusers_call(model):
    assert np.array_equal(model.render(ROW), plain(model))
    shorter = model.render({**ROW, "params": '{"max_sequence_length": 16}'})
    assert np.array_equal(shorter, plain(model, max_sequence_length=16))


@pytest.mark.parametrize("column, value, message", [
    ("num_frames", 80, "num_frames=80: must be 4k+1 (5, 9, ...) for family 'wan'"),
    ("height", 40, "height=40: must be divisible by 16"),
    ("params", '{"max_sequence_length": 0}', "params.max_sequence_length=0: must be >= 1"),
    ("params", '{"guidance_scale_2": 3}', "params.guidance_scale_2=3: not a parameter of family 'wan'"),
])
def test_counts_and_sizes_wan_cannot_render_are_rejected_naming_the_rule(column, value, message):
    with pytest.raises(RowRejected) as caught:
        to_request({**ROW, column: value}, default_model="tiny-wan")
    assert str(caught.value).startswith(message)


def test_a_long_row_is_planned_in_latent_frames_and_stitched_as_latents(model, monkeypatch):
    request = to_request({**ROW, "num_frames": 97}, default_model="tiny-wan")
    # 97 frames are 25 latent frames; windows of 81 frames are 21 latent frames, overlapping by 5
    assert [(c.start, c.end, c.latent_start, c.latent_end) for c in request.plan] == [(0, 81, 0, 21),
                                                                                      (16, 97, 4, 25)]
    calls = recorded_calls(monkeypatch, model.pipeline)
    frames = model.render(request)
    assert frames.shape == (97, 32, 32, 3)
    first, second = (call["latents"] for call in calls)
    # (batch, channels, latent frames, h, w); the 17 latent frames the chunks share start from the same noise
    assert first.shape == second.shape == (1, 16, 21, 4, 4)
    assert torch.equal(first[:, :, 4:], second[:, :, :17])
    assert all(call["output_type"] == "latent" for call in calls)


def test_a_saved_wan_checkpoint_loads_by_its_pipeline_class_and_renders_the_same(model, tmp_path):
    model.pipeline.save_pretrained(tmp_path / "wan")
    loaded = renderer.load(str(tmp_path / "wan"))
    assert loaded.spec.family.name == "wan" and loaded.spec.source == "checkpoint"
    assert np.array_equal(loaded.render({**ROW, "height": 32, "width": 32}), model.render(ROW))


def test_a_long_wan_row_renders_through_render_run(ray_session, tmp_path):
    rows = [dict(id="kite", prompt="a red kite over a beach", num_frames=97, num_inference_steps=2),
            dict(id="short", prompt="a lighthouse", num_inference_steps=2)]
    out = tmp_path / "out"
    summary = run(RunConfig(tables=(str(write_table(tmp_path / "t.parquet", rows)),), out=out, model="tiny-wan",
                            actors=2, threads_per_actor=1))
    records = check_invariants(out, ["kite", "short"], summary.exit_code)
    assert summary.counts == {"ok": 2}
    kite = records["kite"]
    assert (kite["num_frames"], kite["chunks"], kite["chunk_mode"]) == (97, 2, "anchored")
    assert all(np.isfinite(kite["seams"])) and records["short"]["num_frames"] == 9


CACHES = {
    "first_block": {"threshold": 0.5},
    "taylorseer": {"cache_interval": 3, "disable_cache_before_step": 1},
    "mag": {"mag_ratios": [1.0, 1.0, 0.9, 0.9, 0.9, 0.9], "threshold": 0.5},
    "pab": {"spatial_attention_block_skip_range": 2, "spatial_attention_timestep_skip_range": [-1, 1000]},
}


@pytest.mark.parametrize("kind", CACHES)
def test_each_cache_kind_changes_the_frames_a_little_and_leaves_the_next_row_uncached(model, kind):
    row = {**ROW, "num_inference_steps": 6}
    uncached = model.render(row)
    cached = model.render({**row, "params": json.dumps({"cache": {"kind": kind, **CACHES[kind]}})})
    assert not np.array_equal(cached, uncached)
    # measured on tiny-wan, 6 steps: 66 to 71 dB; random weights saturate most pixels, so the bound is loose
    assert psnr(cached, uncached) > 40
    assert np.array_equal(model.render(row), uncached)
    assert not model.pipeline.transformer.is_cache_enabled


def test_mag_cache_needs_the_checkpoints_ratios_and_faster_cache_is_refused_by_name():
    with pytest.raises(RowRejected, match="params.cache.mag_ratios=None: required by MagCache"):
        to_request({**ROW, "params": '{"cache": {"kind": "mag"}}'}, default_model="tiny-wan")
    with pytest.raises(RowRejected, match=r"params.cache.kind='faster': must be one of first_block, taylorseer, "
                                          r"mag, pab \(diffusers cannot apply faster to this family\)"):
        to_request({**ROW, "params": '{"cache": {"kind": "faster"}}'}, default_model="tiny-wan")
    with pytest.raises(RowRejected, match="params.cache.threshold=-1.0: must be >= 0.0"):
        to_request({**ROW, "params": '{"cache": {"kind": "first_block", "threshold": -1}}'}, default_model="tiny-wan")


def test_flow_shift_and_guidance_change_the_frames_for_their_row_only(model):
    base = model.render(ROW)
    shifted = model.render({**ROW, "params": '{"flow_shift": 8.0}'})
    assert not np.array_equal(shifted, base)
    assert np.array_equal(shifted, plain_with_shift(model, 8.0))
    assert not np.array_equal(model.render({**ROW, "guidance_scale": 1.0}), base)
    assert np.array_equal(model.render(ROW), base)


def plain_with_shift(model, shift):
    base_scheduler = model.pipeline.scheduler
    model.pipeline.scheduler = type(base_scheduler).from_config(base_scheduler.config, flow_shift=shift)
    try:
        return plain(model)
    finally:
        model.pipeline.scheduler = base_scheduler


def test_rejections_name_the_nearest_valid_values():
    with pytest.raises(RowRejected, match=r"\(nearest: 77 or 81\)"):
        to_request({**ROW, "num_frames": 80}, default_model="tiny-wan")
    with pytest.raises(RowRejected, match=r"\(nearest: 32 or 48\)"):
        to_request({**ROW, "width": 40}, default_model="tiny-wan")


def test_the_published_sizes_are_presets_built_in_bfloat16_on_the_meta_device():
    from renderer.catalog import resolve_model
    from renderer.families.components import seeded_build

    sizes = {}
    for name in ("random-wan-1.3b", "random-wan-14b"):
        spec = resolve_model(name)
        with seeded_build("meta", torch.bfloat16):
            transformer = spec.family.components("random")["transformer"]
        assert transformer.dtype == torch.bfloat16
        sizes[name] = sum(p.numel() for p in transformer.parameters())
    # the published transformers: 1.42B and 14.29B parameters
    assert round(sizes["random-wan-1.3b"] / 1e9, 2) == 1.42 and round(sizes["random-wan-14b"] / 1e9, 2) == 14.29
    assert resolve_model("random-wan-14b").defaults.height == 720
