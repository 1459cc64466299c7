"""CogVideoX (tiny-cogvideox: 5B's layout; -2b, -i2v, -1.5): parity with the plain CogVideoXPipeline and
CogVideoXImageToVideoPipeline calls, its knobs, the frame counts (8k+1: what its VAE renders as asked), sizes and
knobs it refuses, every transformer cache, long rows planned in latent frames (frames first, 1.5's padding frame) and
decoded whole, saved checkpoints matched to their variant, the published sizes counted on the meta device, and a long
row through `render run`."""
import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

import renderer
from conftest import count, plain_uint8, recorded_calls, write_table
from invariants import check_invariants
from renderer.errors import RowRejected
from renderer.families import cogvideox as cog
from renderer.families.components import seeded_build, t5_encoder, t5_tokenizer
from renderer.request import to_request
from renderer.run import RunConfig, run

pytestmark = pytest.mark.usefixtures("one_thread")

ROW = {"id": "a", "prompt": "a red kite over a beach", "negative_prompt": "blurry", "seed": 3,
       "num_inference_steps": 2}
# variant -> frames of its tiny preset's rows (5B-I2V's positions are learned for 49 frames)
FRAMES = {"": 9, "2b": 9, "i2v": 49, "1.5": 9}


def preset(variant: str) -> str:
    return f"tiny-cogvideox-{variant}" if variant else "tiny-cogvideox"


@pytest.fixture(scope="module")
def models():
    return {variant: renderer.load(preset(variant)) for variant in FRAMES}


def row(variant: str, image_file, **extra) -> dict:
    image = {"image": str(image_file)} if variant == "i2v" else {}
    return {**ROW, "num_frames": FRAMES[variant], **image, **extra}


def plain(model, image_file=None, **extra):
    """The plain diffusers call of ROW's values, as uint8 frames."""
    call = dict(prompt=ROW["prompt"], negative_prompt="blurry", num_frames=9, height=32, width=32,
                num_inference_steps=2, guidance_scale=6.0)
    if image_file is not None:
        call["image"] = Image.open(image_file).convert("RGB")
    frames = model.pipeline(**{**call, **extra}, generator=torch.Generator("cpu").manual_seed(3),
                            output_type="np").frames[0]
    return plain_uint8(frames)


# (variant, height, width): every variant at its tiny size; the RoPE (5B, 1.5) and sincos (2B) positions at another
CALLS = [("", 32, 32), ("2b", 32, 32), ("i2v", 32, 32), ("1.5", 32, 32), ("", 48, 64), ("2b", 48, 64),
         ("1.5", 48, 64)]


@pytest.mark.parametrize("variant, height, width", CALLS, ids=[f"{v or '5b'}-{h}x{w}" for v, h, w in CALLS])
def test_a_row_equals_the_plain_diffusers_call(models, image_file, variant, height, width):
    model = models[variant]
    assert type(model.pipeline).__name__ == (cog.I2V_PIPELINE if variant == "i2v" else "CogVideoXPipeline")
    frames = model.render(row(variant, image_file, height=height, width=width))
    assert frames.shape == (FRAMES[variant], height, width, 3)
    expected = plain(model, image_file if variant == "i2v" else None, num_frames=FRAMES[variant], height=height,
                     width=width)
    assert np.array_equal(frames, expected)


@pytest.mark.parametrize("variant", ["", "1.5"])
def test_max_sequence_length_reaches_the_rope_models_and_changes_the_frames(models, image_file, variant):
    model = models[variant]
    shorter = model.render(row(variant, image_file, params='{"max_sequence_length": 16}'))
    assert np.array_equal(shorter, plain(model, max_sequence_length=16))
    assert not np.array_equal(shorter, model.render(row(variant, image_file)))


def test_dynamic_guidance_the_scheduler_and_guidance_change_the_frames_and_leave_the_next_row_alone(models, image_file):
    model = models[""]
    base = model.render(row("", image_file))
    dynamic = model.render(row("", image_file, params='{"use_dynamic_cfg": true}'))
    assert np.array_equal(dynamic, plain(model, use_dynamic_cfg=True)) and not np.array_equal(dynamic, base)
    # 5B's published scheduler is the DPM solver; DDIM is 2B's
    assert type(model.pipeline.scheduler).__name__ == "CogVideoXDPMScheduler"
    ddim = model.render(row("", image_file, params='{"scheduler": "cogvideox_ddim"}'))
    assert type(model.pipeline.scheduler).__name__ == "CogVideoXDDIMScheduler" and not np.array_equal(ddim, base)
    assert not np.array_equal(model.render(row("", image_file, guidance_scale=3.0)), base)
    assert np.array_equal(model.render(row("", image_file)), base)
    assert type(models["2b"].pipeline.scheduler).__name__ == "CogVideoXDDIMScheduler"
    dpm = models["2b"].render(row("2b", image_file, params='{"scheduler": "cogvideox_dpm"}'))
    assert not np.array_equal(dpm, models["2b"].render(row("2b", image_file)))


