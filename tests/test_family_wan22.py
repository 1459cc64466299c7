"""Wan 2.2 (tiny-wan2.2: T2V-A14B's two experts; tiny-wan2.2-i2v: I2V-A14B with an optional last frame;
tiny-wan2.2-ti2v-5b: TI2V-5B on the 48-channel VAE): parity with the plain diffusers calls, each knob, the rules a
row must keep, the full-size presets' sizes and memory on the meta device, the transformer caches on both experts,
saved checkpoints detected and loaded back, long rows (anchored as latents; chained for image-to-video), one row
through `render run`, and `render models`."""
import functools
import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

import renderer
from conftest import count, plain_uint8, psnr, recorded_calls, write_table
from invariants import check_invariants
from jobs.cli import main
from renderer.catalog import resolve_model
from renderer.chunks import seam_metrics
from renderer.errors import RowRejected
from renderer.families.components import seeded_build
from renderer.families.registry import FAMILIES
from renderer.families.wan22 import high_noise_steps
from renderer.model import to_uint8
from renderer.request import to_request
from renderer.run import RunConfig, run

T2V, I2V, TI2V = "tiny-wan2.2", "tiny-wan2.2-i2v", "tiny-wan2.2-ti2v-5b"
ROW = {"id": "a", "prompt": "a red kite over a beach", "negative_prompt": "blurry", "seed": 3, "num_frames": 9,
       "num_inference_steps": 2}
CALL = dict(prompt=ROW["prompt"], negative_prompt="blurry", num_frames=9, height=32, width=32, num_inference_steps=2,
            guidance_scale=5.0)


@pytest.fixture(scope="module")
def models():
    return {preset: renderer.load(preset) for preset in (T2V, I2V, TI2V)}


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """A first and a last frame, as files a row names."""
    folder = tmp_path_factory.mktemp("frames")
    ramp = np.linspace(0, 255, 64, dtype=np.uint8)
    first = np.stack([np.tile(ramp, (64, 1)), np.tile(ramp[:, None], (1, 64)), np.full((64, 64), 90, np.uint8)], -1)
    paths = {"image": folder / "first.png", "last_image": folder / "last.png"}
    Image.fromarray(first).save(paths["image"])
    Image.fromarray(255 - first[::-1]).save(paths["last_image"])
    return {column: str(path) for column, path in paths.items()}


def plain(pipeline, **extra):
    frames = pipeline(**{**CALL, **extra}, generator=torch.Generator("cpu").manual_seed(ROW["seed"]),
                      output_type="np").frames[0]
    return plain_uint8(frames)


def ti2v_image_pipeline(model):
    """TI2V-5B's image-to-video as diffusers spells it: its image-to-video pipeline over the same components."""
    from diffusers import WanImageToVideoPipeline

    sibling = WanImageToVideoPipeline(**model.pipeline.components, expand_timesteps=True)
    sibling.set_progress_bar_config(disable=True)
    return sibling


def test_the_presets_have_two_distinct_experts_or_one_transformer_on_the_wan22_vae(models):
    t2v, i2v, ti2v = (models[preset].pipeline for preset in (T2V, I2V, TI2V))
    for pipeline, boundary, channels in ((t2v, 0.875, 16), (i2v, 0.9, 36)):
        assert pipeline.config.boundary_ratio == boundary and pipeline.transformer is not pipeline.transformer_2
        assert pipeline.transformer.config.in_channels == pipeline.transformer_2.config.in_channels == channels
        # built one after the other from the seeded generator: each expert has its own weights
        assert not torch.equal(pipeline.transformer.proj_out.weight, pipeline.transformer_2.proj_out.weight)
    assert type(i2v).__name__ == "WanImageToVideoPipeline" and i2v.image_encoder is None
    assert ti2v.config.expand_timesteps and ti2v.transformer_2 is None and ti2v.config.boundary_ratio is None
    assert ti2v.vae.config.z_dim == ti2v.transformer.config.in_channels == 48 and ti2v.vae_scale_factor_spatial == 16


# preset, the row's columns beyond ROW, the plain call's arguments beyond CALL (images opened from the files)
PARITY = {
    "t2v": (T2V, {}, {}),
    "i2v": (I2V, {"image"}, {"image"}),
    "first-last-frame": (I2V, {"image", "last_image"}, {"image", "last_image"}),
    "ti2v": (TI2V, {}, {}),
    "ti2v-image": (TI2V, {"image"}, {"image"}),
}


