"""Text2Video-Zero (SD1.5 and SDXL): parity with the plain diffusers call, knobs, CLI, saved folders."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import renderer
from conftest import count, plain_uint8, read_metadata, write_table
from jobs.cli import main
from renderer.catalog import resolve_model
from renderer.errors import RowRejected
from renderer.families.components import clip_image_processor, seeded_build
from renderer.testing.videos import read_mp4


@pytest.fixture(scope="module")
def t2v_zero():
    return renderer.load("tiny-t2v-zero")


@pytest.fixture(scope="module")
def t2v_zero_sdxl():
    return renderer.load("tiny-t2v-zero-sdxl")


def test_t2v_zero_row_equals_the_plain_diffusers_call(t2v_zero):
    frames = t2v_zero.render({"id": "p", "prompt": "a panda playing guitar", "negative_prompt": "fog", "seed": 1234})
    # the tiny defaults: 8 frames of 64x64, 4 steps, so t0/t1 are the pipeline's 44/47 of 50 steps scaled to 2/3
    result = t2v_zero.pipeline(prompt="a panda playing guitar", negative_prompt="fog", video_length=8, height=64,
                               width=64, num_inference_steps=4, guidance_scale=7.5, t0=2, t1=3,
                               generator=torch.Generator("cpu").manual_seed(1234), output_type="np").images
    assert frames.dtype == np.uint8 and frames.shape == (8, 64, 64, 3)
    assert np.array_equal(frames, plain_uint8(result))


def test_t2v_zero_params_reach_the_call_unchanged(t2v_zero):
    params = '{"motion_field_strength_x": 30, "motion_field_strength_y": -6.5, "t0": 1, "t1": 2, "eta": 0.4}'
    frames = t2v_zero.render({"id": "p", "prompt": "a horse galloping", "seed": 9, "num_frames": 4,
                              "num_inference_steps": 3, "guidance_scale": 5.0, "params": params})
    result = t2v_zero.pipeline(prompt="a horse galloping", video_length=4, height=64, width=64, num_inference_steps=3,
                               guidance_scale=5.0, motion_field_strength_x=30.0, motion_field_strength_y=-6.5, t0=1,
                               t1=2, eta=0.4, generator=torch.Generator("cpu").manual_seed(9), output_type="np").images
    assert np.array_equal(frames, plain_uint8(result))


def test_t2v_zero_knobs_change_the_video_and_do_not_leak(t2v_zero):
    row = {"id": "k", "prompt": "a boat on a lake", "seed": 5, "num_frames": 4, "num_inference_steps": 3}
    default = t2v_zero.render(row)
    assert not np.array_equal(default, t2v_zero.render({**row, "params": '{"motion_field_strength_x": 40.0}'}))
    assert not np.array_equal(default, t2v_zero.render({**row, "params": '{"t0": 0, "t1": 2}'}))
    assert not np.array_equal(default, t2v_zero.render({**row, "params": '{"eta": 1.0}'}))
    assert np.array_equal(default, t2v_zero.render(row))  # nothing a row asked for stays on the pipeline


@pytest.mark.parametrize(("params", "steps", "key", "rule"), [
    ('{"t1": 4}', 4, "params.t1", "must be < num_inference_steps"),
    ('{"t0": 3, "t1": 2}', 4, "params.t0", "needs t0 <= t1"),
    ('{"t0": 4}', 4, "params.t0", r"needs t0 <= t1 \(t0=4, t1=3 for 4 steps\)"),
    ('{"t0": -1}', 4, "params.t0", "must be >= 0"),
    ('{"t1": 2.5}', 4, "params.t1", "must be int"),
    ('{"motion_field_strength_x": "fast"}', 4, "params.motion_field_strength_x", "must be float"),
    ('{"strength": 0.3}', 4, "params.strength", "not a parameter"),
    ('{"frame_ids": [0, 1]}', 4, "params.frame_ids", "not a parameter"),
    ('{"video_length": 4}', 4, "params.video_length", "duplicates the typed column 'num_frames'"),
])
def test_t2v_zero_bad_params_are_rejected(t2v_zero, params, steps, key, rule):
    with pytest.raises(RowRejected, match=rf"{key}=.*{rule}"):
        t2v_zero.render({"prompt": "x", "num_frames": 2, "num_inference_steps": steps, "params": params})


def test_t2v_zero_needs_classifier_free_guidance(t2v_zero):
    with pytest.raises(RowRejected, match="guidance_scale=1.0: must be > 1"):
        t2v_zero.render({"prompt": "x", "num_frames": 2, "guidance_scale": 1.0})


def test_t2v_zero_sdxl_row_equals_the_plain_diffusers_call(t2v_zero_sdxl):
    frames = t2v_zero_sdxl.render({"id": "p", "prompt": "a panda dancing in Antarctica", "seed": 21, "num_frames": 4,
                                   "params": '{"motion_field_strength_y": 20.0, "t1": 2}'})
    result = t2v_zero_sdxl.pipeline(prompt="a panda dancing in Antarctica", video_length=4, height=64, width=64,
                                    num_inference_steps=4, guidance_scale=7.5, motion_field_strength_y=20.0, t0=1, t1=2,
                                    generator=torch.Generator("cpu").manual_seed(21), output_type="np").images
    assert frames.shape == (4, 64, 64, 3)
    assert np.array_equal(frames, plain_uint8(result))


def test_t2v_zero_sdxl_knobs(t2v_zero_sdxl):
    row = {"id": "k", "prompt": "dunes", "seed": 5, "num_frames": 3, "num_inference_steps": 2}
    default = t2v_zero_sdxl.render(row)
    assert not np.array_equal(default, t2v_zero_sdxl.render({**row, "params": '{"motion_field_strength_x": 60.0}'}))
    with pytest.raises(RowRejected,
                       match=r'params.eta=0.5: EulerDiscreteScheduler takes no eta; set params.scheduler to "ddim"'):
        t2v_zero_sdxl.render({**row, "params": '{"eta": 0.5}'})
    with pytest.raises(RowRejected, match="params.t1=2: must be < num_inference_steps"):
        t2v_zero_sdxl.render({**row, "params": '{"t1": 2}'})
    with pytest.raises(RowRejected, match="params.motion_field_strength_y=True: must be float"):
        t2v_zero_sdxl.render({**row, "params": '{"motion_field_strength_y": true}'})


def test_cli_renders_both_families_and_rejects_bad_timesteps(ray_session, tmp_path):
    fast = dict(prompt="a lantern in the rain", num_frames=3, height=64, width=48, num_inference_steps=2)
    rows = [dict(id="sd", model="tiny-t2v-zero", **fast), dict(id="xl", model="tiny-t2v-zero-sdxl", **fast),
            dict(id="bad", model="tiny-t2v-zero", params='{"t0": 1, "t1": 0}', **fast)]
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["run", str(write_table(tmp_path / "t.parquet", rows)), "--out", str(out)])
    assert result.exit_code == 1, result.output  # one row rejected, the others ok
    records = read_metadata(out)
    for row_id in ("sd", "xl"):
        assert records[row_id]["status"] == "ok"
        frames, fps = read_mp4(out / records[row_id]["video_path"])
        assert frames.shape == (3, 64, 48, 3) and fps == 4
    assert records["bad"]["status"] == "rejected" and "params.t0=1: needs t0 <= t1" in records["bad"]["error"]


def fresh(family: str):
    """The tiny preset as built: a pipeline that has rendered holds a copy of its last row's scheduler."""
    return renderer.load(f"tiny-{family}").pipeline


