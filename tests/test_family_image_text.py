"""I2VGen-XL and PIA: image + prompt to video, bit for bit the plain diffusers calls."""
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from diffusers import I2VGenXLPipeline
from PIL import Image

import renderer
from conftest import count, plain_uint8, read_metadata, write_table
from jobs.cli import main
from renderer.catalog import resolve_model
from renderer.errors import RowRejected
from renderer.families.components import seeded_build
from renderer.testing.videos import read_mp4

PROMPT, NEGATIVE = "a lantern swaying in the wind", "blurry"


@pytest.fixture(scope="module")
def i2vgenxl():
    return renderer.load("tiny-i2vgenxl")


@pytest.fixture(scope="module")
def pia():
    return renderer.load("tiny-pia")


def i2vgenxl_row(image_file, **extra) -> dict:
    return {"id": "i", "prompt": PROMPT, "image": str(image_file), "seed": 11, "num_frames": 4,
            "num_inference_steps": 2, **extra}


def pia_row(image_file, **extra) -> dict:
    return {"id": "p", "prompt": PROMPT, "image": str(image_file), "seed": 12, "num_frames": 4,
            "num_inference_steps": 2, **extra}


def rejected_key(model, row) -> str:
    with pytest.raises(RowRejected) as info:
        model.render(row)
    return str(info.value).partition("=")[0]


def test_i2vgenxl_default_call_needs_the_text_model_shim(image_file):
    # diffusers 0.42 reads text_encoder.text_model (gone in transformers 5) under its default clip_skip=1
    with seeded_build("cpu"):
        bare = I2VGenXLPipeline(**resolve_model("tiny-i2vgenxl").family.components("tiny"))
    with pytest.raises(AttributeError, match="text_model"):
        bare(prompt=PROMPT, image=Image.open(image_file).convert("RGB"), height=64, width=64, num_frames=2,
             num_inference_steps=1, output_type="np")


def test_i2vgenxl_row_equals_the_plain_default_call(i2vgenxl, image_file):
    frames = i2vgenxl.render(i2vgenxl_row(image_file, negative_prompt=NEGATIVE))
    image = Image.open(image_file).convert("RGB")
    torch.manual_seed(11)  # the pipeline samples the image latents with the global RNG, as the guide seeds it
    expected = i2vgenxl.pipeline(prompt=PROMPT, image=image, negative_prompt=NEGATIVE, height=64, width=64,
                                 num_frames=4, num_inference_steps=2, guidance_scale=9.0,
                                 generator=torch.Generator("cpu").manual_seed(11), output_type="np").frames[0]
    assert frames.shape == (4, 64, 64, 3)
    assert np.array_equal(frames, plain_uint8(expected))


def test_i2vgenxl_knobs_reach_the_pipeline(i2vgenxl, image_file):
    row = i2vgenxl_row(image_file)
    default = i2vgenxl.render(row)
    assert np.array_equal(default, i2vgenxl.render(row))  # the global-RNG draw is seeded from the row
    assert not np.array_equal(default, i2vgenxl.render({**row, "params": '{"clip_skip": 0}'}))
    assert not np.array_equal(default, i2vgenxl.render({**row, "fps": 4}))  # the row's fps is target_fps
    assert not np.array_equal(default, i2vgenxl.render({**row, "params": '{"scheduler": "dpm++"}'}))
    assert np.array_equal(default, i2vgenxl.render(row))


@pytest.mark.parametrize("params, key", [
    ('{"target_fps": 8}', "params.target_fps"),  # set through the typed fps column
    ('{"motion_scale": 1}', "params.motion_scale"),
    ('{"clip_skip": "1"}', "params.clip_skip"),
    ('{"scheduler": "pndm"}', "params.scheduler"),
])
def test_i2vgenxl_bad_params_are_rejected(i2vgenxl, image_file, params, key):
    assert rejected_key(i2vgenxl, i2vgenxl_row(image_file, params=params)) == key


def test_pia_row_equals_the_plain_diffusers_call(pia, image_file):
    frames = pia.render(pia_row(image_file, negative_prompt=NEGATIVE, height=48, params='{"motion_scale": 3}'))
    image = Image.open(image_file).convert("RGB").resize((64, 48))  # the guide resizes the image to the video
    expected = pia.pipeline(image=image, prompt=PROMPT, negative_prompt=NEGATIVE, num_frames=4, height=48, width=64,
                            num_inference_steps=2, motion_scale=3, generator=torch.Generator("cpu").manual_seed(12),
                            output_type="np").frames[0]
    assert pia.pipeline.unet.config.in_channels == 9  # latents, mask and image latents
    assert frames.shape == (4, 48, 64, 3)
    assert np.array_equal(frames, plain_uint8(expected))


