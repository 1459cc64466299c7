"""LTX-Video (tiny-ltx): a text row, an image row and a keyframe row equal the plain LTXPipeline,
LTXImageToVideoPipeline and LTXConditionPipeline calls; every knob reaches the call; its frame and size rules;
the transformer caches; long rows planned in latent frames, stitched as latents and decoded as the pipeline decodes;
saved checkpoints loaded back; the published sizes counted on the meta device; a long row through `render run`."""
import functools
import json

import diffusers
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

import renderer
from conftest import count, plain_uint8, psnr, write_table
from invariants import check_invariants
from jobs.cli import main
from renderer.catalog import resolve_model
from renderer.errors import RowRejected
from renderer.families.components import seeded_build
from renderer.families.ltx import LTX, LTX_13B, ltx_prompt_embeds
from renderer.families.prompts import prompt_embeds_once
from renderer.model import to_uint8
from renderer.request import to_request
from renderer.run import RunConfig, run

ROW = {"id": "a", "prompt": "a red kite over a beach", "negative_prompt": "blurry", "seed": 3, "num_frames": 9,
       "num_inference_steps": 2}
CALL = dict(prompt=ROW["prompt"], negative_prompt="blurry", num_frames=9, height=32, width=32, num_inference_steps=2,
            guidance_scale=3.0, frame_rate=25)
# the tiny cache rows run 4 steps, so the caches have steps to skip
CACHED = {**ROW, "num_inference_steps": 4}
# PSNR (dB) each cache kind's frames keep from the uncached frames (measured 41.7-57.0 on the tiny preset)
CACHES = {
    "first_block": ({"threshold": 0.2}, 45),
    "taylorseer": ({"cache_interval": 2, "disable_cache_before_step": 1}, 50),
    "taylorseer_lite": ({"cache_interval": 2, "disable_cache_before_step": 1, "use_lite_mode": True}, 32),
    "mag": ({"mag_ratios": [1.0] * 4, "threshold": 1.0}, 38),
    "pab": ({"spatial_attention_block_skip_range": 2}, 48),
}


@pytest.fixture(scope="module")
def model():
    return renderer.load("tiny-ltx")


@pytest.fixture(scope="module")
def keyframes(tmp_path_factory):
    """Two different keyframes as PNG files: (first, last)."""
    folder, noise = tmp_path_factory.mktemp("keyframes"), np.random.default_rng(0)
    paths = []
    for name in ("first", "last"):
        path = folder / f"{name}.png"
        Image.fromarray(noise.integers(0, 256, (48, 40, 3), dtype=np.uint8)).save(path)
        paths.append(str(path))
    return tuple(paths)


def rgb(path):
    return Image.open(path).convert("RGB")


def sibling(model, class_name):
    """A pipeline of `class_name` over the model's components, built here rather than by the family."""
    pipeline = getattr(diffusers, class_name)(**model.pipeline.components)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def conditions(first, last, frames=9, strength=1.0):
    from diffusers.pipelines.ltx.pipeline_ltx_condition import LTXVideoCondition

    return [LTXVideoCondition(image=rgb(path), frame_index=index, strength=strength)
            for path, index in ((first, 0), (last, frames - 1)) if path is not None]


def plain(pipeline, **extra):
    frames = pipeline(**{**CALL, **extra}, generator=torch.Generator("cpu").manual_seed(3), output_type="np").frames
    return plain_uint8(frames[0])


def kinds(row, keyframes):
    """A row of each kind the family renders: its columns, the pipeline class, the plain call's image arguments."""
    first, last = keyframes
    return {
        "text": ({}, "LTXPipeline", {}),
        "image": ({"image": first}, "LTXImageToVideoPipeline", {"image": rgb(first)}),
        "keyframes": ({"image": first, "last_image": last}, "LTXConditionPipeline",
                      {"conditions": conditions(first, last)}),
        "last_frame": ({"last_image": last}, "LTXConditionPipeline", {"conditions": conditions(None, last)}),
    }[row]