def test_saved_sdxl_folder_resolves_to_the_family_and_renders_the_same(t2v_zero_sdxl, tmp_path):
    folder = tmp_path / "my-t2v-zero-sdxl"
    fresh("t2v-zero-sdxl").save_pretrained(folder)
    assert list(folder.rglob("*.safetensors")) and not list(folder.rglob("*.bin"))
    spec = resolve_model(str(folder))
    assert ((spec.family.name, spec.source, spec.window, spec.defaults.height)
            == ("t2v-zero-sdxl", "checkpoint", 8, 1024))
    row = {"id": "s", "prompt": "a red kite", "seed": 3, "num_frames": 3, "height": 64, "width": 64,
           "num_inference_steps": 2, "params": '{"scheduler": "ddim", "eta": 0.5}'}
    frames = renderer.load(str(folder)).render(row)
    assert frames.shape == (3, 64, 64, 3)
    # same weights and scheduler; the loaded text encoder's projection differs in the last float bit
    assert np.abs(frames.astype(int) - t2v_zero_sdxl.render(row)).mean() < 0.1


def test_saved_t2v_zero_folder_resolves_to_the_family(tmp_path):
    folder = tmp_path / "my-t2v-zero"
    fresh("t2v-zero").save_pretrained(folder)
    assert list(folder.rglob("*.safetensors")) and not list(folder.rglob("*.bin"))
    spec = resolve_model(str(folder))
    assert (spec.family.name, spec.source, spec.window, spec.defaults.height) == ("t2v-zero", "checkpoint", 8, 512)


