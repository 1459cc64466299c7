"""Wan 2.1 image-to-video (tiny-wan-i2v) and first-and-last-frame video (tiny-wan-i2v-flf2v): parity with the plain
WanImageToVideoPipeline call, knobs, rules, caches, checkpoints saved and detected, the published sizes on the meta
device, and long rows chained in latent frames, each chunk starting from the previous chunk's frame."""
import functools
import io
import json
from itertools import pairwise

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

import renderer
from conftest import count, plain_uint8, psnr, write_table
from invariants import check_invariants
from jobs.cli import main
from renderer.catalog import preset_names, resolve_model
from renderer.chunks import plan_chunks
from renderer.errors import RowRejected
from renderer.families.components import seeded_build
from renderer.families.wan_i2v import WAN_I2V, WAN_I2V_720P, WAN_I2V_FLF2V
from renderer.model import to_uint8
from renderer.request import to_request
from renderer.run import RunConfig, run


def picture(seed: int) -> Image.Image:
    """A conditioning frame of another size than the video's (the pipeline resizes it)."""
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (48, 40, 3), np.uint8))


def png(image: Image.Image) -> bytes:
    data = io.BytesIO()
    image.save(data, "PNG")
    return data.getvalue()


FIRST, LAST, OTHER = picture(0), picture(1), picture(2)
ROW = {"id": "a", "prompt": "a red kite over a beach", "negative_prompt": "blurry", "image": png(FIRST), "seed": 3,
       "num_frames": 9, "num_inference_steps": 2}
FLF_ROW = {**ROW, "last_image": png(LAST)}


@pytest.fixture(scope="module")
def i2v():
    return renderer.load("tiny-wan-i2v")


@pytest.fixture(scope="module")
def flf():
    return renderer.load("tiny-wan-i2v-flf2v")


@pytest.fixture(scope="module")
def baseline(i2v):
    return i2v.render(ROW)


def plain(model, **extra):
    call = dict(image=FIRST, prompt=ROW["prompt"], negative_prompt="blurry", num_frames=9, height=32, width=32,
                num_inference_steps=2, guidance_scale=5.0)
    frames = model.pipeline(**{**call, **extra}, generator=torch.Generator("cpu").manual_seed(3),
                            output_type="np").frames[0]
    return plain_uint8(frames)


# (row changes, the plain call's changes)
KNOBS = [
    ({"params": '{"max_sequence_length": 16}'}, {"max_sequence_length": 16}),
    ({"guidance_scale": 1.0}, {"guidance_scale": 1.0}),
    ({"negative_prompt": "sharp"}, {"negative_prompt": "sharp"}),
    ({"image": png(OTHER)}, {"image": OTHER}),
]


def test_an_i2v_row_equals_the_plain_diffusers_call_and_each_knob_changes_it(i2v, baseline):
    assert np.array_equal(baseline, plain(i2v))
    for row, call in KNOBS:
        frames = i2v.render({**ROW, **row})
        assert np.array_equal(frames, plain(i2v, **call)) and not np.array_equal(frames, baseline), row
    shifted = i2v.render({**ROW, "params": '{"flow_shift": 9.0}'})
    assert not np.array_equal(shifted, baseline)
    # the row's shift was the row's only: the next row renders with the published scheduler again
    assert np.array_equal(i2v.render(ROW), baseline)


def test_a_first_and_last_frame_row_equals_the_plain_call_with_last_image(flf):
    frames = flf.render(FLF_ROW)
    assert np.array_equal(frames, plain(flf, last_image=LAST))
    assert not np.array_equal(flf.render({**FLF_ROW, "last_image": png(OTHER)}), frames)