UNGUIDED = {"guidance_scale": 1.0}
# (variant, the row's fields, the start of the message)
REJECTED = [
    ("", {"num_frames": 10}, "num_frames=10: must be 8k+1 (9, 17, ...) for family 'cogvideox'"),
    ("", {"num_frames": 13}, "num_frames=13: must be 8k+1 (9, 17, ...) for family 'cogvideox': its latents hold 4 "
     "frames each (nearest: 9 or 17)"),
    ("", {"height": 40}, "height=40: must be divisible by 16 (nearest: 32 or 48)"),
    ("", {"params": '{"max_sequence_length": 227}'}, "params.max_sequence_length=227: must be <= 226"),
    # both CogVideoX schedulers' step() ignore eta: it is no knob
    ("", {"params": '{"eta": 0.5}'}, "params.eta=0.5: not a parameter of family 'cogvideox'"),
    ("", {"params": '{"scheduler": "ddim"}'}, "params.scheduler='ddim': must be one of cogvideox_ddim, cogvideox_dpm"),
    ("", {"params": '{"use_dynamic_cfg": true}', **UNGUIDED}, "params.use_dynamic_cfg=True: needs guidance_scale"),
    ("", {"params": '{"cache": {"kind": "faster"}}', **UNGUIDED}, "params.cache.kind='faster': needs guidance_scale"),
    # sincos and learned positions span exactly 226 text tokens
    ("2b", {"params": '{"max_sequence_length": 16}'}, "params.max_sequence_length=16: not a parameter"),
    ("i2v", {"params": '{"max_sequence_length": 16}'}, "params.max_sequence_length=16: not a parameter"),
    ("i2v", {"image": None}, "image=None: required by family 'cogvideox'"),
    ("i2v", {"height": 48}, "height=48: must be 32: the positional embeddings are learned for 32x32 frames, 49 at"),
    ("i2v", {"num_frames": 41}, "num_frames=41: must be 49 or more (a long row in chunks of 49)"),
    ("i2v", {"num_frames": 65, "params": '{"chunk_window": 33}'}, "params.chunk_window=33: must be 49"),
    ("1.5", {"height": 2416}, "height=2416: must be <= 2400: CogVideoX 1.5's rotary position table covers 2400"),
]


@pytest.mark.parametrize("variant, fields, message", REJECTED,
                         ids=[f"{v or '5b'}-{m.split(':')[0]}" for v, _, m in REJECTED])
def test_counts_sizes_and_knobs_cogvideox_cannot_render_are_rejected_naming_the_rule(image_file, variant, fields,
                                                                                      message):
    with pytest.raises(RowRejected) as caught:
        to_request(row(variant, image_file, **fields), default_model=preset(variant))
    assert str(caught.value).startswith(message)


def test_the_frame_rule_is_what_the_vae_renders_as_asked(models):
    # 4k+1 frames of an even count of latent frames decode to 4 frames each (the VAE keeps frame 0 alone only in an
    # odd first batch), and any other count is moved to (n - 1) // 4 * 4 + 1 first: only 8k+1 renders as asked
    rendered = {n: plain(models[""], num_frames=n).shape[0] for n in (9, 10, 13, 17)}
    assert rendered == {9: 9, 10: 9, 13: 16, 17: 17}
    assert [n for n in rendered if cog.COGVIDEOX.layout.valid_frames(n)] == [9, 17]
    # 1.5 pads an odd count of latent frames (every 8k+1 count) with one and drops it again before decoding
    assert [plain(models["1.5"], num_frames=n).shape[0] for n in (9, 13, 17)] == [9, 16, 17]
    assert cog.COGVIDEOX_1_5.layout == cog.COGVIDEOX.layout


# each kind of diffusers' caches with options that skip work within 4 steps -> the lowest PSNR (dB) its frames
# may have against the uncached ones (measured on the tiny preset's random weights: 28, 16.5, 20.9, 40.7, 26.8)
CACHES = [
    ({"kind": "first_block", "threshold": 0.5}, 25),
    # the family's defaults name the attention and feed-forward layers diffusers' own patterns miss
    ({"kind": "taylorseer", "cache_interval": 2, "disable_cache_before_step": 1}, 14),
    ({"kind": "mag", "threshold": 10.0, "mag_ratios": [1.0] * 4, "retention_ratio": 0.0}, 18),
    ({"kind": "pab", "spatial_attention_block_skip_range": 2}, 35),
    # batched guidance: FasterCache reads the frames-first latents as BFCHW
    ({"kind": "faster", "spatial_attention_block_skip_range": 2}, 24),
]


