"""HunyuanVideo (tiny-hunyuanvideo, tiny-hunyuanvideo-i2v): parity with the plain HunyuanVideoPipeline and
HunyuanVideoImageToVideoPipeline calls, the prompt template counted in the offline tokenizer's tokens, every knob,
the rules rows are rejected by, the transformer caches, saved checkpoints loaded back as their variant, long rows
(text-to-video anchored and stitched as latents, i2v chained), and the published sizes counted on the meta device."""
import functools
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
from renderer.families.components import llama_tokenizer, seeded_build
from renderer.families.hunyuanvideo import HUNYUANVIDEO, hunyuan_prompt_embeds, prompt_template
from renderer.families.prompts import prompt_embeds_once
from renderer.inputs import load_image
from renderer.model import to_uint8
from renderer.request import to_request
from renderer.run import RunConfig, run

pytestmark = pytest.mark.usefixtures("one_thread")

ROW = {"id": "a", "prompt": "a red kite over a beach", "negative_prompt": "blurry", "seed": 3, "num_frames": 9,
       "num_inference_steps": 2}
# every cache kind skips work within 8 steps of the tiny transformer; the frames stay this close to the uncached
PSNR_BOUND_DB = 40


@pytest.fixture(scope="module")
def model():
    return renderer.load("tiny-hunyuanvideo")


@pytest.fixture(scope="module")
def i2v():
    return renderer.load("tiny-hunyuanvideo-i2v")


def template(pipeline) -> dict:
    """The call's default template with its counts taken in the tiny tokenizer: the prefix before the user's text,
    and (i2v) where the <image> token stands and how many tokens the tiny vision tower gives it (16 patches)."""
    default = __import__("inspect").signature(type(pipeline).__call__).parameters["prompt_template"].default
    tokenizer = pipeline.tokenizer
    ids = tokenizer(default["template"].split("{}")[0]).input_ids
    counted = {**default, "crop_start": len(ids)}
    if "image_emb_len" in default:
        start = ids.index(tokenizer.convert_tokens_to_ids("<image>"))
        counted.update(image_emb_start=start, image_emb_end=start + 16, image_emb_len=16)
    return counted


def plain_call(model, image=None, **extra) -> dict:
    """The plain diffusers call of ROW, with the template's counts in the tiny tokenizer's tokens."""
    call = dict(prompt=ROW["prompt"], negative_prompt="blurry", num_frames=9, height=32, width=32,
                num_inference_steps=2, guidance_scale=6.0, prompt_template=template(model.pipeline),
                generator=torch.Generator("cpu").manual_seed(3), output_type="np")
    return {**call, **({} if image is None else {"image": image}), **extra}


def plain(model, image=None, **extra) -> np.ndarray:
    return plain_uint8(model.pipeline(**plain_call(model, image, **extra)).frames[0])


def test_a_row_equals_the_plain_diffusers_call(model):
    assert np.array_equal(model.render(ROW), plain(model))
    # true classifier-free guidance: a second pass per step on the negative prompt
    guided = model.render({**ROW, "params": '{"true_cfg_scale": 4.0, "max_sequence_length": 16}'})
    assert np.array_equal(guided, plain(model, true_cfg_scale=4.0, max_sequence_length=16))


def test_a_rows_prompt_embeddings_render_the_plain_frames(model):
    request = to_request({**ROW, "params": '{"true_cfg_scale": 4.0}'}, default_model="tiny-hunyuanvideo")
    embeds = prompt_embeds_once(model.pipeline, request, hunyuan_prompt_embeds)
    assert {"pooled_prompt_embeds", "prompt_attention_mask", "negative_prompt_embeds"} <= embeds.keys()
    assert np.array_equal(plain(model, true_cfg_scale=4.0, **embeds), plain(model, true_cfg_scale=4.0))


def test_an_i2v_row_equals_the_plain_image_to_video_call(i2v, image_file):
    row = {**ROW, "image": str(image_file)}
    assert np.array_equal(i2v.render(row), plain(i2v, image=load_image(str(image_file))))