REJECTED = [  # (model, row changes, the message's start)
    ("tiny-wan-i2v", {"num_frames": 80}, "num_frames=80: must be 4k+1 (5, 9, ...) for family 'wan-i2v'"),
    ("tiny-wan-i2v", {"height": 40}, "height=40: must be divisible by 16 (nearest: 32 or 48)"),
    ("tiny-wan-i2v", {"image": None}, "image=None: required by family 'wan-i2v'"),
    ("tiny-wan-i2v", {"params": '{"max_sequence_length": 0}'}, "params.max_sequence_length=0: must be >= 1"),
    ("tiny-wan-i2v", {"params": '{"guidance_scale_2": 3}'}, "params.guidance_scale_2=3: not a parameter of "
                                                            "family 'wan-i2v'"),
    ("tiny-wan-i2v", {"params": '{"chunk_mode": "anchored"}'}, "params.chunk_mode='anchored': must be one of chain"),
    ("tiny-wan-i2v", {"params": '{"cache": {"kind": "faster"}}'}, "params.cache.kind='faster': must be one of "
                                                                  "first_block, taylorseer, mag, pab"),
    ("tiny-wan-i2v", {"last_image": png(LAST)}, "last_image=<"),
    ("tiny-wan-i2v-flf2v", {"last_image": None}, "last_image=None: required by family 'wan-i2v'"),
    ("tiny-wan-i2v-flf2v", {"num_frames": 17, "params": '{"chunk_window": 9}'},
     "num_frames=17: more than one chunk window (9 frames) of the first-and-last-frame model"),
    # the published transformers count 512 text tokens from the end of their context
    ("random-wan-i2v", {"params": '{"max_sequence_length": 256}'}, "params.max_sequence_length=256: must be 512"),
    ("tiny-wan", {"image": None, "last_image": png(LAST)}, "last_image=<"),
]


@pytest.mark.parametrize("model, row, message", REJECTED, ids=[m for _, _, m in REJECTED])
def test_rows_the_models_cannot_render_are_rejected_naming_the_rule(model, row, message):
    with pytest.raises(RowRejected) as caught:
        to_request({**(FLF_ROW if "flf2v" in model else ROW), **row}, default_model=model)
    assert str(caught.value).startswith(message)
    if message.startswith("last_image=<"):
        assert caught.value.rule.startswith("needs the first-and-last-frame model (presets tiny-wan-i2v-flf2v"
                                            if "i2v" in model else "family 'wan' takes no last_image")


# kinds of diffusers' caches the family offers, with options that skip work within 8 steps
CACHES = {
    "first_block": {"threshold": 0.2},
    # the family's defaults name the attention and feed-forward layers diffusers' own patterns miss
    "taylorseer": {"cache_interval": 3, "disable_cache_before_step": 1},
    "mag": {"mag_ratios": [1.0] * 8, "threshold": 0.5},
    "pab": {"spatial_attention_block_skip_range": 2},
}
# measured on tiny-wan-i2v (8 steps): first_block 50.7, taylorseer 48.3, mag 45.8, pab 81.1 dB
PSNR_BOUND_DB = 30.0


@pytest.fixture(scope="module")
def uncached(i2v):
    return i2v.render({**ROW, "num_inference_steps": 8})


@pytest.mark.parametrize("kind", CACHES)
def test_each_cache_changes_the_frames_a_little_and_leaves_the_next_row_alone(i2v, uncached, kind):
    row = {**ROW, "num_inference_steps": 8}
    cached = i2v.render({**row, "params": json.dumps({"cache": {"kind": kind, **CACHES[kind]}})})
    assert not np.array_equal(cached, uncached)
    assert psnr(cached, uncached) > PSNR_BOUND_DB
    assert np.array_equal(i2v.render(row), uncached)


def test_saved_checkpoints_load_as_their_layout_and_render_the_same(i2v, flf, baseline, tmp_path):
    i2v.pipeline.save_pretrained(tmp_path / "i2v")
    flf.pipeline.save_pretrained(tmp_path / "flf")
    loaded = renderer.load(str(tmp_path / "i2v"))
    assert (loaded.spec.family.name, loaded.spec.family.variant, loaded.spec.source) == ("wan-i2v", "", "checkpoint")
    assert np.array_equal(loaded.render({**ROW, "height": 32, "width": 32}), baseline)
    loaded = renderer.load(str(tmp_path / "flf"))
    assert loaded.spec.family.variant == "flf2v" and loaded.spec.family.required[-1] == "last_image"
    assert np.array_equal(loaded.render({**FLF_ROW, "height": 32, "width": 32}), flf.render(FLF_ROW))


