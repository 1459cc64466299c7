"""SkyReels-V2 diffusion forcing (tiny-skyreels-v2-df): a row of any length is one call of the plain
SkyReelsV2DiffusionForcingPipeline (short, long over several windows, asynchronous), every knob reaches it, the rules
it enforces or silently breaks are checked on the driver, TaylorSeer works across its windows, a saved checkpoint
loads back as the family, and a long row renders through `render run` with its windows' seams recorded."""
import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import renderer
from conftest import count, plain_uint8, psnr, write_table
from invariants import check_invariants
from jobs.cli import main
from renderer.catalog import resolve_model
from renderer.errors import RowRejected
from renderer.families.components import seeded_build
from renderer.families.skyreels import SKYREELS_DF, condition_noise_seed
from renderer.request import to_request
from renderer.run import RunConfig, run

pytestmark = pytest.mark.usefixtures("one_thread")

ROW = {"id": "a", "prompt": "a red kite over a beach", "negative_prompt": "blurry", "seed": 3,
       "num_inference_steps": 2}
# 33 frames are 9 latent frames; windows of 13 frames (4 latent) sharing 5 frames (2 latent): [0,4) [2,6) [4,8) [6,9)
LONG = {"num_frames": 33, "base_num_frames": 13, "overlap_history": 5}
# asynchronous: blocks of 2 latent frames, each 1 step behind the one before; 29 frames: [0,4) [2,6) [4,8)
ASYNC = {"num_frames": 29, "base_num_frames": 13, "overlap_history": 5, "ar_step": 1, "causal_block_size": 2}
# TaylorSeer against the uncached frames, 4 steps: lite measured 53-57 dB on 9 frames, 46-47 dB on LONG (seeds 3-5)
PSNR_LITE = 40.0


@pytest.fixture(scope="module")
def model():
    return renderer.load("tiny-skyreels-v2-df")


def row(num_frames=9, params=None, **columns):
    return {**ROW, "num_frames": num_frames, **columns, "params": json.dumps(params or {})}


def long_row(**params):
    """A row of LONG's frames with LONG's windows and `params` on top."""
    frames, window = dict(LONG), {k: v for k, v in LONG.items() if k != "num_frames"}
    return row(frames.pop("num_frames"), {**window, **params})


def plain(model, **call):
    """The plain pipeline call with the row's arguments (the tiny window unless given), its conditioning noise
    drawn from the global generator as the renderer seeds it."""
    args = {**dict(prompt=ROW["prompt"], negative_prompt="blurry", num_frames=9, height=32, width=32,
                   num_inference_steps=2, guidance_scale=6.0, base_num_frames=9), **call}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(condition_noise_seed(ROW["seed"]))
        frames = model.pipeline(**args, generator=torch.Generator("cpu").manual_seed(ROW["seed"]),
                                output_type="np").frames[0]
    return plain_uint8(frames)


def test_a_short_row_equals_the_plain_diffusers_call(model):
    assert np.array_equal(model.render(row()), plain(model))
    assert np.array_equal(model.render(row(params={"max_sequence_length": 16})), plain(model, max_sequence_length=16))


@pytest.mark.parametrize("params", [{**LONG, "addnoise_condition": 20}, ASYNC], ids=["sync", "async"])
def test_a_long_row_is_one_call_over_several_windows_equal_to_the_plain_call(model, params):
    frames = model.render(row(params["num_frames"], {k: v for k, v in params.items() if k != "num_frames"}))
    assert frames.shape == (params["num_frames"], 32, 32, 3)
    assert np.array_equal(frames, plain(model, **params))


def test_the_windows_are_the_pipelines_own_and_their_seams_are_measured(model, monkeypatch):
    request = to_request(long_row(), default_model="tiny-skyreels-v2-df")
    # one chunk for the renderer; four windows inside the call, the last one shorter
    assert len(request.plan) == 1
    windows = SKYREELS_DF.call_windows(request)
    assert [(w.latent_start, w.latent_end) for w in windows] == [(0, 4), (2, 6), (4, 8), (6, 9)]
    assert [(w.start, w.end) for w in windows] == [(0, 13), (8, 21), (16, 29), (24, 33)]
    drawn, prepare = [], model.pipeline.prepare_latents

    def recorded(*args, **kwargs):
        out = prepare(*args, **kwargs)
        drawn.append(out[1])
        return out
    monkeypatch.setattr(model.pipeline, "prepare_latents", recorded)
    frames = model.render(request)
    assert drawn == [w.latent_end - w.latent_start for w in windows]
    metrics = model.window_seams(request, frames)
    assert len(metrics["seams"]) == 3 and len(metrics["drift"]) == 4 and np.isfinite(metrics["seams"]).all()
    assert model.window_seams(to_request(row(), default_model="tiny-skyreels-v2-df"), frames[:9]) == {}


