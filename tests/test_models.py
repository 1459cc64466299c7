"""Model loading and parity: what the renderer produces is the plain diffusers call, bit for bit."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

import renderer
from conftest import count, plain_uint8, read_metadata, write_table
from jobs.cli import main
from renderer.catalog import resolve_model
from renderer.errors import RowRejected
from renderer.families.components import seeded_build
from renderer.testing.videos import read_mp4


@pytest.fixture(scope="module")
def animatediff():
    return renderer.load("tiny-animatediff")


@pytest.fixture(scope="module")
def svd():
    return renderer.load("tiny-svd")


def test_animatediff_row_equals_the_plain_diffusers_call(animatediff):
    frames = animatediff.render({"id": "p", "prompt": "a red kite", "negative_prompt": "fog", "seed": 1234})
    expected = animatediff.pipeline(prompt="a red kite", negative_prompt="fog", num_frames=16, height=64, width=64,
                                    num_inference_steps=4, generator=torch.Generator("cpu").manual_seed(1234),
                                    output_type="np").frames[0]
    assert frames.dtype == np.uint8 and frames.shape == (16, 64, 64, 3)
    assert np.array_equal(frames, plain_uint8(expected))


def test_svd_row_equals_the_plain_diffusers_call(svd, image_file):
    frames = svd.render({"id": "p", "image": str(image_file), "seed": 77, "num_frames": 8,
                         "params": '{"motion_bucket_id": 40}'})
    image = Image.open(image_file).convert("RGB")
    expected = svd.pipeline(image, height=64, width=64, num_frames=8, num_inference_steps=4, motion_bucket_id=40,
                            generator=torch.Generator("cpu").manual_seed(77), output_type="np").frames[0]
    assert frames.shape == (8, 64, 64, 3)
    assert np.array_equal(frames, plain_uint8(expected))


def test_knobs_reach_the_pipeline(svd, animatediff, image_file):
    base = {"id": "k", "image": str(image_file), "seed": 5, "num_frames": 4}
    assert not np.array_equal(svd.render(base), svd.render({**base, "params": '{"motion_bucket_id": 255}'}))
    text = {"id": "k", "prompt": "dunes", "seed": 5, "num_frames": 4}
    default = animatediff.render(text)
    assert not np.array_equal(default, animatediff.render({**text, "params": '{"scheduler": "euler"}'}))
    assert np.array_equal(default, animatediff.render(text))  # the scheduler choice does not leak to the next row


def test_svd_guidance_ramp_that_ends_unguided_is_rejected_before_the_pipeline_fails_on_it(svd, image_file):
    image = Image.open(image_file).convert("RGB")
    # the plain call encodes the image unguided but guides the steps: it cannot render this row
    with pytest.raises(RuntimeError):
        svd.pipeline(image, height=64, width=64, num_frames=4, num_inference_steps=2, min_guidance_scale=2.0,
                     max_guidance_scale=1.0, generator=torch.Generator("cpu").manual_seed(1), output_type="np")
    row = {"id": "g", "image": str(image_file), "seed": 1, "num_frames": 4, "guidance_scale": 1.0}
    with pytest.raises(RowRejected, match="params.min_guidance_scale=2.0"):
        svd.render({**row, "params": '{"min_guidance_scale": 2.0}'})
    assert svd.render({**row, "guidance_scale": 1.5, "params": '{"min_guidance_scale": 2.0}'}).shape == (4, 64, 64, 3)


def test_unknown_knob_is_rejected_by_the_api_too(animatediff):
    with pytest.raises(RowRejected, match="params.strength"):
        animatediff.render({"prompt": "x", "params": '{"strength": 0.3}'})


def random_components(preset: str) -> dict:
    """A full-size preset's components on the meta device: the architecture without allocating weights."""
    with seeded_build("meta"):
        return resolve_model(preset).family.components("random")


def test_random_presets_have_the_published_sizes():
    svd_xt = random_components("random-svd-xt")
    # SVD-XT UNet
    assert count(svd_xt["unet"]) / 1e9 == pytest.approx(1.52, abs=0.02) and svd_xt["unet"].config.num_frames == 25
    assert 6.2e8 < count(svd_xt["image_encoder"]) < 6.4e8  # CLIP ViT-H/14 vision tower
    ad = random_components("random-animatediff")
    assert 8.5e8 < count(ad["unet"]) < 8.7e8  # SD1.5 UNet
    assert 4.0e8 < count(ad["motion_adapter"]) < 4.6e8  # motion adapter v1-5-2
    assert count(ad["text_encoder"]) / 1e6 == pytest.approx(125, abs=5)  # CLIP ViT-L/14 text encoder


def test_saved_checkpoint_folder_loads_and_renders(ray_session, animatediff, tmp_path):
    folder = tmp_path / "my-animatediff"
    animatediff.pipeline.save_pretrained(folder)
    assert list(folder.rglob("*.safetensors")) and not list(folder.rglob("*.bin"))
    spec = resolve_model(str(folder))
    assert (spec.family.name, spec.source, spec.window) == ("animatediff", "checkpoint", 16)

    table = write_table(tmp_path / "t.parquet", [{"id": "c", "prompt": "a lantern", "num_frames": 8, "height": 64,
                                                  "width": 64, "num_inference_steps": 3}])
    result = CliRunner().invoke(main, ["run", str(table), "--out", str(tmp_path / "out"), "--model", str(folder)])
    assert result.exit_code == 0, result.output
    record = read_metadata(tmp_path / "out")["c"]
    assert record["status"] == "ok" and record["model"] == str(folder) and record["family"] == "animatediff"
    frames, _ = read_mp4(tmp_path / "out" / record["video_path"])
    assert frames.shape == (8, 64, 64, 3)


def test_svd_checkpoint_window_comes_from_its_unet(tmp_path, image_file):
    renderer.load("tiny-svd-xt").pipeline.save_pretrained(tmp_path / "xt")
    spec = resolve_model(str(tmp_path / "xt"))
    assert (spec.family.name, spec.window, spec.defaults.num_frames) == ("svd", 25, 25)
    frames = renderer.load(str(tmp_path / "xt")).render(
        {"image": str(image_file), "height": 64, "width": 64, "num_inference_steps": 2})
    assert frames.shape == (25, 64, 64, 3)


def test_pickle_only_checkpoints_are_refused(tmp_path):
    folder = tmp_path / "pickled"
    renderer.load("tiny-animatediff").pipeline.save_pretrained(folder, safe_serialization=False)
    with pytest.raises(Exception, match="safetensors"):
        renderer.load(str(folder))


def test_a_family_can_be_named_for_a_checkpoint_folder(tmp_path):
    folder = tmp_path / "xt"
    renderer.load("tiny-svd-xt").pipeline.save_pretrained(folder)
    spec = resolve_model(f"svd-xt:{folder}")
    assert (spec.family.name, spec.location, spec.window) == ("svd-xt", str(folder), 25)
    with pytest.raises(RowRejected, match="family 'animatediff' cannot load a StableVideoDiffusionPipeline"):
        resolve_model(f"animatediff:{folder}")


def test_render_models_lists_every_preset_with_its_variants():
    from click.testing import CliRunner

    from jobs.cli import main
    from renderer.catalog import preset_names

    listing = CliRunner().invoke(main, ["models"]).output
    # every name resolve_model takes, the published sizes of a family included
    assert all(name in listing for name in preset_names())
    assert "random-wan-14b  (WanPipeline, 81 frames, 1280x720)" in listing