@pytest.mark.parametrize("kind", ["text", "image", "keyframes", "last_frame"])
def test_each_kind_of_row_equals_the_plain_call_of_its_pipeline(model, keyframes, kind):
    columns, class_name, images = kinds(kind, keyframes)
    request = to_request({**ROW, **columns}, default_model="tiny-ltx")
    assert type(LTX.pipeline_for(model.pipeline, request)).__name__ == class_name
    assert np.array_equal(model.render(request), plain(sibling(model, class_name), **images))


def test_the_keyframe_window_helper_equals_the_plain_condition_call(model, keyframes):
    first, last = keyframes
    # a keyframe row's arguments; the window's keyframes are given as images
    request = to_request({**ROW, "num_frames": 17, "last_image": last, "params": '{"strength": 0.8}'},
                         default_model="tiny-ltx")
    window = LTX.keyframe_window(model.pipeline, request, rgb(first), rgb(last), torch.Generator("cpu").manual_seed(3))
    expected = plain(sibling(model, "LTXConditionPipeline"), num_frames=17,
                     conditions=conditions(first, last, frames=17, strength=0.8))
    assert np.array_equal(to_uint8(window), expected)


def test_the_prompt_embeddings_a_long_rows_chunks_share_render_the_plain_frames(model):
    request = to_request(ROW, default_model="tiny-ltx")
    embeds = prompt_embeds_once(model.pipeline, request, LTX.prompt_encoder)
    assert LTX.prompt_encoder is ltx_prompt_embeds and embeds["prompt_embeds"].shape[1] == 128
    assert embeds["negative_prompt_attention_mask"] is not None
    assert np.array_equal(plain(model.pipeline, **embeds), plain(model.pipeline))


# (row kind, params) -> the plain call's arguments
KNOBS = [
    ("text", {"decode_timestep": 0.05}, {"decode_timestep": 0.05}),
    ("text", {"decode_timestep": 0.05, "decode_noise_scale": 0.3}, {"decode_timestep": 0.05,
                                                                    "decode_noise_scale": 0.3}),
    ("text", {"guidance_rescale": 0.7}, {"guidance_rescale": 0.7}),
    ("text", {"max_sequence_length": 16}, {"max_sequence_length": 16}),
    ("image", {"decode_timestep": 0.05}, {"decode_timestep": 0.05}),
    ("keyframes", {"strength": 0.5}, {}),
    ("keyframes", {"image_cond_noise_scale": 0.5}, {"image_cond_noise_scale": 0.5}),
    ("keyframes", {"denoise_strength": 0.5}, {"denoise_strength": 0.5}),
    ("keyframes", {"timesteps": [1000.0, 500.0]}, {"timesteps": [1000.0, 500.0]}),
    ("keyframes", {"max_sequence_length": 16}, {"max_sequence_length": 16}),
]


@pytest.fixture(scope="module")
def baseline(model, keyframes):
    """The frames of a row of each kind without knobs, rendered once."""
    return functools.cache(lambda kind: model.render({**ROW, **kinds(kind, keyframes)[0]}))


@pytest.mark.parametrize("kind, params, arguments", KNOBS, ids=[f"{k}-{','.join(p)}" for k, p, _ in KNOBS])
def test_each_knob_reaches_the_call_and_changes_the_frames(model, keyframes, baseline, kind, params, arguments):
    columns, class_name, images = kinds(kind, keyframes)
    if "strength" in params:
        images = {"conditions": conditions(*keyframes, strength=params["strength"])}
    frames = model.render({**ROW, **columns, "params": json.dumps(params)})
    assert np.array_equal(frames, plain(sibling(model, class_name), **images, **arguments))
    assert not np.array_equal(frames, baseline(kind))


