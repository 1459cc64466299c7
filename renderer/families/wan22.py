"""Wan 2.2: text-to-video over two experts (T2V-A14B), image-to-video from a first and optionally a last frame over
two experts (I2V-A14B), and the 5B text-and-image-to-video model on the 48-channel Wan 2.2 VAE (TI2V-5B).

The A14B models split the denoising between two transformers of the 14B architecture: `transformer` (the
high-noise expert) takes the steps at or above the boundary timestep (`boundary_ratio` x 1000), `transformer_2`
(the low-noise expert) the rest, each with its own guidance scale (`guidance_scale`, `guidance_scale_2`).
"""
from __future__ import annotations

from dataclasses import dataclass, replace

from ..chunks import ANCHORED, CHAIN, KEYFRAMES, LatentLayout
from ..errors import RowRejected
from ..inputs import load_image
from .base import Defaults
from .components import scheduler, t5_tokenizer, umt5_encoder
from .params import Param
from .pipeline_state import keyed_seed, sibling_pipeline
from .prompts import t5_prompt_embeds
from .wan import (
    ARGUMENTS as WAN_ARGUMENTS,
    WAN_14B_CONFIG,
    WAN_CACHE_DEFAULTS,
    WAN_TINY,
    WAN_VAE_TINY,
    Wan,
    names_component,
    wan22_checkpoint,
)

I2V = "WanImageToVideoPipeline"
# Wan-AI/Wan2.2-TI2V-5B-Diffusers transformer/config.json (hidden size 24 x 128 = 3072)
TI2V_5B = dict(num_attention_heads=24, attention_head_dim=128, ffn_dim=14336, num_layers=30, text_dim=4096)
# the Wan 2.2 VAE (Wan-AI/Wan2.2-TI2V-5B-Diffusers vae/config.json): 2x2 pixels patched into 12 channels, then 8x
# down, so 16x spatially; 48 latent channels with their published statistics
WAN22_VAE = dict(
    base_dim=160, decoder_base_dim=256, z_dim=48, in_channels=12, out_channels=12, is_residual=True, patch_size=2,
    scale_factor_temporal=4, scale_factor_spatial=16,
    latents_mean=[-0.2289, -0.0052, -0.1323, -0.2339, -0.2799, 0.0174, 0.1838, 0.1557, -0.1382, 0.0542, 0.2813,
                  0.0891, 0.1570, -0.0098, 0.0375, -0.1825, -0.2246, -0.1207, -0.0698, 0.5109, 0.2665, -0.2108,
                  -0.2158, 0.2502, -0.2055, -0.0322, 0.1109, 0.1567, -0.0729, 0.0899, -0.2799, -0.1230, -0.0313,
                  -0.1649, 0.0117, 0.0723, -0.2839, -0.2083, -0.0520, 0.3748, 0.0152, 0.1957, 0.1433, -0.2944,
                  0.3573, -0.0548, -0.1681, -0.0667],
    latents_std=[0.4765, 1.0364, 0.4514, 1.1677, 0.5313, 0.4990, 0.4818, 0.5013, 0.8158, 1.0344, 0.5894, 1.0901,
                 0.6885, 0.6165, 0.8454, 0.4978, 0.5759, 0.3523, 0.7135, 0.6804, 0.5833, 1.4146, 0.8986, 0.5659,
                 0.7069, 0.5338, 0.4889, 0.4917, 0.4069, 0.4999, 0.6866, 0.4093, 0.5709, 0.6065, 0.6415, 0.4944,
                 0.5726, 1.2042, 0.5458, 1.6887, 0.3971, 1.0600, 0.3943, 0.5537, 0.5444, 0.4089, 0.7468, 0.7744])
# diffusers' test VAE of TI2V (test_wan_22.py)
WAN22_VAE_TINY = dict(base_dim=3, z_dim=48, in_channels=12, out_channels=12, is_residual=True, patch_size=2,
                      latents_mean=[0.0] * 48, latents_std=[1.0] * 48, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                      scale_factor_spatial=16, scale_factor_temporal=4, temperal_downsample=[False, True, True])


