"""The seams hold for a diffusion transformer: a tiny diffusers WanPipeline (Wan 2.1 T2V, and Wan 2.2's pair of
experts), built offline by the wan family. The denoiser seam finds its transformers and applies
dtype, compile and attention settings; the planner and the noise bank lay a 4x-compressed long row out in latent
frames as the pipeline itself does; a row's prompt is encoded once and its embeddings render the plain frames."""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from renderer import denoiser
from renderer.chunks import plan_chunks
from renderer.families.components import seeded_build, t5_tokenizer, umt5_encoder
from renderer.families.prompts import prompt_embeds_once, t5_prompt_embeds
from renderer.families.wan import WAN
from renderer.options import LoadOptions

CALL = dict(prompt="a red kite", num_frames=9, height=32, width=32, num_inference_steps=2, output_type="np")
# the denoisers each pipeline has: Wan 2.1 one transformer, Wan 2.2 A14B a high-noise and a low-noise expert
EXPERTS = {1: ("transformer",), 2: ("transformer", "transformer_2")}


def wan(experts: int):
    """The tiny-wan preset's pipeline (Wan 2.1 T2V), or (experts=2) Wan 2.2 A14B's layout: a second transformer of
    the same config (with its own weights) takes over below timestep 875. Seeded: every build has the same weights."""
    from diffusers import WanPipeline, WanTransformer3DModel

    pipeline = WAN.build("tiny", "cpu", torch.float32)
    if experts == 1:
        return pipeline
    with seeded_build("cpu", seed=1):
        second = WanTransformer3DModel.from_config(pipeline.transformer.config).eval()
    return WanPipeline(**{**pipeline.components, "transformer_2": second}, boundary_ratio=0.875)


@pytest.fixture(scope="module")
def pipelines():
    return {experts: wan(experts) for experts in EXPERTS}


def render(pipeline, **kwargs):
    return pipeline(**{**CALL, **kwargs}, generator=torch.Generator("cpu").manual_seed(7)).frames


def test_the_offline_tokenizer_encodes_any_text_and_the_umt5_encoder_has_its_published_size():
    tokenizer = t5_tokenizer()
    ids = tokenizer("a café 🐱").input_ids
    assert len(tokenizer) == 448 and ids[-1] == tokenizer.eos_token_id and tokenizer.unk_token_id not in ids
    assert tokenizer.decode(ids, skip_special_tokens=True) == "a café 🐱"
    assert not umt5_encoder("tiny", tokenizer).training
    # UMT5-XXL's encoder: 5.68 B parameters, counted without allocating them
    with torch.device("meta"):
        assert round(sum(p.numel() for p in umt5_encoder("random", tokenizer).parameters()) / 1e9, 2) == 5.68
    with pytest.raises(ValueError, match="size='huge'"):
        umt5_encoder("huge", tokenizer)


@pytest.mark.parametrize("experts", EXPERTS)
def test_the_denoiser_seam_finds_the_transformers_and_reads_their_dtype(pipelines, experts):
    pipeline = pipelines[experts]
    found = denoiser.denoisers(pipeline)
    assert tuple(found) == EXPERTS[experts] and all(found[name] is getattr(pipeline, name) for name in found)
    assert denoiser.primary(pipeline) is pipeline.transformer
    assert denoiser.dtype(pipeline) == torch.float32
    # bfloat16, with the VAE moved back to float32 (as the vae_float32 option does): the denoisers' dtype counts
    cast = wan(experts).to(torch.bfloat16)
    cast.vae.to(torch.float32)
    assert cast.vae.dtype == torch.float32 and denoiser.dtype(cast) == torch.bfloat16
    assert {module.dtype for module in denoiser.denoisers(cast).values()} == {torch.bfloat16}


def test_prepare_compiles_every_block_of_both_experts_sets_the_attention_backend_and_renders_the_same(pipelines):
    from diffusers.models.attention import AttentionModuleMixin
    from diffusers.models.attention_dispatch import AttentionBackendName
    from torch._dynamo.utils import counters

    pipeline = wan(2)
    denoiser.prepare(pipeline, LoadOptions(compile=True, attention_backend="native"), step_cache=False)
    for transformer in denoiser.denoisers(pipeline).values():
        blocks = [m for m in transformer.modules() if type(m).__name__ == "WanTransformerBlock"]
        assert len(blocks) == 2 and all(block._compiled_call_impl is not None for block in blocks)
        # regional compile: the blocks are the compiled regions, the model's own forward stays eager
        assert transformer._compiled_call_impl is None and "forward" not in vars(transformer)
        processors = [m.processor for m in transformer.modules() if isinstance(m, AttentionModuleMixin)]
        # self- and cross-attention of each block
        assert len(processors) == 4
        assert all(processor._attention_backend == AttentionBackendName.NATIVE for processor in processors)
    counters.clear()
    compiled = render(pipeline)
    # the compiled blocks ran, each as one graph (a break would split it and lose fusion silently)
    assert counters["stats"]["unique_graphs"] >= 1 and not counters["graph_break"]
    # inductor fuses the blocks' kernels, so a few float sums round differently in their last bits
    np.testing.assert_allclose(compiled, render(pipelines[2]), rtol=0, atol=1e-5)