def test_saved_t2v_zero_folder_without_safety_checker_renders(tmp_path):
    fresh("t2v-zero").save_pretrained(tmp_path / "my-t2v-zero")
    frames = renderer.load(str(tmp_path / "my-t2v-zero")).render(
        {"prompt": "a red kite", "num_frames": 3, "height": 64, "width": 64, "num_inference_steps": 2})
    assert frames.shape == (3, 64, 64, 3)


def save_as_image_pipeline(family: str, folder) -> None:
    """The preset's parts saved as the image pipeline the real checkpoints declare (SD1.5 with its safety checker)."""
    import diffusers
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
    from transformers import CLIPConfig

    parts = dict(fresh(family).components)
    if family == "t2v-zero":
        tiny = dict(hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2)
        with seeded_build("cpu"):  # its concept thresholds start at 1, so it flags nothing
            vision = {**tiny, "image_size": 224, "patch_size": 32}
            checker = StableDiffusionSafetyChecker(CLIPConfig(text_config=tiny, projection_dim=32,
                                                              vision_config=vision))
        parts.update(safety_checker=checker, feature_extractor=clip_image_processor())
        diffusers.StableDiffusionPipeline(**parts).save_pretrained(folder)
    else:
        diffusers.StableDiffusionXLPipeline(**parts).save_pretrained(folder)


@pytest.mark.parametrize("family", ["t2v-zero", "t2v-zero-sdxl"])
def test_image_checkpoints_load_when_named_with_the_family(family, request, tmp_path):
    model = request.getfixturevalue(family.replace("-", "_"))
    save_as_image_pipeline(family, tmp_path / "ckpt")
    spec = resolve_model(f"{family}:{tmp_path / 'ckpt'}")
    assert (spec.family.name, spec.source, spec.window) == (family, "checkpoint", 8)
    row = {"id": "c", "prompt": "a red kite", "seed": 3, "num_frames": 3, "num_inference_steps": 2, "height": 64,
           "width": 64}
    frames = renderer.load(f"{family}:{tmp_path / 'ckpt'}").render(row)
    assert frames.shape == (3, 64, 64, 3)
    assert np.abs(frames.astype(int) - model.render(row)).mean() < 0.1  # the same model


def test_random_presets_have_the_published_sizes():
    with seeded_build("meta"):
        sd = resolve_model("random-t2v-zero").family.components("random")
        xl = resolve_model("random-t2v-zero-sdxl").family.components("random")
    assert 8.5e8 < count(sd["unet"]) < 8.7e8 and 1.2e8 < count(sd["text_encoder"]) < 1.3e8  # SD1.5, CLIP ViT-L
    assert 2.55e9 < count(xl["unet"]) < 2.58e9  # SDXL base UNet
    assert count(xl["text_encoder"]) / 1e6 == pytest.approx(125, abs=5)
    assert count(xl["text_encoder_2"]) / 1e6 == pytest.approx(695, abs=5)  # ViT-L, bigG
    assert 8.3e7 < count(xl["vae"]) < 8.4e7 and xl["vae"].config.scaling_factor == 0.13025
    assert type(xl["scheduler"]).__name__ == "EulerDiscreteScheduler"