@pytest.mark.parametrize("case", PARITY)
def test_a_row_equals_the_plain_diffusers_call(models, images, case):
    preset, columns, arguments = PARITY[case]
    model = models[preset]
    pipeline = ti2v_image_pipeline(model) if case == "ti2v-image" else model.pipeline
    opened = {column: Image.open(images[column]).convert("RGB") for column in arguments}
    frames = model.render({**ROW, **{column: images[column] for column in columns}})
    assert frames.shape == (9, 32, 32, 3) and np.array_equal(frames, plain(pipeline, **opened))
    # the conditioning frames count: without the last frame, or without TI2V's image, the video differs
    if case == "first-last-frame":
        assert not np.array_equal(frames, plain(pipeline, image=opened["image"]))
    if case == "ti2v-image":
        assert not np.array_equal(frames, plain(model.pipeline))


# preset, the row's change, the plain call's change
KNOBS = {
    "guidance_scale_2": (T2V, {"guidance_scale_2": 1.5}),
    "guidance_scale_2 (i2v)": (I2V, {"guidance_scale_2": 1.5}),
    "max_sequence_length": (T2V, {"max_sequence_length": 4}),
    "max_sequence_length (ti2v)": (TI2V, {"max_sequence_length": 4}),
}


@pytest.fixture(scope="module")
def baselines(models, images):
    """ROW's frames on each preset (from the row's image on image-to-video)."""
    return {preset: models[preset].render({**ROW, **({"image": images["image"]} if preset == I2V else {})})
            for preset in models}


@pytest.mark.parametrize("knob", KNOBS)
def test_each_knob_changes_the_frames_as_it_changes_the_plain_call(models, images, baselines, knob):
    preset, arguments = KNOBS[knob]
    model = models[preset]
    image = {"image": images["image"]} if preset == I2V else {}
    opened = {"image": Image.open(images["image"]).convert("RGB")} if image else {}
    changed = model.render({**ROW, **image, "params": json.dumps(arguments)})
    assert np.array_equal(changed, plain(model.pipeline, **opened, **arguments))
    assert not np.array_equal(changed, baselines[preset])


def test_a_rows_flow_shift_moves_the_schedule_and_the_experts_boundary_step(models):
    model = models[T2V]
    shifted = model.render({**ROW, "num_inference_steps": 6, "params": '{"flow_shift": 12.0}'})
    pipeline, base = model.pipeline, model._base_scheduler
    try:
        pipeline.scheduler = type(base).from_config(base.config, flow_shift=12.0)
        assert np.array_equal(shifted, plain(pipeline, num_inference_steps=6))
        # a larger shift keeps more steps above the boundary timestep: the high-noise expert takes more of them
        assert high_noise_steps(pipeline, 6) == 4
    finally:
        pipeline.scheduler = base
    assert high_noise_steps(pipeline, 6) == 2


@pytest.mark.parametrize("preset, column, value, message", [
    (T2V, "num_frames", 80, "num_frames=80: must be 4k+1 (5, 9, ...) for family 'wan2.2'"),
    (T2V, "height", 40, "height=40: must be divisible by 16 (nearest: 32 or 48)"),
    (T2V, "params", '{"guidance_scale_2": -1}', "params.guidance_scale_2=-1.0: must be >= 0.0"),
    (T2V, "params", '{"cache": {"kind": "faster"}}', "params.cache.kind='faster': must be one of first_block, "
     "taylorseer, mag, pab (diffusers cannot apply faster to this family)"),
    (T2V, "params", '{"cache": {"kind": "taylorseer", "disable_cache_before_step": 0}}',
     "params.cache.disable_cache_before_step=0: must be >= 1"),
    (T2V, "params", '{"chunk_mode": "chain"}', "params.chunk_mode='chain': must be one of anchored"),
    (T2V, "image", "first.png", "image='first.png': family 'wan2.2' takes no image"),
    (I2V, "image", None, "image=None: required by family 'wan2.2'"),
    (I2V, "params", '{"chunk_mode": "anchored"}', "params.chunk_mode='anchored': must be one of chain"),
    (TI2V, "height", 48, "height=48: must be divisible by 32 (nearest: 32 or 64)"),
    (TI2V, "params", '{"guidance_scale_2": 3}', "params.guidance_scale_2=3: not a parameter of family 'wan2.2'"),
    (TI2V, "last_image", "last.png", "last_image='last.png': family 'wan2.2' takes no last_image"),
    (TI2V, "num_frames", 133, "num_frames=133: an image row of wan2.2-ti2v-5b renders in one window (121 frames"),
])
def test_knobs_counts_and_sizes_wan22_cannot_render_are_rejected_naming_the_rule(images, preset, column, value,
                                                                                message):
    row = {**ROW, "image": images["image"]} if preset != T2V else dict(ROW)
    if preset == TI2V and column == "num_frames":
        row["num_frames"] = value
    else:
        row[column] = value
    with pytest.raises(RowRejected) as caught:
        to_request(row, default_model=preset)
    assert str(caught.value).startswith(message)


