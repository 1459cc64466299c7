"""ModelScope and Zeroscope (TextToVideoSDPipeline): parity with the plain diffusers calls, video-to-video,
Zeroscope's two-stage upscale, knobs, the CLI on a real local Ray, and checkpoint folders."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from diffusers import DPMSolverMultistepScheduler, VideoToVideoSDPipeline
from diffusers.utils import load_video
from PIL import Image

import renderer
from conftest import count, plain_uint8, read_metadata, write_table
from jobs.cli import main
from renderer.catalog import resolve_model
from renderer.errors import RowRejected
from renderer.families import text_to_video_sd
from renderer.families.components import seeded_build
from renderer.testing.videos import read_mp4
from renderer.video import write_mp4

pytestmark = pytest.mark.usefixtures("one_thread")


def params(**knobs) -> str:
    return json.dumps(knobs)


def same_weights(a, b) -> bool:
    pairs = [(getattr(a, name).state_dict(), getattr(b, name).state_dict()) for name in ("unet", "vae", "text_encoder")]
    return all(x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x) for x, y in pairs)


@pytest.fixture(scope="module")
def modelscope():
    return renderer.load("tiny-modelscope")


@pytest.fixture(scope="module")
def zeroscope():
    return renderer.load("tiny-zeroscope")


@pytest.fixture
def video_file(tmp_path):
    """8 frames of 64x64 moving stripes as an H.264 mp4."""
    y, x = np.mgrid[0:64, 0:64]
    frames = np.stack([np.stack([(x * 4 + 16 * i) % 256, (y * 4) % 256, np.full_like(x, 40 + 20 * i)], -1)
                       for i in range(8)]).astype(np.uint8)
    path = tmp_path / "clip.mp4"
    write_mp4(frames, path, fps=8)
    return path


def test_modelscope_row_equals_the_plain_diffusers_call(modelscope):
    frames = modelscope.render({"id": "p", "prompt": "a red kite", "negative_prompt": "fog", "seed": 1234,
                                "num_frames": 8, "params": params(eta=0.5)})
    expected = modelscope.pipeline(prompt="a red kite", negative_prompt="fog", num_frames=8, height=64, width=64,
                                   num_inference_steps=4, guidance_scale=9.0, eta=0.5,
                                   generator=torch.Generator("cpu").manual_seed(1234), output_type="np").frames[0]
    assert frames.dtype == np.uint8 and frames.shape == (8, 64, 64, 3)
    assert np.array_equal(frames, plain_uint8(expected))


def test_zeroscope_row_with_the_guides_scheduler_equals_the_plain_call(zeroscope):
    frames = zeroscope.render({"prompt": "Darth Vader surfing a wave", "seed": 7, "num_frames": 6, "height": 48,
                               "width": 80, "params": params(scheduler="dpm++")})
    pipe = zeroscope.pipeline
    pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)
    expected = pipe("Darth Vader surfing a wave", num_frames=6, height=48, width=80, num_inference_steps=4,
                    generator=torch.Generator("cpu").manual_seed(7), output_type="np").frames[0]
    assert frames.shape == (6, 48, 80, 3)
    assert np.array_equal(frames, plain_uint8(expected))


def test_video_row_is_plain_video_to_video(modelscope, video_file):
    frames = modelscope.render({"prompt": "snow", "video": str(video_file), "num_frames": 8, "seed": 3,
                                "params": params(strength=0.75)})
    v2v = VideoToVideoSDPipeline(**modelscope.pipeline.components)
    expected = v2v("snow", video=load_video(str(video_file)), strength=0.75, num_inference_steps=4, guidance_scale=9.0,
                   generator=torch.Generator("cpu").manual_seed(3), output_type="np").frames[0]
    assert frames.shape == (8, 64, 64, 3)
    assert np.array_equal(frames, plain_uint8(expected))


def test_upscale_is_the_guides_two_stages_with_one_generator(zeroscope):
    """Stage 1 at from_width x from_height, frames resized to the row's size, stage 2 continues the same generator."""
    frames = zeroscope.render({"prompt": "a lighthouse", "seed": 9, "num_frames": 6, "width": 128, "height": 96,
                               "params": params(upscale={"from_width": 64, "from_height": 48, "strength": 0.75})})
    pipe = zeroscope.pipeline
    generator = torch.Generator("cpu").manual_seed(9)
    video_frames = pipe("a lighthouse", num_frames=6, height=48, width=64, num_inference_steps=4,
                        generator=generator).frames[0]
    video = [Image.fromarray(frame).resize((128, 96)) for frame in plain_uint8(video_frames)]
    upscaler = VideoToVideoSDPipeline(**pipe.components)
    expected = upscaler("a lighthouse", video=video, strength=0.75, num_inference_steps=4, guidance_scale=9.0,
                        generator=generator).frames[0]
    assert frames.shape == (6, 96, 128, 3)
    assert np.array_equal(frames, plain_uint8(expected))