def test_the_template_prefix_is_counted_in_the_pipelines_own_tokens(model, i2v, monkeypatch):
    from diffusers.pipelines.hunyuan_video.pipeline_hunyuan_video import DEFAULT_PROMPT_TEMPLATE
    from transformers import LlamaTokenizer

    tokenizer = model.pipeline.tokenizer
    counted = prompt_template(model.pipeline)
    assert counted == template(model.pipeline) and counted["crop_start"] > 95
    # what the encoder keeps after cropping starts with the user's text
    ids = tokenizer(counted["template"].format("a red kite")).input_ids
    assert tokenizer.decode(ids[counted["crop_start"]:]).startswith("a red kite")
    assert prompt_template(i2v.pipeline) == template(i2v.pipeline)
    # a Llama 3 tokenizer gets the published template and its count (95) untouched
    vocab = {**tokenizer.get_vocab(), "<|begin_of_text|>": len(tokenizer)}
    llama3 = LlamaTokenizer(vocab=vocab, merges=[], bos_token="<|begin_of_text|>", pad_token="<pad>")
    monkeypatch.setattr(model.pipeline, "tokenizer", llama3)
    assert prompt_template(model.pipeline) is DEFAULT_PROMPT_TEMPLATE and DEFAULT_PROMPT_TEMPLATE["crop_start"] == 95


KNOBS = [
    '{"true_cfg_scale": 4.0}',
    '{"max_sequence_length": 3}',
    '{"sigmas": [1.0, 0.3]}',
    '{"flow_shift": 2.0}',
]


def test_every_knob_changes_the_frames_and_none_leaks_into_the_next_row(model):
    base = model.render(ROW)
    for params in KNOBS:
        assert not np.array_equal(model.render({**ROW, "params": params}), base), params
    # the column is the embedded guidance
    assert not np.array_equal(model.render({**ROW, "guidance_scale": 1.0}), base)
    # the negative prompt counts under true guidance only
    guided = {**ROW, "params": '{"true_cfg_scale": 4.0}'}
    assert not np.array_equal(model.render({**guided, "negative_prompt": "fog"}), model.render(guided))
    assert np.array_equal(model.render({**ROW, "negative_prompt": "fog"}), base)
    assert np.array_equal(model.render(ROW), base)


def test_the_i2v_knob_changes_the_frames(i2v, image_file):
    row = {**ROW, "image": str(image_file)}
    assert not np.array_equal(i2v.render({**row, "params": '{"image_embed_interleave": 1}'}), i2v.render(row))


@pytest.mark.parametrize("changes, column, rule", [
    ({"num_frames": 80}, "num_frames", "must be 4k+1 (5, 9, ...) for family 'hunyuanvideo'"),
    ({"height": 40}, "height", "must be divisible by 16 (nearest: 32 or 48)"),
    ({"negative_prompt": None, "params": '{"true_cfg_scale": 4}'}, "params.true_cfg_scale", "needs a negative_prompt"),
    ({"params": '{"true_cfg_scale": 0.5}'}, "params.true_cfg_scale", "must be >= 1.0"),
    ({"params": '{"sigmas": [1.0]}'}, "params.sigmas", "must hold one sigma per step (num_inference_steps=2)"),
    ({"params": '{"max_sequence_length": 0}'}, "params.max_sequence_length", "must be >= 1"),
    # diffusers' CLIP encoding reads `prompt`, never `prompt_2`: no knob for it
    ({"params": '{"prompt_2": "x"}'}, "params.prompt_2", "not a parameter of family 'hunyuanvideo'"),
    ({"params": '{"cache": {"kind": "faster"}}'}, "params.cache.kind", "diffusers cannot apply faster"),
    ({"params": '{"image_embed_interleave": 2}'}, "params.image_embed_interleave", "not a parameter"),
])
def test_rows_hunyuanvideo_cannot_render_are_rejected_naming_the_rule(changes, column, rule):
    with pytest.raises(RowRejected) as caught:
        to_request({**ROW, **changes}, default_model="tiny-hunyuanvideo")
    assert caught.value.column == column and rule in caught.value.rule


@pytest.mark.parametrize("changes, column, rule", [
    ({}, "image", "required by family 'hunyuanvideo'"),
    ({"params": '{"chunk_mode": "anchored"}'}, "params.chunk_mode", "must be one of chain"),
    ({"params": '{"cache": {"kind": "first_block"}}'}, "params.cache.kind", "must be one of mag, pab"),
    ({"params": '{"image_embed_interleave": 6}'}, "params.image_embed_interleave", "must be <= 5"),
])
def test_i2v_rows_are_rejected_naming_the_rule(changes, column, rule):
    with pytest.raises(RowRejected) as caught:
        to_request({**ROW, **changes}, default_model="tiny-hunyuanvideo-i2v")
    assert caught.value.column == column and rule in caught.value.rule