# preset -> {component: published parameters (DIT.md 3.1), in billions, to 2 places}
PUBLISHED = {
    "random-wan2.2": {"transformer": 14.29, "transformer_2": 14.29, "text_encoder": 5.68, "vae": 0.13},
    "random-wan2.2-i2v": {"transformer": 14.29, "transformer_2": 14.29, "text_encoder": 5.68, "vae": 0.13},
    "random-wan2.2-ti2v-5b": {"transformer": 5.00, "text_encoder": 5.68, "vae": 0.70},
}


@pytest.mark.parametrize("preset", PUBLISHED)
def test_the_random_presets_have_the_published_sizes_and_the_a14b_pair_fits_an_80gb_gpu_in_bfloat16(preset):
    with seeded_build("meta", torch.bfloat16):
        parts = resolve_model(preset).family.components("random")
    modules = {name: part for name, part in parts.items() if isinstance(part, torch.nn.Module)}
    assert {name: round(count(module) / 1e9, 2) for name, module in modules.items()} == PUBLISHED[preset]
    params = [p for module in modules.values() for p in module.parameters()]
    # built directly in bfloat16: both 14B experts and UMT5-XXL's encoder in 68.8 GB, never in float32
    assert {p.dtype for p in params} == {torch.bfloat16}
    assert sum(p.numel() * p.element_size() for p in params) < 75e9


STEPS = 6
# each kind of cache the family declares, set to skip within 6 steps on the tiny experts
CACHES = {
    "first_block": {"threshold": 0.2},
    "taylorseer": {"cache_interval": 2, "disable_cache_before_step": 1},
    "mag": {"mag_ratios": [1.0] * STEPS, "threshold": 0.5, "retention_ratio": 0.0},
    "pab": {"spatial_attention_block_skip_range": 3, "spatial_attention_timestep_skip_range": [0, 1000]},
}
# measured on the tiny experts (1 or 2 threads alike): first_block 61 dB, taylorseer 70, mag 59, pab 66
PSNR_BOUND = 45.0


@pytest.fixture(scope="module")
def uncached(models):
    return models[T2V].render({**ROW, "num_inference_steps": STEPS})


@pytest.mark.parametrize("kind", CACHES)
def test_each_cache_kind_changes_the_frames_a_little_and_the_next_uncached_row_is_the_baseline(models, uncached,
                                                                                              kind):
    model, row, baseline = models[T2V], {**ROW, "num_inference_steps": STEPS}, uncached
    cached = model.render({**row, "params": json.dumps({"cache": {"kind": kind, **CACHES[kind]}})})
    assert not np.array_equal(cached, baseline) and psnr(cached, baseline) > PSNR_BOUND
    assert np.array_equal(model.render(row), baseline)


def hooked(module) -> list[str]:
    """The names of a transformer's submodules that carry diffusers hooks."""
    return [name for name, sub in module.named_modules()
            if getattr(sub, "_diffusers_hook", None) is not None and sub._diffusers_hook.hooks]