def test_knobs_reach_the_pipeline(modelscope, zeroscope, video_file):
    video_row = {"prompt": "snow", "video": str(video_file), "num_frames": 8, "seed": 3}
    assert not np.array_equal(modelscope.render({**video_row, "params": params(strength=0.5)}),
                              modelscope.render({**video_row, "params": params(strength=0.9)}))

    text = {"prompt": "dunes", "seed": 5, "num_frames": 4, "width": 96, "height": 64}
    plain = zeroscope.render(text)
    upscaled = zeroscope.render({**text, "params": params(upscale={"from_width": 48, "from_height": 32})})
    assert upscaled.shape == plain.shape == (4, 64, 96, 3) and not np.array_equal(upscaled, plain)
    assert not np.array_equal(plain, zeroscope.render({**text, "params": params(scheduler="euler")}))
    assert np.array_equal(plain, zeroscope.render(text))  # the scheduler choice does not leak to the next row


def test_upscale_model_is_loaded_once_and_configured_per_row(zeroscope):
    row = {"prompt": "dunes", "seed": 5, "num_frames": 4, "width": 96, "height": 64}
    own = zeroscope.render({**row, "params": params(upscale={"from_width": 48, "from_height": 32})})
    named = {"from_width": 48, "from_height": 32, "model": "tiny-zeroscope"}
    # the same preset rebuilt from the same seed: identical weights, so identical frames
    assert np.array_equal(own, zeroscope.render({**row, "params": params(upscale=named)}))
    euler = zeroscope.render({**row, "params": params(upscale=named, scheduler="euler")})
    assert not np.array_equal(own, euler)
    assert np.array_equal(own, zeroscope.render({**row, "params": params(upscale=named)}))  # no scheduler leak
    assert [key for key in text_to_video_sd._UPSCALERS if key[0] == "tiny-zeroscope"] == [("tiny-zeroscope", "cpu")]


@pytest.mark.parametrize("row_params, column", [
    ({"motion_bucket_id": 40}, "params.motion_bucket_id"),  # unknown key
    ({"eta": "high"}, "params.eta"),  # wrong type
    ({"strength": 0.5}, "params.strength"),  # video-to-video only
    ({"upscale": {"scale": 2}}, "params.upscale.scale"),
    ({"upscale": {"strength": "0.6"}}, "params.upscale.strength"),
    ({"upscale": {"from_width": 60}}, "params.upscale.from_width"),
    ({"upscale": {"model": "tiny-svd"}}, "params.upscale.model"),
    ({"upscale": {"model": "no model here"}}, "params.upscale.model"),
    ({"upscale": {"strength": 0.1}}, "params.upscale.strength"),  # 0.1 x 4 steps: no denoising step
])
def test_bad_knobs_are_rejected(zeroscope, row_params, column):
    with pytest.raises(RowRejected, match=column.replace(".", r"\.") + "="):
        zeroscope.render({"prompt": "x", "num_frames": 2, "params": json.dumps(row_params)})


def test_upscale_is_zeroscope_only_and_text_to_video_only(modelscope, zeroscope, video_file):
    with pytest.raises(RowRejected, match="params.upscale"):
        modelscope.render({"prompt": "x", "params": params(upscale=True)})
    with pytest.raises(RowRejected, match="params.upscale"):
        zeroscope.render({"prompt": "x", "video": str(video_file), "num_frames": 8, "params": params(upscale=True)})