def test_pia_knobs_reach_the_pipeline_and_free_init_does_not_leak(pia, image_file):
    row = pia_row(image_file)
    default = pia.render(row)
    assert not np.array_equal(default, pia.render({**row, "params": '{"motion_scale": 7}'}))
    assert not np.array_equal(default, pia.render({**row, "params": '{"clip_skip": 2}'}))
    assert not np.array_equal(default, pia.render({**row, "params": '{"strength": 0.5, "scheduler": "euler"}'}))
    free_init = pia.render({**row, "params": '{"free_init": {"num_iters": 2, "method": "gaussian"}}'})
    assert not np.array_equal(default, free_init)
    assert np.array_equal(default, pia.render(row))


@pytest.mark.parametrize("params, key", [
    ('{"free_init": {"method": "box"}}', "params.free_init.method"),  # not implemented by diffusers
    ('{"free_init": {"num_iters": 0}}', "params.free_init.num_iters"),
    ('{"decode_chunk_size": 2}', "params.decode_chunk_size"),  # PIAPipeline has no such argument
    ('{"motion_scale": 1.5}', "params.motion_scale"),
    ('{"motion_scale": 9}', "params.motion_scale"),
    ('{"strength": 0.4}', "params.strength"),  # int(2 * 0.4) == 0 denoising steps
])
def test_pia_bad_params_are_rejected(pia, image_file, params, key):
    assert rejected_key(pia, pia_row(image_file, params=params)) == key


def test_rows_need_an_image_and_a_prompt(i2vgenxl, pia, image_file):
    for model, row in ((i2vgenxl, i2vgenxl_row(image_file)), (pia, pia_row(image_file))):
        assert rejected_key(model, {k: v for k, v in row.items() if k != "image"}) == "image"
        assert rejected_key(model, {k: v for k, v in row.items() if k != "prompt"}) == "prompt"


def test_rows_render_through_the_cli(ray_session, image_file, tmp_path):
    rows = [i2vgenxl_row(image_file, id="i2v", model="tiny-i2vgenxl", num_frames=5, fps=10),
            pia_row(image_file, id="pia", model="tiny-pia")]
    table = write_table(tmp_path / "t.parquet", rows)
    result = CliRunner().invoke(main, ["run", str(table), "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    records = read_metadata(tmp_path / "out")
    for row_id, num_frames, fps in (("i2v", 5, 10), ("pia", 4, 8)):
        assert records[row_id]["status"] == "ok", records[row_id]["error"]
        frames, rate = read_mp4(tmp_path / "out" / records[row_id]["video_path"])
        assert frames.shape == (num_frames, 64, 64, 3) and rate == fps


@pytest.mark.parametrize("name, row_of", [("i2vgenxl", i2vgenxl_row), ("pia", pia_row)])
def test_saved_checkpoint_folder_loads_and_renders_the_same(request, tmp_path, image_file, name, row_of):
    model = request.getfixturevalue(name)
    folder = tmp_path / name
    model.pipeline.save_pretrained(folder)
    spec = resolve_model(str(folder))
    assert (spec.family.name, spec.source, spec.window) == (name, "checkpoint", 16)
    row = row_of(image_file, height=64, width=64)  # a checkpoint's defaults are the real model's
    # the loaded pipeline gets the text_model shim too: I2VGen-XL's default clip_skip needs it
    loaded = renderer.load(str(folder)).render(row)
    assert loaded.shape == (4, 64, 64, 3)
    # same weights; presets are built in train mode, checkpoints load in eval mode (the VAE differs in the last bit)
    assert np.abs(loaded.astype(int) - model.render(row)).max() <= 1


def test_random_presets_have_the_published_sizes():
    with seeded_build("meta"):
        i2v = resolve_model("random-i2vgenxl").family.components("random")
        pia = resolve_model("random-pia").family.components("random")
    assert count(i2v["unet"]) / 1e9 == pytest.approx(1.42, abs=0.02)  # ali-vilab/i2vgen-xl UNet (2.84 GB in fp16)
    assert 3.3e8 < count(i2v["text_encoder"]) < 3.5e8  # OpenCLIP ViT-H/14 text tower, 23 layers
    assert 6.2e8 < count(i2v["image_encoder"]) < 6.4e8  # CLIP ViT-H/14 vision tower
    assert 8.5e8 < count(pia["unet"]) < 8.7e8  # SD1.5 UNet
    assert 4.1e8 < count(pia["motion_adapter"]) < 4.2e8  # PIA condition adapter: no motion mid block
    assert pia["motion_adapter"].config.conv_in_channels == 9
