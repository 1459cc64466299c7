"""Text2Video-Zero's video recipes (ControlNet, InstructPix2Pix with cross-frame attention) as the guide writes them."""
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from diffusers.pipelines.deprecated.text_to_video_synthesis.pipeline_text_to_video_zero import CrossFrameAttnProcessor

import renderer
from conftest import count, plain_uint8, read_metadata, write_table
from jobs.cli import main
from renderer.catalog import resolve_model
from renderer.errors import RowRejected
from renderer.families.components import seeded_build
from renderer.inputs import load_video
from renderer.testing.videos import read_mp4
from renderer.video import write_mp4

FAST = {"num_frames": 4, "num_inference_steps": 2}


@pytest.fixture(scope="module")
def edges(tmp_path_factory) -> Path:
    """A stand-in edge map video: a white square moving right on black, 6 frames of 64x64."""
    frames = np.zeros((6, 64, 64, 3), np.uint8)
    for i, frame in enumerate(frames):
        frame[20:40, 4 + 6 * i:24 + 6 * i] = 255
    path = tmp_path_factory.mktemp("videos") / "edges.mp4"
    write_mp4(frames, path, fps=4)
    return path


@pytest.fixture(scope="module")
def controlnet():
    return renderer.load("tiny-controlnet-video")


@pytest.fixture(scope="module")
def pix2pix():
    return renderer.load("tiny-pix2pix-video")