def test_the_fps_column_is_the_calls_frame_rate_and_flow_shift_the_schedulers_shift(model, baseline):
    slower = model.render({**ROW, "fps": 8})
    assert np.array_equal(slower, plain(model.pipeline, frame_rate=8)) and not np.array_equal(slower, baseline("text"))
    shifted = model.render({**ROW, "params": '{"flow_shift": 3.0}'})
    original = model.pipeline.scheduler
    model.pipeline.scheduler = type(original).from_config(original.config, shift=3.0)
    try:
        assert np.array_equal(shifted, plain(model.pipeline))
    finally:
        model.pipeline.scheduler = original
    assert not np.array_equal(shifted, baseline("text"))


def test_flow_shift_replaces_the_frame_size_shift_of_a_0_9_1_scheduler(model):
    from diffusers import FlowMatchEulerDiscreteScheduler

    # LTX-Video 0.9.0/0.9.1's scheduler shifts by the frame size and reads no `shift`
    dynamic = FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True, base_shift=0.95, max_shift=2.05,
                                              base_image_seq_len=1024, max_image_seq_len=4096, shift_terminal=0.1)
    shifted = to_request({**ROW, "params": '{"flow_shift": 3.0}'}, default_model="tiny-ltx")
    try:
        LTX.configure(model.pipeline, shifted, dynamic)
        config = model.pipeline.scheduler.config
        assert (config.use_dynamic_shifting, config.shift, config.shift_terminal) == (False, 3.0, 0.1)
        LTX.configure(model.pipeline, to_request(ROW, default_model="tiny-ltx"), dynamic)
        assert model.pipeline.scheduler is dynamic
    finally:
        LTX.configure(model.pipeline, to_request(ROW, default_model="tiny-ltx"), model._base_scheduler)


def long_row():
    return {**ROW, "num_frames": 33, "params": '{"chunk_window": 17}'}


REJECTED = [
    ({"num_frames": 12}, "num_frames=12: must be 8k+1 (9, 17, ...) for family 'ltx': its latents hold 8 frames each "
                         "(nearest: 9 or 17)"),
    ({"height": 48}, "height=48: must be divisible by 32 (nearest: 32 or 64)"),
    ({"params": '{"chunk_window": 20}'}, "params.chunk_window=20: must be 8k+1"),
    ({"params": '{"max_sequence_length": 0}'}, "params.max_sequence_length=0: must be >= 1"),
    ({"params": '{"frame_rate": 24}'}, "params.frame_rate=24: duplicates the typed column 'fps'"),
    ({"params": '{"guidance_scale_2": 3}'}, "params.guidance_scale_2=3: not a parameter of family 'ltx'"),
    ({"params": '{"strength": 0.5}'}, "params.strength=0.5: applies to keyframe rows only"),
    ({"params": '{"cache": {"kind": "faster"}}'}, "params.cache.kind='faster': must be one of first_block, "
                                                  "taylorseer, mag, pab (diffusers cannot apply faster"),
    ({"last_image": 1, "num_frames": 33, "params": '{"chunk_window": 17}'}, "num_frames=33: must fit one window "
                                                                             "(17 frames"),
    ({"last_image": 1, "params": '{"timesteps": [1000, 500, 250]}'}, "params.timesteps=[1000.0, 500.0, 250.0]: "
                                                                      "must hold num_inference_steps (2)"),
    ({"last_image": 1, "params": '{"timesteps": [500, 1000]}'}, "params.timesteps=[500.0, 1000.0]: must hold "
                                                                 "num_inference_steps (2) timesteps in descending"),
    ({"last_image": 1, "params": '{"denoise_strength": 0.4}'}, "params.denoise_strength=0.4: runs no step of 2 "
                                                                "(at least 0.5 runs one)"),
]


@pytest.mark.parametrize("columns, message", REJECTED, ids=[m.split(":")[0] for _, m in REJECTED])
def test_rows_ltx_cannot_render_are_rejected_naming_the_rule(keyframes, columns, message):
    if "last_image" in columns:
        columns = {**columns, "last_image": keyframes[1]}
    with pytest.raises(RowRejected) as caught:
        to_request({**ROW, **columns}, default_model="tiny-ltx")
    assert str(caught.value).startswith(message)