CACHES = [
    ("tiny-hunyuanvideo", {"kind": "first_block", "threshold": 0.5}),
    ("tiny-hunyuanvideo", {"kind": "taylorseer", "cache_interval": 2, "disable_cache_before_step": 1}),
    ("tiny-hunyuanvideo", {"kind": "mag", "mag_ratios": [1.0] * 8, "threshold": 0.5}),
    ("tiny-hunyuanvideo", {"kind": "pab", "spatial_attention_block_skip_range": 2}),
    ("tiny-hunyuanvideo-i2v", {"kind": "mag", "mag_ratios": [1.0] * 8, "threshold": 0.5}),
    ("tiny-hunyuanvideo-i2v", {"kind": "pab", "spatial_attention_block_skip_range": 2}),
]


@pytest.mark.parametrize("preset, cache", CACHES, ids=[f"{p}-{c['kind']}" for p, c in CACHES])
def test_each_cache_changes_the_frames_a_little_and_leaves_the_next_row_alone(preset, cache, model, i2v, image_file):
    loaded = model if preset == "tiny-hunyuanvideo" else i2v
    row = {**ROW, "num_inference_steps": 8}
    if preset.endswith("i2v"):
        row["image"] = str(image_file)
    base = loaded.render(row)
    cached = loaded.render({**row, "params": json.dumps({"cache": cache})})
    assert not np.array_equal(cached, base) and psnr(cached, base) > PSNR_BOUND_DB
    assert np.array_equal(loaded.render(row), base)


def test_saved_checkpoints_load_as_their_variant_and_render_the_same(model, i2v, tmp_path, image_file):
    rows = {"hunyuanvideo": (model, ROW), "hunyuanvideo-i2v": (i2v, {**ROW, "image": str(image_file)})}
    for preset, (saved, row) in rows.items():
        saved.pipeline.save_pretrained(tmp_path / preset)
        loaded = renderer.load(str(tmp_path / preset))
        assert loaded.spec.family.preset == preset and loaded.spec.source == "checkpoint"
        assert np.array_equal(loaded.render({**row, "height": 32, "width": 32}), saved.render(row))
    # the 33-channel i2v layout renders 4 frames fewer than asked: refused by name
    transformer = tmp_path / "hunyuanvideo-i2v" / "transformer" / "config.json"
    config = json.loads(transformer.read_text())
    transformer.write_text(json.dumps({**config, "image_condition_type": "latent_concat", "in_channels": 9}))
    with pytest.raises(RowRejected, match="'latent_concat' is not supported"):
        resolve_model(f"hunyuanvideo:{tmp_path / 'hunyuanvideo-i2v'}")


def recorded_calls(pipeline, monkeypatch) -> list:
    """The keyword arguments of every call of the pipeline, with what it returned."""
    calls, call = [], type(pipeline).__call__

    # wraps: the prompt encoder reads the call's defaults from its signature
    @functools.wraps(call)
    def recorded(self, **kwargs):
        out = call(self, **kwargs)
        calls.append({**kwargs, "out": out.frames[0]})
        return out
    monkeypatch.setattr(type(pipeline), "__call__", recorded)
    return calls


def test_a_long_row_is_planned_in_latent_frames_stitched_as_latents_and_encoded_once(model, monkeypatch):
    request = to_request({**ROW, "prompt": "a glass lighthouse", "num_frames": 33,
                          "params": '{"chunk_window": 17, "true_cfg_scale": 3.0}'}, default_model="tiny-hunyuanvideo")
    # 33 frames are 9 latent frames; windows of 17 frames are 5 latent frames, sharing one
    assert [(c.start, c.end, c.latent_start, c.latent_end) for c in request.plan] == [(0, 17, 0, 5), (16, 33, 4, 9)]
    encoded, encode = [], model.pipeline.encode_prompt
    monkeypatch.setattr(model.pipeline, "encode_prompt", lambda **kw: encoded.append(kw["prompt"]) or encode(**kw))
    calls = recorded_calls(model.pipeline, monkeypatch)
    frames = model.render(request)
    assert frames.shape == (33, 32, 32, 3)
    # the prompt and the negative prompt, once for the row; each chunk's call gets their embeddings (and hands them
    # to encode_prompt, which returns them as they are)
    assert [prompt for prompt in encoded if prompt is not None] == ["a glass lighthouse", "blurry"]
    assert all(call["prompt"] is None and call["negative_prompt_embeds"] is not None for call in calls)
    first, second = (call["latents"] for call in calls)
    # (batch, channels, latent frames, h, w); the latent frame the chunks share starts from the same noise
    assert first.shape == second.shape == (1, 4, 5, 4, 4)
    assert torch.equal(first[:, :, 4:], second[:, :, :1])
    assert all(call["output_type"] == "latent" for call in calls)