def test_the_conditioning_noise_is_the_rows_own_and_leaves_the_global_generator_alone(model):
    noisy = long_row(addnoise_condition=20)
    first = model.render(noisy)
    torch.manual_seed(12345)
    state = torch.get_rng_state()
    assert np.array_equal(model.render(noisy), first)
    assert torch.equal(torch.get_rng_state(), state)


# knobs on LONG's row (fps and guidance_scale are columns); the last two differ in causal_block_size alone
KNOBS = [
    {}, {"overlap_history": 9}, {"base_num_frames": 17}, {"addnoise_condition": 20}, {"ar_step": 1},
    {"max_sequence_length": 8}, {"flow_shift": 3.0}, {"fps": 16}, {"guidance_scale": 1.0},
    {"ar_step": 1, "num_frames": 29}, {"ar_step": 1, "num_frames": 29, "causal_block_size": 2},
]


def knob_row(knobs: dict) -> dict:
    params = {**LONG, **knobs}
    columns = {k: params.pop(k) for k in ("num_frames", "fps", "guidance_scale") if k in params}
    return row(params=params, **columns)


def test_every_knob_changes_the_frames_and_leaves_the_next_row_alone(model):
    renders = [model.render(knob_row(knobs)).tobytes() for knobs in KNOBS]
    assert len(set(renders)) == len(KNOBS)
    # the causal block size the pipeline writes into the transformer's config is reset for the next row
    assert model.render(knob_row({})).tobytes() == renders[0]


@pytest.mark.parametrize("columns, params, message", [
    ({"num_frames": 33}, {}, "params.overlap_history=None: required when num_frames (33) exceeds "
                             "params.base_num_frames (9)"),
    ({}, {"overlap_history": 6}, "params.overlap_history=6: must be 4k+1 (5, 9, ...): windows are whole latent "
                                 "frames (nearest: 5 or 9)"),
    ({}, {"overlap_history": 9}, "params.overlap_history=9: must be smaller than params.base_num_frames (9), or no "
                                 "window would add a frame (e.g. 5)"),
    ({}, {"base_num_frames": 12}, "params.base_num_frames=12: must be 4k+1 (5, 9, ...): windows are whole latent "
                                  "frames (nearest: 9 or 13)"),
    ({}, {"base_num_frames": 1}, "params.base_num_frames=1: must be >= 5"),
    ({}, {"ar_step": -1}, "params.ar_step=-1: must be >= 0"),
    ({}, {"causal_block_size": 2}, "params.causal_block_size=2: must be 1 unless params.ar_step > 0"),
    ({}, {"ar_step": 1, "causal_block_size": 2}, "num_frames=9: must be whole causal blocks with "
     "params.causal_block_size=2: 9 frames are 3 latent frames, not a multiple of 2 (nearest: 5 or 13)"),
    ({"num_frames": 29}, {**ASYNC, "num_frames": None, "overlap_history": 9},
     "params.overlap_history=9: must be whole causal blocks with params.causal_block_size=2"),
    ({"num_frames": 29}, {**ASYNC, "num_frames": None, "base_num_frames": 9},
     "params.base_num_frames=9: must be whole causal blocks with params.causal_block_size=2"),
    ({"num_frames": 31}, {**ASYNC, "num_frames": None}, "num_frames=31: must be 4k+1"),
    ({"num_frames": 33}, {**ASYNC, "num_frames": None}, "num_frames=33: must be whole causal blocks with "
     "params.causal_block_size=2: 33 frames are 9 latent frames, not a multiple of 2 (nearest: 29 or 37)"),
    ({}, {"chunk_window": 9}, "params.chunk_window=9: family 'skyreels-v2-df' renders a row of any length in one call"),
    ({}, {"cache": {"kind": "first_block"}}, "params.cache.kind='first_block': must be one of taylorseer (diffusers "
                                             "cannot apply first_block to this family)"),
    ({}, {"fps": 16}, "params.fps=16: duplicates the typed column 'fps'"),
    ({"num_frames": 80}, {}, "num_frames=80: must be 4k+1 (5, 9, ...) for family 'skyreels-v2-df'"),
    ({"height": 40}, {}, "height=40: must be divisible by 16 (nearest: 32 or 48)"),
])
def test_rows_the_pipeline_would_refuse_or_silently_break_are_rejected_naming_the_rule(columns, params, message):
    params = {k: v for k, v in params.items() if v is not None}
    with pytest.raises(RowRejected) as caught:
        to_request(row(**{"num_frames": 9, **columns}, params=params), default_model="tiny-skyreels-v2-df")
    assert str(caught.value).startswith(message)