@dataclass(frozen=True)
class Wan22(Wan):
    # the fraction of the 1000 training timesteps below which the low-noise expert denoises; None: one transformer
    boundary_ratio: float | None = None
    # TI2V-5B: a timestep per latent token, so the first frame of an image row stays the image
    expand_timesteps: bool = False
    # the published scheduler's flow shift (diffusers' conversion script: 3.0 for A14B, 5.0 for TI2V-5B)
    shift: float = 3.0

    def claims(self, index):
        return index.get("_class_name") in (self.pipeline_class, I2V) and wan22_checkpoint(index) and (
            # Wan 2.1's image-to-video checkpoints have a CLIP image encoder; Wan 2.2's have none
            not names_component(index.get("image_encoder")))

    def for_checkpoint(self, index, read_config):
        if index.get("expand_timesteps"):
            return WAN22_TI2V
        return WAN22_I2V if index.get("_class_name") == I2V else WAN22

    def components(self, size):
        tokenizer = t5_tokenizer()
        unipc = scheduler("UniPCMultistepScheduler", prediction_type="flow_prediction", use_flow_sigmas=True,
                          flow_shift=self.shift)
        parts = dict(tokenizer=tokenizer, text_encoder=umt5_encoder(size, tokenizer), vae=self._vae(size),
                     scheduler=unipc, transformer=self._transformer(size))
        if self.boundary_ratio is not None:
            # the low-noise expert: the same architecture, built second, so its seeded random weights are its own
            parts.update(transformer_2=self._transformer(size), boundary_ratio=self.boundary_ratio)
        if self.expand_timesteps:
            parts["expand_timesteps"] = True
        return parts

    def _transformer(self, size: str):
        from diffusers import WanTransformer3DModel

        channels = 48 if self.expand_timesteps else 16
        # image-to-video reads the noise, then the frame mask (4 channels: a latent frame holds 4 video frames) and
        # the encoded conditioning frames
        inputs = 2 * channels + 4 if self.pipeline_class == I2V else channels
        published = TI2V_5B if self.expand_timesteps else WAN_14B_CONFIG
        return WanTransformer3DModel(
            patch_size=(1, 2, 2), in_channels=inputs, out_channels=channels, freq_dim=256, cross_attn_norm=True,
            qk_norm="rms_norm_across_heads", **(WAN_TINY if size == "tiny" else published))

    def _vae(self, size: str):
        from diffusers import AutoencoderKLWan

        if self.expand_timesteps:
            return AutoencoderKLWan(**(WAN22_VAE_TINY if size == "tiny" else WAN22_VAE))
        # A14B: the Wan 2.1 VAE
        return AutoencoderKLWan(**WAN_VAE_TINY) if size == "tiny" else AutoencoderKLWan()

    def pipeline_kwargs(self, request, image, video):
        kwargs = super().pipeline_kwargs(request, image, video)
        if image is not None:
            kwargs["image"] = image
        if request.last_image is not None:
            kwargs["last_image"] = load_image(request.last_image, "last_image")
        return kwargs

    def pipeline_for(self, pipeline, request):
        if request.image is None or type(pipeline).__name__ == I2V:
            return pipeline
        # TI2V-5B's image-to-video: diffusers' image-to-video pipeline over the loaded components (the row's
        # scheduler included), which holds the first latent frame to the encoded image
        return sibling_pipeline(pipeline, I2V, boundary_ratio=pipeline.config.boundary_ratio,
                                expand_timesteps=pipeline.config.expand_timesteps)

    def check_request(self, request):
        if request.image is not None and len(request.plan) > 1 and CHAIN not in self.chunk_modes:
            raise RowRejected("num_frames", request.num_frames, f"an image row of {self.preset} renders in one "
                              f"window ({request.plan[0].frames} frames at most): anchored chunks would each "
                              "start again from the row's image")

    def generate_keyframe(self, pipeline, request, keyframe, anchor, generator):
        """A keyframe after the first (the row's image): the last frame of the shortest image-to-video call (one
        latent frame on) from the first, from noise of its own."""
        generator.manual_seed(keyed_seed(request.seed, f"keyframe {keyframe.index}"))
        hop = replace(request, num_frames=self.layout.temporal + 1, last_image=None)
        return self.generate(pipeline, hop, anchor, None, generator)[-1:]

    def generate_between(self, pipeline, request, chunk, first, last, generator):
        """A window from keyframe `first` to keyframe `last`: the first-and-last-frame call, from noise of its own."""
        generator.manual_seed(keyed_seed(request.seed, f"window {chunk.index}"))
        window = replace(request, num_frames=chunk.frames, last_image=None)
        return self.generate(pipeline, window, first, None, generator, last_image=last)

    def generate_chunk(self, pipeline, request, chunk, image, video, generator):
        # the row's last frame ends the video, so only the chunk that ends it is pinned to it
        if chunk.end < request.num_frames:
            request = replace(request, last_image=None)
        return super().generate_chunk(pipeline, request, chunk, image, video, generator)

    def configure(self, pipeline, request, base_scheduler):
        super().configure(pipeline, request, base_scheduler)
        cache = self.row_cache(request)
        if cache is not None and cache["kind"] in ("mag", "taylorseer"):
            expert_caches(pipeline, cache, request.num_inference_steps, self.layout.frame_axis)


def high_noise_steps(pipeline, steps: int) -> int:
    """How many of a call's `steps` the high-noise expert takes: those whose timestep is at or above the boundary,
    on the row's scheduler (its flow shift moves the boundary)."""
    boundary = pipeline.config.boundary_ratio
    if boundary is None or getattr(pipeline, "transformer_2", None) is None:
        return steps
    schedule = type(pipeline.scheduler).from_config(pipeline.scheduler.config)
    schedule.set_timesteps(steps)
    return int((schedule.timesteps >= boundary * schedule.config.num_train_timesteps).sum())