@pytest.mark.parametrize("cache, bound", CACHES, ids=[cache["kind"] for cache, _ in CACHES])
def test_every_cache_kind_changes_the_frames_within_a_bound_and_the_next_row_is_uncached(models, image_file, cache,
                                                                                        bound):
    model, steps = models[""], {"num_inference_steps": 4}
    base = model.render(row("", image_file, **steps))
    cached = model.render(row("", image_file, **steps, params=json.dumps({"cache": cache})))
    error = np.mean((cached.astype(float) - base.astype(float)) ** 2)
    assert 0 < error and 10 * np.log10(255 ** 2 / error) > bound
    assert np.array_equal(model.render(row("", image_file, **steps)), base)


def recorded_decodes(monkeypatch, pipeline) -> list[tuple]:
    decodes, decode = [], type(pipeline).decode_latents
    monkeypatch.setattr(type(pipeline), "decode_latents", lambda self, latents: decodes.append(latents.shape)
                        or decode(self, latents))
    return decodes


def test_a_long_row_is_planned_in_latent_frames_stitched_frames_first_and_decoded_whole(models, image_file,
                                                                                         monkeypatch):
    model = models[""]
    request = to_request(row("", image_file, num_frames=65), default_model="tiny-cogvideox")
    # 65 frames are 17 latent frames; windows of 49 frames are 13 latent frames, overlapping by 3
    assert [(c.start, c.end, c.latent_start, c.latent_end) for c in request.plan] == [(0, 49, 0, 13),
                                                                                      (16, 65, 4, 17)]
    calls, decodes = recorded_calls(monkeypatch, model.pipeline), recorded_decodes(monkeypatch, model.pipeline)
    frames = model.render(request)
    assert frames.shape == (65, 32, 32, 3)
    first, second = (call["latents"] for call in calls)
    # (batch, latent frames, channels, h, w); the 9 latent frames the chunks share start from the same noise
    assert first.shape == second.shape == (1, 13, 4, 4, 4)
    assert torch.equal(first[:, 4:], second[:, :9])
    assert all(call["output_type"] == "latent" for call in calls)
    # the causal VAE decodes the stitched row in one go, as the pipeline decodes one call's latents
    assert decodes == [(1, 17, 4, 4, 4)]


def test_a_long_cogvideox_1_5_row_pads_each_chunk_as_the_pipeline_does_and_drops_the_padding(models, image_file,
                                                                                            monkeypatch):
    model = models["1.5"]
    request = to_request(row("1.5", image_file, num_frames=65, params='{"chunk_window": 33}'),
                         default_model="tiny-cogvideox-1.5")
    # chunks of 9 latent frames, an odd count: the pipeline pads each with one frame ahead for its temporal patches
    assert [(c.latent_start, c.latent_end) for c in request.plan] == [(0, 9), (7, 16), (8, 17)]
    calls, decodes = recorded_calls(monkeypatch, model.pipeline), recorded_decodes(monkeypatch, model.pipeline)
    frames = model.render(request)
    assert frames.shape == (65, 32, 32, 3) and decodes == [(1, 17, 4, 4, 4)]
    noise = [call["latents"] for call in calls]
    assert all(latents.shape == (1, 10, 4, 4, 4) for latents in noise)
    # a chunk's padding frame starts from the noise of the latent frame before it: chunk 1's is latent frame 6
    assert torch.equal(noise[1][:, 0], noise[0][:, 7]) and torch.equal(noise[2][:, :2], noise[1][:, 1:3])


def test_a_long_image_to_video_row_chains_chunks_of_the_learned_frame_count(models, image_file, monkeypatch):
    model = models["i2v"]
    request = to_request(row("i2v", image_file, num_frames=65, params='{"chunk_mode": "chain"}'),
                         default_model="tiny-cogvideox-i2v")
    # 17 latent frames in two windows of 13: the second, aligned to the row's end, starts at frame 16
    assert [(c.start, c.end) for c in request.plan] == [(0, 49), (16, 65)]
    calls = recorded_calls(monkeypatch, model.pipeline)
    assert model.render(request).shape == (65, 32, 32, 3)
    # each chunk renders 49 frames from an image: the row's, then the first chunk's frame at the second's start
    assert [call["num_frames"] for call in calls] == [49, 49]
    assert all(call["output_type"] == "pt" for call in calls) and calls[1]["image"].size == (32, 32)