def test_both_experts_carry_the_cache_during_the_call_and_neither_after_an_uncached_row(models):
    model = models[T2V]
    experts = {name: getattr(model.pipeline, name) for name in ("transformer", "transformer_2")}
    seen = []
    handles = [expert.register_forward_pre_hook(
        lambda module, args, name=name: seen.append((name, module.is_cache_enabled, bool(hooked(module)))))
        for name, expert in experts.items()]
    try:
        model.render({**ROW, "num_inference_steps": 4, "params": '{"cache": {"kind": "first_block"}}'})
        # 2 of the 4 steps on each expert, a conditional and an unconditional pass each
        assert sorted(seen) == [("transformer", True, True)] * 4 + [("transformer_2", True, True)] * 4
        seen.clear()
        model.render({**ROW, "num_inference_steps": 4})
        assert sorted(seen) == [("transformer", False, False)] * 4 + [("transformer_2", False, False)] * 4
    finally:
        for handle in handles:
            handle.remove()
    assert not any(expert.is_cache_enabled or hooked(expert) for expert in experts.values())


def test_magcache_gives_each_expert_its_share_of_the_steps_and_taylorseer_hooks_wans_attention(models):
    model = models[T2V]
    ratios = [1.0, 0.99, 0.98, 0.97, 0.96, 0.95]
    mag = to_request({**ROW, "num_inference_steps": STEPS, "params": json.dumps(
        {"cache": {"kind": "mag", "mag_ratios": ratios}})}, default_model=T2V)
    calls = {"transformer": 0, "transformer_2": 0}
    handles = [getattr(model.pipeline, name).register_forward_pre_hook(
        lambda *_, name=name: calls.__setitem__(name, calls[name] + 1)) for name in calls]
    try:
        model.render(mag)
    finally:
        for handle in handles:
            handle.remove()
    # the pipeline switched experts where the family counted: 2 high-noise steps, 4 low-noise (two passes each)
    high = high_noise_steps(model.pipeline, STEPS)
    assert (high, calls) == (2, {"transformer": 4, "transformer_2": 8})
    first, second = model.pipeline.transformer._cache_config, model.pipeline.transformer_2._cache_config
    assert (first.num_inference_steps, second.num_inference_steps) == (2, 4)
    assert first.mag_ratios.tolist() == pytest.approx(ratios[:2]) and second.mag_ratios.tolist() == pytest.approx(
        ratios[2:])
    model._configure(to_request({**ROW, "params": '{"cache": {"kind": "taylorseer"}}'}, default_model=T2V))
    for name in calls:
        # the family's patterns: the attention and feed-forward layers of every block
        assert hooked(getattr(model.pipeline, name)) == [f"blocks.{b}.{layer}" for b in (0, 1)
                                                         for layer in ("attn1", "attn2", "ffn")]
    model._configure(to_request(ROW, default_model=T2V))


@pytest.mark.parametrize("preset, columns, variant", [(T2V, (), ""), (I2V, ("image", "last_image"), "i2v"),
                                                      (TI2V, ("image",), "ti2v-5b")])
def test_a_saved_checkpoint_is_detected_as_its_variant_and_renders_the_same(models, images, tmp_path, preset,
                                                                            columns, variant):
    model = models[preset]
    model.pipeline.save_pretrained(tmp_path / "saved")
    folder = str(tmp_path / "saved")
    loaded = renderer.load(folder)
    assert (loaded.spec.family.name, loaded.spec.family.variant, loaded.spec.source) == ("wan2.2", variant,
                                                                                      "checkpoint")
    assert not FAMILIES["wan"].claims(json.loads((tmp_path / "saved" / "model_index.json").read_text()))
    # a checkpoint's defaults are the published model's: the tiny preset's size and guidance given explicitly
    row = {**ROW, **{column: images[column] for column in columns}, "guidance_scale": 5.0}
    assert np.array_equal(loaded.render({**row, "height": 32, "width": 32}), model.render(row))
    # named explicitly as FAMILY:LOCATION, whichever of its pipeline classes it is
    assert resolve_model(f"wan2.2:{folder}").family.preset == model.spec.family.preset