# lite: the output projection extrapolated; default: the blocks' attention and feed-forward layers (the family's
# patterns, which diffusers' own miss)
@pytest.mark.parametrize("mode", [{"use_lite_mode": True}, {}], ids=["lite", "layers"])
def test_taylorseer_caches_every_window_close_to_the_uncached_frames(model, mode):
    # 4 steps: every window computes its first 3 passes of each guidance branch and extrapolates the 4th
    lite = {"cache": {"kind": "taylorseer", **mode}}
    for frames, params in ((9, {}), (LONG["num_frames"], {k: v for k, v in LONG.items() if k != "num_frames"})):
        plain_row = row(frames, params, num_inference_steps=4)
        uncached = model.render(plain_row)
        # the last window is shorter than the others: it starts afresh, not from their features
        cached = model.render(row(frames, {**params, **lite}, num_inference_steps=4))
        assert not np.array_equal(cached, uncached) and psnr(cached, uncached) > PSNR_LITE
        assert np.array_equal(model.render(plain_row), uncached)


def test_a_saved_checkpoint_loads_as_the_family_and_renders_the_same(model, tmp_path):
    model.pipeline.save_pretrained(tmp_path / "df")
    loaded = renderer.load(str(tmp_path / "df"))
    assert (loaded.spec.family.preset, loaded.spec.source, loaded.spec.window) == ("skyreels-v2-df", "checkpoint", 97)
    # a checkpoint has the published defaults: the row names the tiny size (and LONG its window)
    assert np.array_equal(loaded.render({**long_row(), "height": 32, "width": 32}), model.render(long_row()))


def test_a_14b_checkpoint_is_the_14b_variant():
    index = {"_class_name": "SkyReelsV2DiffusionForcingPipeline"}
    assert SKYREELS_DF.claims(index)
    assert SKYREELS_DF.for_checkpoint(index, lambda sub: {"num_attention_heads": 40}).preset == "skyreels-v2-df-14b"
    assert SKYREELS_DF.for_checkpoint(index, lambda sub: {"num_attention_heads": 12}) is SKYREELS_DF


@pytest.mark.parametrize("preset, billions, sample_info", [
    ("random-skyreels-v2-df", 1.44, True), ("random-skyreels-v2-df-14b", 14.29, False),
])
def test_random_presets_have_the_published_transformers(preset, billions, sample_info):
    with seeded_build("meta", torch.bfloat16):
        parts = resolve_model(preset).family.components("random")
    transformer = parts["transformer"]
    assert round(count(transformer) / 1e9, 2) == billions and transformer.dtype == torch.bfloat16
    assert transformer.config.inject_sample_info is sample_info
    assert parts["scheduler"].config.flow_shift == 8.0


def test_the_published_defaults_and_render_models_lists_the_family():
    assert resolve_model("random-skyreels-v2-df").defaults == SKYREELS_DF.defaults
    assert (SKYREELS_DF.defaults.num_frames, SKYREELS_DF.defaults.height, SKYREELS_DF.defaults.width) == (97, 544, 960)
    spec = resolve_model("random-skyreels-v2-df-14b-720p")
    assert (spec.window, spec.defaults.num_frames, spec.defaults.height, spec.defaults.width) == (121, 121, 720, 1280)
    listing = CliRunner().invoke(main, ["models"]).output
    assert "skyreels-v2-df  (SkyReelsV2DiffusionForcingPipeline)" in listing
    assert all(f"params.{key}:" in listing for key in ("overlap_history", "addnoise_condition", "ar_step",
                                                         "causal_block_size", "base_num_frames", "cache"))


def test_a_long_row_renders_in_one_call_through_render_run_with_its_windows_seams(ray_session, tmp_path):
    rows = [dict(id="kite", prompt="a red kite over a beach", num_frames=33, fps=16, num_inference_steps=2,
                 params=json.dumps({"overlap_history": 5, "addnoise_condition": 20})),
            dict(id="short", prompt="a lighthouse", num_inference_steps=2)]
    out = tmp_path / "out"
    summary = run(RunConfig(tables=(str(write_table(tmp_path / "t.parquet", rows)),), out=out,
                            model="tiny-skyreels-v2-df", actors=2, threads_per_actor=1))
    # every mp4 has its record's frame count, size and fps
    records = check_invariants(out, ["kite", "short"], summary.exit_code)
    assert summary.counts == {"ok": 2}
    kite = records["kite"]
    # 33 frames in windows of 9 sharing 5: 7 windows of one call, so 6 seams
    assert (kite["num_frames"], kite["fps"], kite["chunks"], kite["chunk_mode"]) == (33, 16, 1, None)
    assert len(kite["seams"]) == 6 and len(kite["drift"]) == 7 and np.isfinite(kite["seams"]).all()
    assert records["short"]["num_frames"] == 9 and records["short"]["seams"] is None