SAVED = [("", "cogvideox"), ("2b", "cogvideox-2b"), ("i2v", "cogvideox-i2v"), ("1.5", "cogvideox-1.5")]


@pytest.mark.parametrize("variant, matched", SAVED, ids=[m for _, m in SAVED])
def test_a_saved_checkpoint_is_matched_to_its_variant_and_renders_the_same(models, image_file, tmp_path, variant,
                                                                          matched):
    models[variant].pipeline.save_pretrained(tmp_path / "cog")
    loaded = renderer.load(str(tmp_path / "cog"))
    assert loaded.spec.family.preset == matched and loaded.spec.source == "checkpoint"
    assert type(loaded.pipeline).__name__ == type(models[variant].pipeline).__name__
    # learned positions make their checkpoint's sample size its default; the others default to the published size
    if variant == "i2v":
        assert (loaded.spec.defaults.height, loaded.spec.defaults.width, loaded.spec.window) == (32, 32, 49)
    same = row(variant, image_file, height=32, width=32, num_frames=FRAMES[variant])
    assert np.array_equal(loaded.render(same), models[variant].render(same))


def test_an_image_to_video_cogvideox_1_5_checkpoint_is_the_1_5_variant_taking_an_image(image_file, tmp_path):
    # CogVideoX1.5-5B-I2V's layout: temporal patches, the image's latents beside the noise, no learned positions
    family = replace(cog.COGVIDEOX_1_5, pipeline_class=cog.I2V_PIPELINE, **cog.IMAGE_INPUTS)
    family.build("tiny", "cpu", torch.float32).save_pretrained(tmp_path / "cog")
    loaded = renderer.load(str(tmp_path / "cog"))
    assert loaded.spec.family.preset == "cogvideox-1.5-i2v" and loaded.spec.window == 81
    assert loaded.spec.family.inputs == ("prompt", "image") and not loaded.spec.family.learned_positions
    frames = loaded.render(row("i2v", image_file, num_frames=9, height=32, width=32))
    assert np.array_equal(frames, plain(loaded, image_file))


def test_the_random_presets_have_the_published_sizes():
    sizes = {}
    for family in (cog.COGVIDEOX, cog.COGVIDEOX_2B, cog.COGVIDEOX_I2V, cog.COGVIDEOX_1_5):
        with seeded_build("meta", torch.bfloat16):
            parts = family.components("random")
        sizes[family.preset] = {name: round(count(part) / 1e9, 2) for name, part in parts.items()
                                if isinstance(part, torch.nn.Module)}
    # DIT.md 3.1: the transformers 5.57 B (5B, 5B-I2V, 1.5-5B) and 1.69 B (2B), T5-v1.1-XXL 4.76 B, the VAE 216 M
    assert {name: size["transformer"] for name, size in sizes.items()} == {
        "cogvideox": 5.57, "cogvideox-2b": 1.69, "cogvideox-i2v": 5.57, "cogvideox-1.5": 5.57}
    assert all(size["text_encoder"] == 4.76 and size["vae"] == 0.22 for size in sizes.values())
    assert not t5_encoder("tiny", t5_tokenizer()).training
    with pytest.raises(ValueError, match="size='huge'"):
        t5_encoder("huge", t5_tokenizer())


def test_render_models_lists_the_family_its_knobs_and_checkpoints():
    from jobs.cli import main

    listing = CliRunner().invoke(main, ["models"]).output
    assert "cogvideox  (CogVideoXPipeline)" in listing and "tiny-cogvideox, random-cogvideox" in listing
    for line in ("params.use_dynamic_cfg: bool", "params.scheduler: str (cogvideox_ddim|cogvideox_dpm)",
                 "params.cache: dict (first_block|taylorseer|mag|pab|faster)", "checkpoint: THUDM/CogVideoX1.5-5B"):
        assert line in listing


def test_a_long_cogvideox_row_renders_through_render_run(ray_session, tmp_path):
    rows = [dict(id="kite", prompt="a red kite over a beach", num_frames=65, num_inference_steps=2),
            dict(id="short", prompt="a lighthouse", num_inference_steps=2)]
    out = tmp_path / "out"
    summary = run(RunConfig(tables=(str(write_table(tmp_path / "t.parquet", rows)),), out=out,
                            model="tiny-cogvideox", actors=2, threads_per_actor=1))
    records = check_invariants(out, ["kite", "short"], summary.exit_code)
    assert summary.counts == {"ok": 2}
    kite = records["kite"]
    assert (kite["num_frames"], kite["chunks"], kite["chunk_mode"]) == (65, 2, "anchored")
    assert all(np.isfinite(kite["seams"])) and records["short"]["num_frames"] == 9