def checkpoint(folder, index: dict, transformer: dict) -> str:
    """A checkpoint's JSON files alone: all that model resolution reads."""
    (folder / "transformer").mkdir(parents=True)
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "WanImageToVideoPipeline", **index}))
    (folder / "transformer" / "config.json").write_text(json.dumps(transformer))
    return str(folder)


CLIP = {"image_encoder": ["transformers", "CLIPVisionModelWithProjection"],
        "image_processor": ["transformers", "CLIPImageProcessor"], "transformer_2": [None, None]}
PUBLISHED = {"in_channels": 36, "image_dim": 1280, "added_kv_proj_dim": 5120}


def test_published_layouts_are_detected_and_wan22_checkpoints_are_refused(tmp_path):
    i2v = resolve_model(checkpoint(tmp_path / "i2v", CLIP, PUBLISHED))
    flf = resolve_model(checkpoint(tmp_path / "flf", CLIP, {**PUBLISHED, "pos_embed_seq_len": 514}))
    assert (i2v.family.variant, flf.family.variant) == ("", "flf2v")
    assert flf.defaults.height == 720 and i2v.family.image_key_values
    with pytest.raises(RowRejected, match="max_sequence_length=64: must be 512"):
        to_request({**ROW, "params": '{"max_sequence_length": 64}'}, default_model=i2v.name)
    # Wan 2.2 image-to-video: no image encoder, a second expert
    wan22 = {"image_encoder": [None, None], "transformer_2": ["diffusers", "WanTransformer3DModel"],
             "boundary_ratio": 0.9}
    folder = checkpoint(tmp_path / "wan22", wan22, PUBLISHED)
    assert not WAN_I2V.claims(json.loads((tmp_path / "wan22" / "model_index.json").read_text()))
    with pytest.raises(RowRejected, match="Wan 2.2 image-to-video, not Wan 2.1's"):
        resolve_model(f"wan-i2v:{folder}")


def test_the_published_sizes_are_built_on_the_meta_device():
    with seeded_build("meta", torch.bfloat16):
        parts = {family.preset: family.components("random") for family in (WAN_I2V, WAN_I2V_720P, WAN_I2V_FLF2V)}
    i2v = parts["wan-i2v"]
    config = i2v["transformer"].config
    assert (config.in_channels, config.image_dim, config.added_kv_proj_dim, config.pos_embed_seq_len) == (
        36, 1280, 5120, None)
    # the 14B T2V transformer (14.29 B) plus the image tokens' keys and values in every block and their embedder
    assert round(count(i2v["transformer"]) / 1e9, 2) == 16.39
    assert round(count(i2v["image_encoder"]) / 1e9, 2) == 0.63 and i2v["image_encoder"].config.image_size == 224
    assert round(count(i2v["text_encoder"]) / 1e9, 2) == 5.68
    # FLF2V: positions for the 257 CLIP tokens of each of two images
    assert parts["wan-i2v-flf2v"]["transformer"].config.pos_embed_seq_len == 514
    shifts = {name: p["scheduler"].config.flow_shift for name, p in parts.items()}
    assert shifts == {"wan-i2v": 3.0, "wan-i2v-720p": 5.0, "wan-i2v-flf2v": 16.0}
    assert resolve_model("random-wan-i2v-720p").defaults.height == 720