def test_cli_renders_text_video_and_upscale_rows(ray_session, tmp_path, video_file):
    rows = [
        {"id": "t2v", "prompt": "a red kite", "model": "tiny-modelscope", "num_frames": 8, "fps": 10},
        {"id": "v2v", "prompt": "snow", "model": "tiny-modelscope", "video": video_file.name, "num_frames": 8,
         "params": params(strength=0.6)},
        {"id": "up", "prompt": "a lighthouse", "model": "tiny-zeroscope", "num_frames": 6, "width": 96, "height": 64,
         "params": params(upscale={"from_width": 48, "from_height": 32, "strength": 0.6})},
        {"id": "bad", "prompt": "x", "model": "tiny-modelscope", "num_frames": 4, "params": params(strength=0.5)},
    ]
    table = write_table(tmp_path / "t.parquet", rows)  # `video` is relative to the table's folder
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["run", str(table), "--out", str(out)])
    records = read_metadata(out)
    for row_id, (frame_count, height, width, fps) in {"t2v": (8, 64, 64, 10), "v2v": (8, 64, 64, 8),
                                                  "up": (6, 64, 96, 8)}.items():
        assert records[row_id]["status"] == "ok", (records[row_id], result.output)
        frames, rate = read_mp4(out / records[row_id]["video_path"])
        assert frames.shape == (frame_count, height, width, 3) and rate == fps
    assert records["bad"]["status"] == "rejected" and "params.strength" in records["bad"]["error"]


def test_saved_zeroscope_folder_loads_and_serves_as_upscaler(zeroscope, tmp_path):
    folder = tmp_path / "my-zeroscope"
    zeroscope.pipeline.save_pretrained(folder)
    assert list(folder.rglob("*.safetensors")) and not list(folder.rglob("*.bin"))
    spec = resolve_model(str(folder))
    assert (spec.family.name, spec.source, spec.window, spec.defaults.width, spec.defaults.height) == (
        "zeroscope", "checkpoint", 24, 576, 320)
    model = renderer.load(str(folder))
    assert same_weights(model.pipeline, zeroscope.pipeline)
    # shapes only: a loaded model may lay activations out differently on the CPU (float noise the
    # denoising loop amplifies), so its frames are not bit-equal to the preset's
    row = {"prompt": "dunes", "seed": 5, "num_frames": 4, "width": 96, "height": 64}
    upscale = {"from_width": 48, "from_height": 32}
    assert model.render({**row, "params": params(upscale=upscale)}).shape == (4, 64, 96, 3)
    # zeroscope_v2_XL is saved as a VideoToVideoSDPipeline folder: no family loads it as a row's model, the
    # upscaler loads it (and a TextToVideoSDPipeline folder) straight into VideoToVideoSDPipeline
    VideoToVideoSDPipeline(**zeroscope.pipeline.components).save_pretrained(tmp_path / "xl")
    with pytest.raises(RowRejected, match="VideoToVideoSDPipeline"):
        resolve_model(str(tmp_path / "xl"))
    for upscaler in (folder, tmp_path / "xl"):
        frames = model.render({**row, "params": params(upscale={**upscale, "model": str(upscaler)})})
        assert frames.shape == (4, 64, 96, 3)
        loaded, _ = text_to_video_sd._UPSCALERS[str(upscaler), "cpu"]
        assert type(loaded) is VideoToVideoSDPipeline and same_weights(loaded, zeroscope.pipeline)


def test_saved_modelscope_folder_loads_and_renders(modelscope, tmp_path):
    folder = tmp_path / "ms"
    modelscope.pipeline.save_pretrained(folder)
    # one pipeline class, two families: a bare folder takes the first (zeroscope), FAMILY:LOCATION picks one
    assert resolve_model(str(folder)).family.name == "zeroscope"
    spec = resolve_model(f"modelscope:{folder}")
    assert (spec.family.name, spec.source, spec.window, spec.defaults.width) == ("modelscope", "checkpoint", 16, 256)
    model = renderer.load(f"modelscope:{folder}")
    assert same_weights(model.pipeline, modelscope.pipeline)
    row = {"prompt": "a red kite", "num_frames": 8, "height": 64, "width": 64, "num_inference_steps": 3}
    assert model.render(row).shape == (8, 64, 64, 3)


def test_random_presets_have_the_published_sizes():
    for preset in ("random-modelscope", "random-zeroscope"):
        with seeded_build("meta"):
            parts = resolve_model(preset).family.components("random")
        assert count(parts["unet"]) / 1e9 == pytest.approx(1.41, abs=0.01)  # ms-1.7b UNet3D
        assert 3.3e8 < count(parts["text_encoder"]) < 3.5e8  # OpenCLIP ViT-H/14 text tower, 23 layers
        assert 8.3e7 < count(parts["vae"]) < 8.4e7  # SD VAE
        assert parts["unet"].config.cross_attention_dim == parts["text_encoder"].config.hidden_size == 1024