def expert_caches(pipeline, cache: dict, steps: int, frame_axis: int | None) -> None:
    """The row's cache on each expert, where the same config on both would be wrong.

    TaylorSeer's step options count each expert's own steps. MagCache counts the steps its transformer takes and
    reads one magnitude ratio per step: each expert takes only its share of the call's steps, so each gets its
    share's count and its slice of the row's ratios (given for the whole call, high-noise steps first);
    calibrating logs each expert's ratios at the end of its share."""
    from ..transformer_cache import cache_config, set_transformer_cache

    high = high_noise_steps(pipeline, steps)
    ratios = _mag_ratios(cache, steps)
    for name, share in (("transformer", slice(0, high)), ("transformer_2", slice(high, steps))):
        expert = getattr(pipeline, name, None)
        if expert is None:
            continue
        own, taken = cache, steps
        if cache["kind"] == "mag":
            own = cache if ratios is None else {**cache, "mag_ratios": ratios[share]}
            taken = share.stop - share.start
        set_transformer_cache(expert, cache_config(pipeline, own, taken, frame_axis) if taken else None)


def _mag_ratios(cache: dict, steps: int) -> list | None:
    """A MagCache row's ratios, one per step of the call (diffusers' nearest interpolation where it gave fewer or
    more)."""
    ratios = cache.get("mag_ratios")
    if ratios is None or len(ratios) == steps:
        return ratios
    import torch
    from diffusers.hooks.mag_cache import nearest_interp

    return nearest_interp(torch.tensor(ratios), steps).tolist()


ARGUMENTS = {
    **WAN_ARGUMENTS,
    "guidance_scale_2": Param(float, "guidance of the low-noise expert (transformer_2: the steps below the "
                              "boundary timestep); default: guidance_scale (the published T2V-A14B call: 3.0 with "
                              "guidance_scale 4.0)", minimum=0.0),
}
# (C, F, H, W) latents: frame 0 alone, then 4 frames per latent frame; the 8x Wan 2.1 VAE under 2x2 patches
A14B_LAYOUT = LatentLayout(frame_axis=1, temporal=4, causal_first=True, spatial=8, patch=2)

WAN22 = Wan22(
    name="wan2.2", pipeline_class="WanPipeline", inputs=("prompt",), window=81,
    # the published T2V-A14B call at 480p (the smaller of its two sizes: both experts and UMT5-XXL fit one 80 GB
    # GPU with room for the activations)
    defaults=Defaults(num_frames=81, height=480, width=832, num_inference_steps=40, fps=16, guidance_scale=4.0),
    tiny_defaults=Defaults(num_frames=9, height=32, width=32, num_inference_steps=4, fps=16, guidance_scale=5.0),
    arguments=ARGUMENTS, checkpoints=("Wan-AI/Wan2.2-T2V-A14B-Diffusers",), compatible_classes=(I2V,),
    layout=A14B_LAYOUT, prompt_encoder=t5_prompt_embeds,
    memory_options=("vae_slicing", "vae_tiling"), cuda_dtype="bfloat16", context_parallel=True,
    # FasterCache fails on the two-pass guidance (one transformer call per branch)
    caches=("first_block", "taylorseer", "mag", "pab"), cache_defaults=WAN_CACHE_DEFAULTS, flow_shift="flow_shift",
    boundary_ratio=0.875,
)
# image-to-video from the row's image (and its last_image, if any): the experts read the encoded frames beside the
# noise, and no CLIP image encoder; a long row chains, each chunk starting from the previous chunk's last frame, or
# renders between keyframes the same model makes from the row's image
WAN22_I2V = WAN22.with_variant(
    "i2v", pipeline_class=I2V, inputs=("prompt", "image", "last_image"), required=("prompt", "image"),
    defaults=Defaults(num_frames=81, height=480, width=832, num_inference_steps=40, fps=16, guidance_scale=3.5),
    checkpoints=("Wan-AI/Wan2.2-I2V-A14B-Diffusers",), chunk_modes=(CHAIN, KEYFRAMES), boundary_ratio=0.9,
)
# one 5B transformer on the 48-channel VAE: 16x spatially under 2x2 patches, so sizes are multiples of 32; a row
# with an image starts from it (diffusers' image-to-video pipeline over the same components)
WAN22_TI2V = WAN22.with_variant(
    "ti2v-5b", inputs=("prompt", "image"), required=("prompt",), window=121,
    defaults=Defaults(num_frames=121, height=704, width=1280, num_inference_steps=50, fps=24, guidance_scale=5.0),
    tiny_defaults=Defaults(num_frames=9, height=32, width=32, num_inference_steps=4, fps=24, guidance_scale=5.0),
    arguments=WAN_ARGUMENTS, checkpoints=("Wan-AI/Wan2.2-TI2V-5B-Diffusers",), chunk_modes=(ANCHORED,),
    layout=replace(A14B_LAYOUT, spatial=16), boundary_ratio=None, expand_timesteps=True, shift=5.0,
)