def test_chained_chunks_are_valid_videos_of_the_causal_layout_and_stitch_to_the_row():
    layout = WAN_I2V.layout
    for frames in range(13, 330, 4):
        for window in (9, 17, 81):
            chunks = plan_chunks(frames, window, 1, layout)
            assert chunks[0].start == 0 and chunks[-1].end == frames
            assert all(c.frames == min(frames, window) and layout.valid_frames(c.frames) for c in chunks)
            # each chunk starts on a frame of the previous one: its last, unless aligned to the row's end
            pairs = list(pairwise(chunks))
            assert all(a.start < b.start < a.end for a, b in pairs)
            assert all(b.start == a.end - 1 for a, b in pairs[:-1])
    request = to_request({**ROW, "num_frames": 21, "params": '{"chunk_window": 9}'}, default_model="tiny-wan-i2v")
    assert request.chunk_mode == "chain"
    assert [(c.start, c.end, c.latent_start, c.latent_end) for c in request.plan] == [
        (0, 9, 0, 3), (8, 17, 2, 5), (12, 21, 3, 6)]


def test_a_long_row_chains_each_chunk_from_the_previous_chunks_frame(i2v, monkeypatch):
    request = to_request({**ROW, "num_frames": 17, "params": '{"chunk_window": 9}'}, default_model="tiny-wan-i2v")
    calls, outputs, pipeline_call = [], [], type(i2v.pipeline).__call__

    # wraps: the prompt encoder reads the call's defaults from its signature
    @functools.wraps(pipeline_call)
    def recorded(self, **kwargs):
        calls.append(kwargs)
        outputs.append(pipeline_call(self, **kwargs))
        return outputs[-1]
    monkeypatch.setattr(type(i2v.pipeline), "__call__", recorded)
    frames = i2v.render(request)
    assert frames.shape == (17, 32, 32, 3)
    first, second = calls
    assert np.array_equal(np.asarray(second["image"]), to_uint8(outputs[0].frames[0])[8])
    assert first["image"] is not second["image"] and first["num_frames"] == second["num_frames"] == 9
    # the latent frame the chunks share starts from the same draw of the row's noise bank
    assert first["latents"].shape == second["latents"].shape == (1, 16, 3, 4, 4)
    assert torch.equal(first["latents"][:, :, 2], second["latents"][:, :, 0])
    # chained chunks come back as frames (the next chunk starts from one), not as latents
    assert first["output_type"] == second["output_type"] == "pt"


def test_a_first_and_last_frame_model_warms_up_with_both_frames(flf):
    flf.warm_up()


def test_render_models_lists_the_family_and_its_presets():
    assert {"tiny-wan-i2v", "random-wan-i2v", "random-wan-i2v-480p", "random-wan-i2v-720p",
            "tiny-wan-i2v-flf2v", "random-wan-i2v-flf2v"} <= set(preset_names())
    listing = CliRunner().invoke(main, ["models"]).output
    section = listing[listing.index("wan-i2v  (WanImageToVideoPipeline)"):]
    assert "inputs:     prompt, image, last_image" in section and "params.chunk_mode: str (chain)" in section
    assert "params.max_sequence_length" in section and "Wan2.1-FLF2V-14B-720P-diffusers" in section


def test_a_long_chained_row_renders_through_render_run(ray_session, tmp_path):
    FIRST.save(tmp_path / "first.png")
    rows = [dict(id="kite", prompt="a red kite over a beach", image="first.png", num_frames=17,
                 num_inference_steps=2, params='{"chunk_window": 9}'),
            dict(id="short", prompt="a lighthouse", image="first.png", num_inference_steps=2)]
    out = tmp_path / "out"
    summary = run(RunConfig(tables=(str(write_table(tmp_path / "t.parquet", rows)),), out=out, model="tiny-wan-i2v",
                            actors=2, threads_per_actor=1))
    records = check_invariants(out, ["kite", "short"], summary.exit_code)
    assert summary.counts == {"ok": 2}
    kite = records["kite"]
    assert (kite["num_frames"], kite["chunks"], kite["chunk_mode"]) == (17, 2, "chain")
    assert all(np.isfinite(kite["seams"])) and records["short"]["num_frames"] == 9