# (frames, window, overlap) -> latent spans, video spans: latent frames [s, e) render video frames [4s, 4(e-1)+1)
PLANS = [
    ((33, 17, 4), [(0, 5), (4, 9)], [(0, 17), (16, 33)]),  # 9 latent frames, windows of 5 sharing one
    ((49, 17, 8), [(0, 5), (3, 8), (6, 11), (8, 13)], [(0, 17), (12, 29), (24, 41), (32, 49)]),  # last one end-aligned
    ((9, 17, 4), [(0, 3)], [(0, 9)]),  # shorter than the window: one chunk of its own length
]


@pytest.mark.parametrize("args, latents, videos", PLANS, ids=[str(args) for args, *_ in PLANS])
def test_a_long_row_is_planned_in_latent_frames_and_each_chunk_is_a_valid_video(args, latents, videos):
    chunks = plan_chunks(*args, WAN.layout)
    assert [(c.latent_start, c.latent_end) for c in chunks] == latents
    assert [(c.start, c.end) for c in chunks] == videos
    for chunk in chunks:
        assert WAN.layout.valid_frames(chunk.frames)
        assert WAN.layout.latent_frames(chunk.frames) == chunk.latent_end - chunk.latent_start


def test_the_noise_bank_lays_chunks_out_as_the_pipeline_does_and_shared_latent_frames_start_alike(pipelines):
    pipeline = pipelines[1]
    row = SimpleNamespace(seed=11, height=32, width=32)
    chunks = plan_chunks(33, 17, 4, WAN.layout)
    noise = [WAN.chunk_noise(pipeline, row, chunk) for chunk in chunks]
    for chunk, latents in zip(chunks, noise, strict=True):
        # the pipeline's own initial latents for the chunk, as its call draws them
        own = pipeline.prepare_latents(1, pipeline.transformer.config.in_channels, 32, 32, chunk.frames,
                                       torch.float32, torch.device("cpu"), torch.Generator("cpu").manual_seed(0))
        assert latents.shape == own.shape == (1, 16, 5, 4, 4) and latents.dtype == own.dtype
    # latent frame 4 (video frame 16) is the last of chunk 0 and the first of chunk 1; the others differ
    assert torch.equal(noise[0][:, :, 4], noise[1][:, :, 0]) and not torch.equal(noise[0][:, :, 0], noise[1][:, :, 0])
    # the pipeline starts from a chunk's noise and renders its frames; its latents hold frames on the layout's axis
    assert render(pipeline, num_frames=chunks[1].frames, latents=noise[1]).shape == (1, 17, 32, 32, 3)
    latents = render(pipeline, num_frames=chunks[1].frames, latents=noise[1], output_type="latent")[0]
    assert latents.shape[WAN.layout.frame_axis] == chunks[1].latent_end - chunks[1].latent_start


# frames a row asks for -> frames WanPipeline renders (it moves them to n // 4 * 4 + 1, with only a warning)
RENDERED = {10: 9, 12: 13, 13: 13}


def test_the_layout_refuses_the_frame_counts_and_sizes_the_pipeline_would_change_or_reject(pipelines):
    assert WAN.layout.frame_rule() == "4k+1 (5, 9, ...)"
    for asked, rendered in RENDERED.items():
        assert render(pipelines[1], num_frames=asked).shape[1] == rendered
        assert WAN.layout.valid_frames(asked) == (rendered == asked)
    assert WAN.layout.size_multiple == 16
    with pytest.raises(ValueError, match="divisible by 16"):
        render(pipelines[1], height=40)


@dataclass(frozen=True)
class Row:
    """The fields of a request that prompt encoding reads."""

    prompt: str
    negative_prompt: str | None = "blurry"
    guidance_scale: float = 5.0
    params: dict = field(default_factory=dict)


def test_a_rows_prompt_is_encoded_once_and_its_embeddings_render_the_plain_frames(pipelines, monkeypatch):
    pipeline, row = pipelines[1], Row("a glass lighthouse")
    encoded, encode = [], pipeline.encode_prompt
    monkeypatch.setattr(pipeline, "encode_prompt", lambda **kw: encoded.append(kw["prompt"]) or encode(**kw))
    embeds = prompt_embeds_once(pipeline, row, t5_prompt_embeds)
    # the row's next chunk reuses the embeddings; another prompt, or guidance off, encodes again
    again = prompt_embeds_once(pipeline, row, t5_prompt_embeds)
    assert encoded == [row.prompt] and again["prompt_embeds"] is embeds["prompt_embeds"]
    for other in (replace(row, prompt="a paper boat"), replace(row, guidance_scale=1.0)):
        prompt_embeds_once(pipeline, other, t5_prompt_embeds)
    assert encoded == [row.prompt, "a paper boat", row.prompt]
    plain = render(pipeline, prompt=row.prompt, negative_prompt=row.negative_prompt, guidance_scale=5.0)
    assert np.array_equal(render(pipeline, **embeds, guidance_scale=5.0), plain)