def test_controlnet_video_row_equals_the_guide_recipe(controlnet, edges):
    row = {"id": "c", "prompt": "a dancer on a stage", "negative_prompt": "blurry", "video": str(edges), "seed": 11,
           **FAST}
    frames = controlnet.render(row)

    pipe = controlnet.pipeline
    pipe.unet.set_attn_processor(CrossFrameAttnProcessor(batch_size=2))
    pipe.controlnet.set_attn_processor(CrossFrameAttnProcessor(batch_size=2))
    control_frames = load_video(str(edges), 4, 64, 64)
    generator = torch.Generator("cpu").manual_seed(11)
    latents = torch.randn((1, 4, 64 // 8, 64 // 8), generator=generator).repeat(len(control_frames), 1, 1, 1)
    result = pipe(prompt=["a dancer on a stage"] * 4, negative_prompt=["blurry"] * 4, image=control_frames,
                  latents=latents, num_inference_steps=2, generator=generator, output_type="np").images
    assert frames.shape == (4, 64, 64, 3)
    assert np.array_equal(frames, plain_uint8(result))


def test_pix2pix_video_row_equals_the_guide_recipe(pix2pix, edges):
    row = {"id": "p", "prompt": "make it Van Gogh Starry Night style", "video": str(edges), "seed": 12,
           "params": '{"image_guidance_scale": 1.2}', **FAST}
    frames = pix2pix.render(row)

    pipe = pix2pix.pipeline
    pipe.unet.set_attn_processor(CrossFrameAttnProcessor(batch_size=3))
    video = load_video(str(edges), 4, 64, 64)
    result = pipe(prompt=["make it Van Gogh Starry Night style"] * len(video), image=video, image_guidance_scale=1.2,
                  num_inference_steps=2, generator=torch.Generator("cpu").manual_seed(12), output_type="np").images
    assert frames.shape == (4, 64, 64, 3)
    assert np.array_equal(frames, plain_uint8(result))


def test_rows_without_guidance_count_one_copy_of_the_video(controlnet, edges):
    row = {"id": "g", "prompt": "a robot", "video": str(edges), "seed": 4, **FAST, "num_frames": 5}
    guided = controlnet.render(row)
    # one copy per guidance branch: off, or the ControlNet in guess mode, leaves one (5 frames fail with 2)
    assert controlnet.render({**row, "guidance_scale": 1.0}).shape == (5, 64, 64, 3)
    assert controlnet.render({**row, "params": '{"guess_mode": true}'}).shape == (5, 64, 64, 3)
    assert np.array_equal(guided, controlnet.render(row))  # the count is set again for the next row


def test_knobs_reach_the_pipelines(controlnet, pix2pix, edges):
    row = {"id": "k", "prompt": "a robot", "video": str(edges), "seed": 5, **FAST}
    assert not np.array_equal(controlnet.render(row),
                              controlnet.render({**row, "params": '{"controlnet_conditioning_scale": 0.3}'}))
    assert not np.array_equal(pix2pix.render(row), pix2pix.render({**row, "params": '{"image_guidance_scale": 2.5}'}))


@pytest.mark.parametrize("model, params, key", [
    ("controlnet", '{"strength": 0.5}', "params.strength"),
    ("controlnet", '{"controlnet_conditioning_scale": "high"}', "params.controlnet_conditioning_scale"),
    ("controlnet", '{"guess_mode": 1}', "params.guess_mode"),
    ("controlnet", '{"control_guidance_start": 0.8, "control_guidance_end": 0.5}', "params.control_guidance_start"),
    ("controlnet", '{"control_guidance_end": 0.0}', "params.control_guidance_end"),
    ("pix2pix", '{"controlnet_conditioning_scale": 1.0}', "params.controlnet_conditioning_scale"),
    ("pix2pix", '{"image_guidance_scale": true}', "params.image_guidance_scale"),
])
def test_bad_params_are_rejected_naming_the_key(request, edges, model, params, key):
    with pytest.raises(RowRejected, match=key):
        request.getfixturevalue(model).render({"prompt": "x", "video": str(edges), "params": params, **FAST})


def test_both_families_render_through_the_cli(ray_session, edges, tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "edges.mp4").write_bytes(edges.read_bytes())
    rows = [dict(id="pose", model="tiny-controlnet-video", prompt="a dancer", video="edges.mp4", **FAST),
            dict(id="edit", model="tiny-pix2pix-video", prompt="make it snowy", video="edges.mp4", **FAST)]
    table = write_table(tmp_path / "in" / "t.parquet", rows)
    result = CliRunner().invoke(main, ["run", str(table), "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    metadata = read_metadata(tmp_path / "out")
    for row_id in ("pose", "edit"):
        assert metadata[row_id]["status"] == "ok"
        frames, fps = read_mp4(tmp_path / "out" / metadata[row_id]["video_path"])
        assert frames.shape == (4, 64, 64, 3) and fps == 4


@pytest.mark.parametrize("model, name, denoisers", [
    ("controlnet", "controlnet-video", ("unet", "controlnet")),
    ("pix2pix", "pix2pix-video", ("unet",)),
])
def test_saved_folder_loads_with_cross_frame_attention(request, edges, tmp_path, model, name, denoisers):
    folder = tmp_path / name
    request.getfixturevalue(model).pipeline.save_pretrained(folder)
    assert list(folder.rglob("*.safetensors")) and not list(folder.rglob("*.bin"))
    spec = resolve_model(str(folder))
    assert (spec.family.name, spec.source, spec.window) == (name, "checkpoint", 8)
    loaded = renderer.load(str(folder))
    for denoiser in denoisers:
        processors = getattr(loaded.pipeline, denoiser).attn_processors.values()
        assert processors and all(isinstance(p, CrossFrameAttnProcessor) for p in processors)
    frames = loaded.render({"prompt": "a robot", "video": str(edges), "height": 64, "width": 64, **FAST})
    assert frames.shape == (4, 64, 64, 3)


def test_random_presets_have_the_published_sizes():
    with seeded_build("meta"):
        controlnet = resolve_model("random-controlnet-video").family.components("random")
        pix2pix = resolve_model("random-pix2pix-video").family.components("random")
    assert 3.5e8 < count(controlnet["controlnet"]) < 3.7e8  # lllyasviel/sd-controlnet-* (361M)
    assert 8.5e8 < count(controlnet["unet"]) < 8.7e8  # SD1.5 UNet
    assert pix2pix["unet"].config.in_channels == 8 and 8.5e8 < count(pix2pix["unet"]) < 8.7e8