@pytest.mark.parametrize("index, family", [
    ({"_class_name": "WanPipeline", "transformer": ["diffusers", "WanTransformer3DModel"],
      "transformer_2": [None, None]}, "wan"),
    ({"_class_name": "WanPipeline", "transformer_2": ["diffusers", "WanTransformer3DModel"],
      "boundary_ratio": 0.875}, "wan2.2"),
    ({"_class_name": "WanPipeline", "expand_timesteps": True, "transformer_2": [None, None]}, "wan2.2"),
    ({"_class_name": "WanImageToVideoPipeline", "boundary_ratio": 0.9, "image_encoder": [None, None]}, "wan2.2"),
    # Wan 2.1 image-to-video: a CLIP image encoder and one transformer
    ({"_class_name": "WanImageToVideoPipeline", "image_encoder": ["transformers", "CLIPVisionModel"]}, None),
])
def test_wan_checkpoints_are_claimed_by_wan_or_wan22_by_their_model_index(index, family):
    claimed = [name for name in ("wan", "wan2.2") if FAMILIES[name].claims(index)]
    assert claimed == ([family] if family else [])


def test_a_long_row_is_anchored_and_stitched_as_latents_across_both_experts(models, monkeypatch):
    model = models[T2V]
    request = to_request({**ROW, "num_frames": 17, "params": '{"chunk_window": 9}'}, default_model=T2V)
    # 17 frames are 5 latent frames; windows of 9 frames are 3, sharing one
    assert [(c.start, c.end, c.latent_start, c.latent_end) for c in request.plan] == [(0, 9, 0, 3), (8, 17, 2, 5)]
    calls = recorded_calls(monkeypatch, model.pipeline)
    frames = model.render(request)
    assert frames.shape == (17, 32, 32, 3)
    first, second = (call["latents"] for call in calls)
    assert torch.equal(first[:, :, 2:], second[:, :, :1])
    assert all(call["output_type"] == "latent" for call in calls)
    assert all(np.isfinite(seam_metrics(frames, request.plan)["seams"]))


def test_a_long_image_row_chains_from_the_last_frame_and_only_the_last_chunk_ends_on_the_last_image(
        models, images, monkeypatch):
    model = models[I2V]
    request = to_request({**ROW, **images, "num_frames": 17, "params": '{"chunk_window": 9}'}, default_model=I2V)
    assert request.chunk_mode == "chain" and [(c.start, c.end) for c in request.plan] == [(0, 9), (8, 17)]
    calls, pipeline_call = [], type(model.pipeline).__call__

    @functools.wraps(pipeline_call)
    def recorded(self, **kwargs):
        out = pipeline_call(self, **kwargs)
        calls.append((kwargs, to_uint8(out.frames[0])))
        return out
    monkeypatch.setattr(type(model.pipeline), "__call__", recorded)
    frames = model.render(request)
    assert frames.shape == (17, 32, 32, 3)
    (first, first_frames), (second, _) = calls
    # the second chunk starts from the first chunk's frame 8, its own first frame
    assert np.array_equal(np.asarray(second["image"]), first_frames[8])
    assert "last_image" not in first and np.array_equal(np.asarray(second["last_image"]),
                                                        np.asarray(Image.open(images["last_image"]).convert("RGB")))


def test_a_chained_image_row_renders_through_render_run(ray_session, images, tmp_path):
    rows = [dict(id="kite", prompt="a red kite", image=images["image"], last_image=images["last_image"],
                 num_frames=17, num_inference_steps=2, params='{"chunk_window": 9}'),
            dict(id="short", prompt="a lighthouse", image=images["image"], num_inference_steps=2)]
    out = tmp_path / "out"
    summary = run(RunConfig(tables=(str(write_table(tmp_path / "t.parquet", rows)),), out=out, model=I2V,
                            actors=2, threads_per_actor=1))
    records = check_invariants(out, ["kite", "short"], summary.exit_code)
    assert summary.counts == {"ok": 2}
    kite = records["kite"]
    assert (kite["num_frames"], kite["chunks"], kite["chunk_mode"]) == (17, 2, "chain")
    assert all(np.isfinite(kite["seams"])) and records["short"]["num_frames"] == 9


def test_render_models_lists_the_family_its_knobs_and_checkpoints():
    result = CliRunner().invoke(main, ["models"])
    assert result.exit_code == 0, result.output
    listed = result.output.split("wan2.2  (WanPipeline)", 1)[1]
    for line in ("presets:    tiny-wan2.2, random-wan2.2", "defaults:   81 frames, 832x480, 40 steps, 16 fps",
                 "params.guidance_scale_2: float", "params.cache: dict (first_block|taylorseer|mag|pab)",
                 "checkpoint: Wan-AI/Wan2.2-T2V-A14B-Diffusers"):
        assert line in listed