# an image row runs on the image-to-video sibling, whose timestep PAB must read
CACHE_ROWS = [(kind, "text") for kind in CACHES] + [("pab", "image")]


@pytest.mark.parametrize("kind, row", CACHE_ROWS, ids=[f"{kind}-{row}" for kind, row in CACHE_ROWS])
def test_each_cache_stays_close_to_the_uncached_frames_and_leaves_the_next_row_alone(model, keyframes, kind, row):
    columns = kinds(row, keyframes)[0]
    options, bound = CACHES[kind]
    cache = {"kind": kind.removesuffix("_lite"), **options}
    uncached = model.render({**CACHED, **columns})
    cached = model.render({**CACHED, **columns, "params": json.dumps({"cache": cache})})
    assert not np.array_equal(cached, uncached)
    assert psnr(cached, uncached) > bound
    assert np.array_equal(model.render({**CACHED, **columns}), uncached)


def recorded_calls(monkeypatch, *class_names):
    """Record the keyword arguments of every call of the pipeline classes (and which class ran it)."""
    calls = []
    for name in class_names:
        cls = getattr(diffusers, name)

        # wraps: the prompt encoder reads the call's defaults from its signature
        @functools.wraps(cls.__call__)
        def record(self, *args, __call=cls.__call__, **kwargs):
            calls.append((type(self).__name__, kwargs))
            return __call(self, *args, **kwargs)
        monkeypatch.setattr(cls, "__call__", record)
    return calls


def unpacked(pipeline, latents, frames):
    return pipeline._unpack_latents(latents, frames, 4, 4)


def test_a_long_row_is_planned_in_latent_frames_and_stitched_as_latents(model, monkeypatch):
    request = to_request(long_row(), default_model="tiny-ltx")
    # 33 frames are 5 latent frames; windows of 17 frames are 3 latent frames, sharing one
    assert [(c.start, c.end, c.latent_start, c.latent_end) for c in request.plan] == [(0, 17, 0, 3), (16, 33, 2, 5)]
    calls = recorded_calls(monkeypatch, "LTXPipeline")
    frames = model.render(request)
    assert frames.shape == (33, 32, 32, 3)
    (_, first), (_, second) = calls
    # packed tokens (batch, 3 latent frames x 4 x 4, channels); the latent frame the chunks share starts alike
    assert first["latents"].shape == second["latents"].shape == (1, 48, 8)
    first, second = (unpacked(model.pipeline, call["latents"], 3) for call in (first, second))
    assert torch.equal(first[:, :, 2], second[:, :, 0]) and not torch.equal(first[:, :, 0], second[:, :, 0])
    assert all(call["output_type"] == "latent" and call["prompt_embeds"] is not None for _, call in calls)


def test_a_long_image_row_starts_from_the_image_and_its_later_chunks_from_the_text(model, keyframes, monkeypatch):
    request = to_request({**long_row(), "image": keyframes[0]}, default_model="tiny-ltx")
    bank = [LTX.chunk_noise(model.pipeline, request, chunk) for chunk in request.plan]
    calls = recorded_calls(monkeypatch, "LTXPipeline", "LTXImageToVideoPipeline")
    assert model.render(request).shape == (33, 32, 32, 3)
    assert [(name, "image" in call) for name, call in calls] == [("LTXImageToVideoPipeline", True),
                                                                ("LTXPipeline", False)]
    given, noise = (unpacked(model.pipeline, x, 3) for x in (calls[0][1]["latents"], bank[0]))
    # the image's latents replace the first latent frame's noise (the pipeline would start from noise there)
    assert torch.equal(given[:, :, 1:], noise[:, :, 1:]) and not torch.equal(given[:, :, 0], noise[:, :, 0])
    assert torch.equal(calls[1][1]["latents"], bank[1])