def test_stitched_latents_decode_as_the_pipeline_decodes_its_own(model):
    request = to_request(ROW, default_model="tiny-hunyuanvideo")
    # the plain call's latents (channels, latent frames, h, w), frames first as stitching holds them
    latents = model.pipeline(**{**plain_call(model), "output_type": "latent"}).frames[0]
    decoded = HUNYUANVIDEO.decode(model.pipeline, request, np.moveaxis(latents.numpy(), 1, 0))
    assert np.array_equal(np.concatenate([to_uint8(piece) for piece in decoded]), plain(model))


def test_a_long_i2v_row_is_chained_each_chunk_starting_from_the_frame_the_last_one_reached(i2v, image_file,
                                                                                           monkeypatch):
    calls = recorded_calls(i2v.pipeline, monkeypatch)
    row = {**ROW, "image": str(image_file), "num_frames": 33, "params": '{"chunk_window": 17}'}
    frames = i2v.render(row)
    assert frames.shape == (33, 32, 32, 3) and len(calls) == 2
    # chunk 1 starts at video frame 16, the last frame of chunk 0
    assert np.array_equal(np.asarray(calls[1]["image"]), to_uint8(calls[0]["out"])[16])
    # each chunk encodes its own prompt: its embeddings hold its own image
    assert all(call["prompt"] == ROW["prompt"] for call in calls)


def test_random_presets_have_the_published_sizes():
    with seeded_build("meta", torch.bfloat16):
        t2v = resolve_model("random-hunyuanvideo").family.components("random")
        i2v = resolve_model("random-hunyuanvideo-i2v").family.components("random")
    # DIT.md 3.1: the 12.8B transformer, llava-llama-3-8b's Llama (7.5B), CLIP ViT-L's text tower, the 246M VAE
    assert round(count(t2v["transformer"]) / 1e9, 2) == 12.82 and t2v["transformer"].dtype == torch.bfloat16
    assert round(count(t2v["text_encoder"]) / 1e9, 2) == 7.51
    assert round(count(t2v["text_encoder_2"]) / 1e6) == 123 and round(count(t2v["vae"]) / 1e6) == 246
    # LLaVA: the same Llama, its LM head, the 336-px CLIP ViT-L/14 vision tower and the projector
    assert round(count(i2v["text_encoder"]) / 1e9, 2) == 8.36
    assert i2v["transformer"].config.image_condition_type == "token_replace"
    assert round(count(i2v["transformer"]) / 1e9, 2) == 12.82


def test_the_offline_llama_tokenizer_encodes_any_text_padded_on_the_right():
    tokenizer = llama_tokenizer()
    ids = tokenizer("a café 🐱").input_ids
    assert tokenizer.unk_token_id not in ids and tokenizer.decode(ids, skip_special_tokens=True) == "a café 🐱"
    padded = tokenizer("a", padding="max_length", max_length=4).input_ids
    assert padded[-1] == tokenizer.pad_token_id and padded[0] != tokenizer.pad_token_id


def test_render_models_lists_the_family():
    result = CliRunner().invoke(main, ["models"])
    assert result.exit_code == 0
    assert "hunyuanvideo  (HunyuanVideoPipeline)" in result.output
    assert "presets:    tiny-hunyuanvideo, random-hunyuanvideo" in result.output
    assert "params.true_cfg_scale: float" in result.output


def test_a_long_hunyuanvideo_row_renders_through_render_run(ray_session, tmp_path):
    rows = [dict(id="kite", prompt="a red kite over a beach", num_frames=33, num_inference_steps=2,
                 params='{"chunk_window": 17}'),
            dict(id="short", prompt="a lighthouse", num_inference_steps=2)]
    out = tmp_path / "out"
    summary = run(RunConfig(tables=(str(write_table(tmp_path / "t.parquet", rows)),), out=out,
                            model="tiny-hunyuanvideo", actors=2, threads_per_actor=1))
    records = check_invariants(out, ["kite", "short"], summary.exit_code)
    assert summary.counts == {"ok": 2}
    kite = records["kite"]
    assert (kite["num_frames"], kite["chunks"], kite["chunk_mode"]) == (33, 2, "anchored")
    assert all(np.isfinite(kite["seams"])) and records["short"]["num_frames"] == 9
