"""HunyuanVideo: HunyuanVideoPipeline (text-to-video) and HunyuanVideoImageToVideoPipeline (the `i2v` variant), a
dual-stream diffusion transformer over a causal 3D VAE, prompted through a Llama text tower (the prompt inside a chat
template; LLaVA's, which also sees the image, for i2v) and CLIP ViT-L's pooled text embedding.

Its guidance is embedded: the published transformers were distilled to take the guidance scale as an input, so the
`guidance_scale` column costs nothing and one transformer pass runs per step. `true_cfg_scale` > 1 adds real
classifier-free guidance on top (a second pass per step, on the negative prompt).
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass

from ..chunks import CHAIN, LatentLayout
from ..errors import RowRejected
from .base import Defaults, Family
from .components import clip_text_encoder, clip_tokenizer, llama_config, llama_text_encoder, llama_tokenizer, scheduler
from .params import Param

# hunyuanvideo-community/HunyuanVideo transformer/config.json: the class defaults (12.8B), spelled out
HUNYUAN_TRANSFORMER = dict(in_channels=16, out_channels=16, num_attention_heads=24, attention_head_dim=128,
                           num_layers=20, num_single_layers=40, num_refiner_layers=2, mlp_ratio=4.0, patch_size=2,
                           patch_size_t=1, guidance_embeds=True, text_embed_dim=4096, pooled_projection_dim=768,
                           rope_theta=256.0, rope_axes_dim=(16, 56, 56))
# diffusers' test transformer, with two blocks of each kind (the first-block cache needs a block after the first);
# its text widths are the tiny towers' (Llama hidden 16, CLIP hidden 32)
HUNYUAN_TINY = dict(in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=10, num_layers=2,
                    num_single_layers=2, num_refiner_layers=1, patch_size=1, patch_size_t=1, guidance_embeds=True,
                    text_embed_dim=16, pooled_projection_dim=32, rope_axes_dim=(2, 4, 4))
# diffusers' test VAE: the published 8x spatial and 4x temporal compression over 4 latent channels
HUNYUAN_VAE_TINY = dict(latent_channels=4, down_block_types=("HunyuanVideoDownBlock3D",) * 4,
                        up_block_types=("HunyuanVideoUpBlock3D",) * 4, block_out_channels=(8, 8, 8, 8),
                        layers_per_block=1, norm_num_groups=4)
# HunyuanVideo-I2V (the 16-channel layout of diffusers' conversion script): the image's latent replaces the first
# latent frame's tokens, guidance stays embedded
I2V_CONDITION = "token_replace"
# llava-llama-3-8b's vision tower: CLIP ViT-L/14 at 336 px (576 image tokens), its features from the last layer but
# one, projected by a two-layer MLP
LLAVA_VISION = dict(hidden_size=1024, intermediate_size=4096, num_attention_heads=16, num_hidden_layers=24,
                    image_size=336, patch_size=14, projection_dim=768, hidden_act="quick_gelu")
LLAVA_VISION_TINY = dict(hidden_size=8, intermediate_size=16, num_attention_heads=2, num_hidden_layers=2,
                         image_size=16, patch_size=4, projection_dim=8)
# Llama 3's chat markers: the i2v encoder finds the assistant's turn by them and the image's place by <image>
CHAT_MARKS = ("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>", "<image>")
# Llama 3's first token: a tokenizer that begins with it counts the templates as their published numbers do
LLAMA3_BOS = "<|begin_of_text|>"


def prompt_template(pipeline) -> dict:
    """The Llama prompt template of a pipeline: the one its call uses by default, with the counts it holds taken in
    the pipeline's own tokens.

    The published `crop_start` (95 for text-to-video, 103 for i2v) counts the template's prefix (the system prompt
    before the user's text) in Llama 3's tokens, and the encoder crops that many from the left; i2v's also place the
    image's 576 tokens. A tokenizer other than Llama 3's (the presets' offline one) spells the prefix in far more
    tokens, so the counts are taken again; without that the crop would leave most of the system prompt in front of
    the user's text, and the image's tokens would be looked for in the wrong place."""
    published = _call_default(pipeline, "prompt_template")
    tokenizer = pipeline.tokenizer
    if tokenizer.bos_token == LLAMA3_BOS:
        return published
    ids = tokenizer(published["template"].split("{}")[0]).input_ids
    template = {**published, "crop_start": len(ids)}
    if "image_emb_len" in published:
        config = pipeline.text_encoder.config
        vision = config.vision_config
        # one token per patch, and the class token where the tower keeps it
        length = (vision.image_size // vision.patch_size) ** 2 + (config.vision_feature_select_strategy == "full")
        start = ids.index(config.image_token_index)
        template.update(image_emb_start=start, image_emb_end=start + length, image_emb_len=length)
    return template


def hunyuan_prompt_embeds(pipeline, request) -> dict:
    """HunyuanVideo's encode_prompt, once per row: the Llama embeddings and their mask plus CLIP's pooled embedding,
    and the negative prompt's only where true classifier-free guidance runs (as the call encodes them)."""
    length = request.params.get("max_sequence_length", _call_default(pipeline, "max_sequence_length"))
    encode = dict(prompt_template=prompt_template(pipeline), device=pipeline._execution_device,
                  max_sequence_length=length)
    names = ("prompt_embeds", "pooled_prompt_embeds", "prompt_attention_mask")
    embeds = dict(zip(names, pipeline.encode_prompt(prompt=request.prompt, **encode), strict=True))
    if request.params.get("true_cfg_scale", 1.0) > 1:
        negative = pipeline.encode_prompt(prompt=request.negative_prompt, **encode)
        embeds.update(zip((f"negative_{name}" for name in names), negative, strict=True))
    return embeds


def _call_default(pipeline, name: str):
    """The default value of one of the pipeline call's keyword arguments."""
    return inspect.signature(type(pipeline).__call__).parameters[name].default


def llava_tokenizer():
    """The offline Llama tokenizer with Llama 3's chat markers and LLaVA's <image> as single tokens, which the i2v
    encoder looks up by name."""
    tokenizer = llama_tokenizer()
    tokenizer.add_special_tokens({"additional_special_tokens": list(CHAT_MARKS)})
    return tokenizer


def llava_text_encoder(size: str, tokenizer):
    """LLaVA (a CLIP vision tower whose features become the Llama's tokens where <image> stands): tiny, or
    llava-llama-3-8b's with random weights ('random')."""
    from transformers import CLIPVisionConfig, LlavaConfig, LlavaForConditionalGeneration

    vision = CLIPVisionConfig(**(LLAVA_VISION_TINY if size == "tiny" else LLAVA_VISION))
    config = LlavaConfig(text_config=llama_config(size, tokenizer), vision_config=vision, vision_feature_layer=-2,
                         vision_feature_select_strategy="default", projector_hidden_act="gelu",
                         pad_token_id=tokenizer.pad_token_id,
                         image_token_index=tokenizer.convert_tokens_to_ids("<image>"))
    return LlavaForConditionalGeneration(config).eval()


@dataclass(frozen=True)
class HunyuanVideo(Family):
    def components(self, size):
        from diffusers import AutoencoderKLHunyuanVideo, HunyuanVideoTransformer3DModel

        tiny, i2v = size == "tiny", self.variant == "i2v"
        condition = dict(image_condition_type=I2V_CONDITION) if i2v else {}
        transformer = HunyuanVideoTransformer3DModel(**(HUNYUAN_TINY if tiny else HUNYUAN_TRANSFORMER), **condition)
        vae = AutoencoderKLHunyuanVideo(**HUNYUAN_VAE_TINY) if tiny else AutoencoderKLHunyuanVideo()
        tokenizer_2 = clip_tokenizer()
        parts = dict(tokenizer_2=tokenizer_2, text_encoder_2=clip_text_encoder(size, tokenizer_2, "vit-l"),
                     transformer=transformer, vae=vae, scheduler=scheduler("FlowMatchEulerDiscreteScheduler",
                                                                           shift=7.0))
        if not i2v:
            tokenizer = llama_tokenizer()
            return dict(parts, tokenizer=tokenizer, text_encoder=llama_text_encoder(size, tokenizer))
        from transformers import CLIPImageProcessorPil

        tokenizer, pixels = llava_tokenizer(), (LLAVA_VISION_TINY if tiny else LLAVA_VISION)["image_size"]
        return dict(parts, tokenizer=tokenizer, text_encoder=llava_text_encoder(size, tokenizer),
                    image_processor=CLIPImageProcessorPil(crop_size=pixels, size=pixels))

    def claims(self, index):
        return index.get("_class_name") in (self.pipeline_class, *self.compatible_classes)

    def for_checkpoint(self, index, read_config):
        if index.get("_class_name") != HUNYUANVIDEO_I2V.pipeline_class:
            return self
        condition = read_config("transformer").get("image_condition_type")
        if condition != I2V_CONDITION:
            raise RowRejected("model", index.get("_class_name"), f"an i2v transformer conditioned by {condition!r} "
                              f"is not supported (only {I2V_CONDITION!r}: the 33-channel latent_concat layout "
                              "renders 4 frames fewer than asked)")
        return HUNYUANVIDEO_I2V

    def pipeline_kwargs(self, request, image, video):
        kwargs = dict(prompt=request.prompt, negative_prompt=request.negative_prompt, height=request.height,
                      width=request.width, num_frames=request.num_frames,
                      num_inference_steps=request.num_inference_steps, guidance_scale=request.guidance_scale,
                      **self.call_arguments(request))
        return dict(kwargs, image=image) if "image" in self.inputs else kwargs

    def generate(self, pipeline, request, image, video, generator, **overrides):
        # the template's counts belong to the pipeline's tokenizer, not to the row
        overrides = {"prompt_template": prompt_template(pipeline), **overrides}
        return super().generate(pipeline, request, image, video, generator, **overrides)

    def guidance_passes(self, request):
        # the guidance_scale column is embedded in one pass; true CFG (on a negative prompt) adds the second
        return 2 if request.arguments.get("true_cfg_scale", 1.0) > 1 else 1

    def check_request(self, request):
        arguments = request.arguments
        if arguments.get("true_cfg_scale", 1.0) > 1 and request.negative_prompt is None:
            raise RowRejected("params.true_cfg_scale", arguments["true_cfg_scale"], "needs a negative_prompt: "
                              "true classifier-free guidance steers away from it (without one the pipeline "
                              "ignores the scale)")
        sigmas = arguments.get("sigmas")
        if sigmas is not None and len(sigmas) != request.num_inference_steps:
            raise RowRejected("params.sigmas", sigmas, f"must hold one sigma per step (num_inference_steps="
                              f"{request.num_inference_steps}), not {len(sigmas)}")

    def latent_frame_shape(self, pipeline, request):
        scale = pipeline.vae_scale_factor_spatial
        return pipeline.transformer.config.in_channels, request.height // scale, request.width // scale

    def decode_window(self, request, latent_frames):
        # the VAE is causal in time: a window decoded alone would start with a lone frame, so a stitched row is
        # decoded whole, as the pipeline decodes one call's latents (the VAE itself decodes it in overlapping
        # windows of frames, blended)
        return latent_frames

    def decode_latents(self, pipeline, latents):
        # the pipeline's own decode after its last step
        return pipeline.vae.decode(latents / pipeline.vae.config.scaling_factor, return_dict=False)[0]


ARGUMENTS = {
    "true_cfg_scale": Param(float, "real classifier-free guidance on the negative prompt when > 1 (a second "
                            "transformer pass per step; the guidance_scale column is the embedded guidance)",
                            minimum=1.0, maximum=30.0),
    "max_sequence_length": Param(int, "Llama tokens read from the prompt after the template (longer prompts are "
                                 "cut)", minimum=1, maximum=1024),
    "sigmas": Param(list, "the noise levels of the steps, from 1 towards 0, one per step (before the shift)",
                    minimum=0.0, maximum=1.0),
}
I2V_ARGUMENTS = {
    **ARGUMENTS,
    "image_embed_interleave": Param(int, "keep 1 of every N of the image's tokens in the prompt embeddings "
                                    "(default 4)", minimum=1, maximum=5),
}

HUNYUANVIDEO = HunyuanVideo(
    name="hunyuanvideo", pipeline_class="HunyuanVideoPipeline", inputs=("prompt",), window=129,
    defaults=Defaults(num_frames=129, height=720, width=1280, num_inference_steps=50, fps=24, guidance_scale=6.0),
    tiny_defaults=Defaults(num_frames=9, height=32, width=32, num_inference_steps=4, fps=24, guidance_scale=6.0),
    arguments=ARGUMENTS, checkpoints=("hunyuanvideo-community/HunyuanVideo",),
    compatible_classes=("HunyuanVideoImageToVideoPipeline",),
    # (C, F, H, W) latents: frame 0 alone, then 4 frames per latent frame; an 8x VAE under 2x2 patches (the tiny
    # transformer's patches are 1x1, but the pipeline asks multiples of 16 of every model)
    layout=LatentLayout(frame_axis=1, temporal=4, causal_first=True, spatial=8, patch=2),
    prompt_encoder=hunyuan_prompt_embeds, memory_options=("vae_slicing", "vae_tiling"), cuda_dtype="bfloat16",
    # FasterCache expects the guided and unguided branches batched in one transformer call; this pipeline makes one
    # call per branch
    caches=("first_block", "taylorseer", "mag", "pab"), flow_shift="shift",
)
HUNYUANVIDEO_I2V = HUNYUANVIDEO.with_variant(
    "i2v", pipeline_class="HunyuanVideoImageToVideoPipeline", inputs=("prompt", "image"),
    required=("prompt", "image"), arguments=I2V_ARGUMENTS, checkpoints=("hunyuanvideo-community/HunyuanVideo-I2V",),
    compatible_classes=(),
    # the prompt's embeddings hold the image's tokens, and a chained chunk's image is the last chunk's frame: each
    # chunk encodes its own
    prompt_encoder=None,
    # the first latent frame is the image's own: every chunk of a long row starts from the frame the last one
    # reached (anchored chunks would each restart from the row's image)
    chunk_modes=(CHAIN,),
    # the i2v pipeline sets no cache context, which the first-block and TaylorSeer hooks need
    caches=("mag", "pab"),
)