def test_stitched_latents_decode_as_the_pipeline_decodes_its_own(model):
    request = to_request({**ROW, "params": '{"decode_timestep": 0.05, "decode_noise_scale": 0.2}'},
                         default_model="tiny-ltx")
    latents = LTX.chunk_noise(model.pipeline, request, request.plan[0])
    arguments = dict(latents=latents, decode_timestep=0.05, decode_noise_scale=0.2)
    # given latents, the pipeline draws nothing before its decode noise: the same first draw of the row's seed
    expected = plain(model.pipeline, **arguments)
    own = LTX.generate(model.pipeline, request, None, None, None, **arguments, output_type="latent")
    assert own.shape == (8, 2, 4, 4)
    decoded = next(LTX.decode(model.pipeline, request, np.moveaxis(own.numpy(), 1, 0)))
    assert np.array_equal(to_uint8(decoded), expected)


def test_saved_checkpoints_load_by_any_of_the_three_classes_and_render_the_same(model, tmp_path):
    frames = model.render(ROW)
    model.pipeline.save_pretrained(tmp_path / "ltx")
    # LTX-Video 0.9.7+ is published as an LTXConditionPipeline
    sibling(model, "LTXConditionPipeline").save_pretrained(tmp_path / "condition")
    for folder in ("ltx", "condition"):
        loaded = renderer.load(str(tmp_path / folder))
        assert (loaded.spec.family.preset, loaded.spec.source) == ("ltx", "checkpoint")
        assert np.array_equal(loaded.render({**ROW, "height": 32, "width": 32}), frames)


@pytest.mark.parametrize("layers, preset", [(28, "ltx"), (48, "ltx-13b")])
def test_a_checkpoint_is_matched_to_its_published_size(tmp_path, layers, preset):
    (tmp_path / "transformer").mkdir()
    index = {"_class_name": "LTXConditionPipeline", "transformer": ["diffusers", "LTXVideoTransformer3DModel"]}
    (tmp_path / "model_index.json").write_text(json.dumps(index))
    (tmp_path / "transformer" / "config.json").write_text(json.dumps({"num_layers": layers}))
    assert resolve_model(str(tmp_path)).family.preset == preset


def test_the_random_presets_have_the_published_sizes():
    # LTX-Video 2B and 13B transformers, T5-v1.1-XXL's encoder, the 0.9.5+ VAE: counted without allocating
    for family, transformer in ((LTX, 1.92), (LTX_13B, 13.04)):
        with seeded_build("meta", torch.bfloat16):
            parts = family.components("random")
        sizes = {name: round(count(parts[name]) / 1e9, 2) for name in ("transformer", "text_encoder", "vae")}
        assert sizes == {"transformer": transformer, "text_encoder": 4.76, "vae": 1.25}
        assert parts["vae"].config.timestep_conditioning and parts["transformer"].dtype == torch.bfloat16


def test_render_models_lists_the_family_and_its_knobs():
    out = CliRunner().invoke(main, ["models"]).output
    assert "ltx  (LTXPipeline)" in out and "inputs:     prompt, image, last_image" in out
    assert all(f"params.{key}:" in out for key in ("decode_timestep", "image_cond_noise_scale", "cache"))
    assert resolve_model("random-ltx-13b").family is LTX_13B


def test_a_long_ltx_row_renders_through_render_run(ray_session, tmp_path, keyframes):
    rows = [dict(id="kite", prompt="a red kite over a beach", num_frames=33, num_inference_steps=2,
                 params='{"chunk_window": 17}'),
            dict(id="pinned", prompt="a lighthouse", image=keyframes[0], last_image=keyframes[1],
                 num_inference_steps=2)]
    out = tmp_path / "out"
    summary = run(RunConfig(tables=(str(write_table(tmp_path / "t.parquet", rows)),), out=out, model="tiny-ltx",
                            actors=2, threads_per_actor=1))
    records = check_invariants(out, ["kite", "pinned"], summary.exit_code)
    assert summary.counts == {"ok": 2}
    kite = records["kite"]
    assert (kite["num_frames"], kite["chunks"], kite["chunk_mode"]) == (33, 2, "anchored")
    assert all(np.isfinite(kite["seams"])) and records["pinned"]["num_frames"] == 9
