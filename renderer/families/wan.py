"""Wan 2.1 text-to-video: WanPipeline, a diffusion transformer over a causal 3D VAE and a UMT5 text encoder."""
from __future__ import annotations

from dataclasses import dataclass

from ..chunks import LatentLayout
from .base import Defaults, Family
from .components import scheduler, t5_tokenizer, umt5_encoder
from .params import Param
from .prompts import t5_prompt_embeds

# Wan-AI/Wan2.1-T2V-1.3B-Diffusers and -14B-Diffusers transformer/config.json
WAN_1_3B = dict(num_attention_heads=12, attention_head_dim=128, ffn_dim=8960, num_layers=30, text_dim=4096)
WAN_14B_CONFIG = dict(num_attention_heads=40, attention_head_dim=128, ffn_dim=13824, num_layers=40, text_dim=4096)
# diffusers' test transformer
WAN_TINY = dict(num_attention_heads=2, attention_head_dim=12, ffn_dim=32, num_layers=2, text_dim=32,
                rope_max_seq_len=32)
# the published VAE's per-channel latent statistics are part of its config; the tiny VAE keeps diffusers' defaults
WAN_VAE_TINY = dict(base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                    temperal_downsample=[False, True, True])


def names_component(entry) -> bool:
    """Whether a model_index.json entry names a component (an absent one and [null, null] do not)."""
    return isinstance(entry, list) and bool(entry) and entry[0] is not None


def wan22_checkpoint(index: dict) -> bool:
    """Whether a Wan checkpoint's model_index.json is Wan 2.2's: a second (low-noise) expert, the boundary between
    the experts, or TI2V-5B's per-token timesteps."""
    return (names_component(index.get("transformer_2")) or index.get("boundary_ratio") is not None
            or bool(index.get("expand_timesteps")))


@dataclass(frozen=True)
class Wan(Family):
    def claims(self, index):
        # Wan 2.2's checkpoints are WanPipelines too: the wan2.2 family loads them
        return super().claims(index) and not wan22_checkpoint(index)

    def components(self, size):
        from diffusers import AutoencoderKLWan, WanTransformer3DModel

        tokenizer = t5_tokenizer()
        published = WAN_14B_CONFIG if self.variant == "14b" else WAN_1_3B
        transformer = WanTransformer3DModel(
            patch_size=(1, 2, 2), in_channels=16, out_channels=16, freq_dim=256, cross_attn_norm=True,
            qk_norm="rms_norm_across_heads", **(WAN_TINY if size == "tiny" else published))
        vae = AutoencoderKLWan(**WAN_VAE_TINY) if size == "tiny" else AutoencoderKLWan()
        # the published scheduler: UniPC on flow-matching sigmas, shifted 3.0 for 480p, 5.0 for 720p
        unipc = scheduler("UniPCMultistepScheduler", prediction_type="flow_prediction", use_flow_sigmas=True,
                          flow_shift=5.0 if self.variant == "14b" else 3.0)
        return dict(tokenizer=tokenizer, text_encoder=umt5_encoder(size, tokenizer), transformer=transformer,
                    vae=vae, scheduler=unipc)

    def pipeline_kwargs(self, request, image, video):
        return dict(prompt=request.prompt, negative_prompt=request.negative_prompt, height=request.height,
                    width=request.width, num_frames=request.num_frames,
                    num_inference_steps=request.num_inference_steps, guidance_scale=request.guidance_scale,
                    **self.call_arguments(request))

    def latent_frame_shape(self, pipeline, request):
        scale = pipeline.vae_scale_factor_spatial
        return pipeline.vae.config.z_dim, request.height // scale, request.width // scale

    def decode_window(self, request, latent_frames):
        # the VAE is causal in time: a window decoded alone would start with a lone frame, so a stitched row is
        # decoded whole, as the pipeline decodes one call's latents
        return latent_frames

    def decode_latents(self, pipeline, latents):
        # the pipeline's own decode after its last step: latents leave its loop normalised per channel
        import torch

        config = pipeline.vae.config
        mean = torch.tensor(config.latents_mean).view(1, config.z_dim, 1, 1, 1).to(latents)
        std = torch.tensor(config.latents_std).view(1, config.z_dim, 1, 1, 1).to(latents)
        return pipeline.vae.decode(latents * std + mean, return_dict=False)[0]


# TaylorSeer's default patterns name attention modules `...attn`, which no Wan module's full name matches (they end
# attn1/attn2): it would silently cache nothing
WAN_CACHE_DEFAULTS = {"taylorseer": {"cache_identifiers": [r"^blocks\.\d+\.(attn1|attn2|ffn)$"]}}

ARGUMENTS = {
    "max_sequence_length": Param(int, "UMT5 tokens read from the prompt (longer prompts are cut)", minimum=1,
                                 maximum=512),
}

WAN = Wan(
    name="wan", pipeline_class="WanPipeline", inputs=("prompt",), window=81,
    defaults=Defaults(num_frames=81, height=480, width=832, num_inference_steps=50, fps=16, guidance_scale=5.0),
    tiny_defaults=Defaults(num_frames=9, height=32, width=32, num_inference_steps=4, fps=16, guidance_scale=5.0),
    arguments=ARGUMENTS, checkpoints=("Wan-AI/Wan2.1-T2V-1.3B-Diffusers", "Wan-AI/Wan2.1-T2V-14B-Diffusers"),
    # (C, F, H, W) latents: frame 0 alone, then 4 frames per latent frame; an 8x VAE under 2x2 patches
    layout=LatentLayout(frame_axis=1, temporal=4, causal_first=True, spatial=8, patch=2),
    prompt_encoder=t5_prompt_embeds, memory_options=("vae_slicing", "vae_tiling"), cuda_dtype="bfloat16",
    context_parallel=True,
    # FasterCache fails on its two-pass guidance (one transformer call per branch)
    caches=("first_block", "taylorseer", "mag", "pab"), cache_defaults=WAN_CACHE_DEFAULTS, flow_shift="flow_shift",
)
# the published sizes by name: random-wan-1.3b is random-wan; the 14B model renders 720p
WAN_1_3B_PRESET = WAN.with_variant("1.3b")
WAN_14B = WAN.with_variant("14b", defaults=Defaults(num_frames=81, height=720, width=1280, num_inference_steps=50,
                                                    fps=16, guidance_scale=5.0))
