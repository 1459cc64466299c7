"""SkyReels-V2 diffusion forcing text-to-video: SkyReelsV2DiffusionForcingPipeline, a Wan-style diffusion transformer
that renders a row of any length in one call, as windows of `base_num_frames` frames denoised one after another,
each conditioned on the last `overlap_history` frames of the one before.

Every rule here is in latent frames (4 video frames each, the first alone): a window of 97 frames is 25 latent frames,
an overlap of 17 frames is 5. Window k starts where window k-1 ends less the overlap, and the last window is as
short as the frames left (SkyReelsV2DiffusionForcingPipeline.prepare_latents).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

from ..chunks import Chunk, LatentLayout
from ..errors import RowRejected
from .base import Defaults, Family
from .components import scheduler, t5_tokenizer, umt5_encoder
from .params import Param
from .wan import WAN_1_3B, WAN_14B_CONFIG, WAN_CACHE_DEFAULTS, WAN_TINY, WAN_VAE_TINY

# Skywork/SkyReels-V2-DF-1.3B-540P-Diffusers transformer/config.json: Wan 1.3B's dimensions, plus the frame-rate
# embedding (inject_sample_info), which the 14B checkpoints lack; the tiny transformer has it too, so a row's fps
# reaches it as it reaches the 1.3B model
DF_1_3B = dict(WAN_1_3B, inject_sample_info=True)
DF_14B = dict(WAN_14B_CONFIG, inject_sample_info=False)
DF_TINY = dict(WAN_TINY, inject_sample_info=True)
# the heads that tell a 14B checkpoint from a 1.3B one
HEADS_14B = WAN_14B_CONFIG["num_attention_heads"]
# (C, F, H, W) latents: frame 0 alone, then 4 frames per latent frame; an 8x VAE under 2x2 patches
LAYOUT = LatentLayout(frame_axis=1, temporal=4, causal_first=True, spatial=8, patch=2)
# renderer chunking: a long row is one call here, so these options would be silently ignored
CHUNK_OPTIONS = ("chunk_mode", "chunk_window", "chunk_overlap")


def condition_noise_seed(seed: int) -> int:
    """The seed of the noise `addnoise_condition` adds to a window's conditioning frames. The pipeline draws that
    noise from torch's global generator, not the call's, so each row seeds the global one from its own seed (through
    a digest: a stream apart from the call generator's)."""
    digest = hashlib.sha256(f"{seed}\x00addnoise_condition".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def reset_cache_each_window(pipeline, step: int, timestep, tensors: dict) -> dict:
    """callback_on_step_end: after a window's last pass, the transformer cache's state is reset, so the next window
    starts its own warm-up instead of extrapolating the last window's features (of another length, at another
    noise level). `step` restarts at 0 in every window and `num_timesteps` is the window's pass count."""
    if step == pipeline.num_timesteps - 1:
        pipeline.transformer._reset_stateful_cache()
    return {}


def df_windows(frames: int, window: int, overlap: int) -> list[tuple[int, int]]:
    """The latent frame spans [start, end) of the windows the pipeline denoises for a video of `frames` latent
    frames, in windows of `window` sharing `overlap` (as its prepare_latents lays them out)."""
    spans = [(0, min(window, frames))]
    while spans[-1][1] < frames:
        start = spans[-1][1] - overlap
        spans.append((start, min(start + window, frames)))
    return spans


def block_frames(frames: int, block: int) -> tuple[int, ...]:
    """The frame counts on either side of `frames` whose latent frames are whole causal blocks (4*block*m - 3)."""
    lower = (LAYOUT.latent_frames(frames) // block) * block
    return tuple(LAYOUT.temporal * (n - 1) + 1 for n in (lower, lower + block) if n > 0)


@dataclass(frozen=True)
class SkyReelsDF(Family):
    def components(self, size):
        from diffusers import AutoencoderKLWan, SkyReelsV2Transformer3DModel

        tokenizer = t5_tokenizer()
        published = DF_14B if self.variant.startswith("14b") else DF_1_3B
        transformer = SkyReelsV2Transformer3DModel(
            patch_size=(1, 2, 2), in_channels=16, out_channels=16, freq_dim=256, cross_attn_norm=True,
            qk_norm="rms_norm_across_heads", **(DF_TINY if size == "tiny" else published))
        vae = AutoencoderKLWan(**WAN_VAE_TINY) if size == "tiny" else AutoencoderKLWan()
        # the published text-to-video scheduler: UniPC on flow-matching sigmas shifted 8.0
        unipc = scheduler("UniPCMultistepScheduler", prediction_type="flow_prediction", use_flow_sigmas=True,
                          flow_shift=8.0)
        return dict(tokenizer=tokenizer, text_encoder=umt5_encoder(size, tokenizer), transformer=transformer,
                    vae=vae, scheduler=unipc)

    def for_checkpoint(self, index, read_config):
        # 14B-540P and 14B-720P share one config: a 14B checkpoint is taken for the 540P model
        heads = read_config("transformer").get("num_attention_heads")
        return DF_14B_540P if heads == HEADS_14B else self

    def single_call(self, options):
        # the pipeline's own windows render a long row in one call on one actor, never as renderer chunks
        return True

    def base_frames(self, request) -> int:
        """The row's window: params.base_num_frames, else the model's native window (its default frame count)."""
        return request.arguments.get("base_num_frames", self.model_defaults(request).num_frames)

    def call_windows(self, request):
        """The windows of the row's call as chunks: their video frames, for the seam metrics, and latent spans."""
        overlap = request.arguments.get("overlap_history")
        if request.num_frames <= self.base_frames(request) or overlap is None:
            return request.plan
        spans = df_windows(LAYOUT.latent_frames(request.num_frames), LAYOUT.latent_frames(self.base_frames(request)),
                           LAYOUT.latent_frames(overlap))
        return tuple(Chunk(i, *LAYOUT.video_span(s, e), s, e) for i, (s, e) in enumerate(spans))

    def check_request(self, request):
        for key in CHUNK_OPTIONS:
            if key in request.options:
                raise RowRejected(f"params.{key}", request.options[key], f"family {self.name!r} renders a row of "
                                  "any length in one call; its windows are params.base_num_frames and "
                                  "params.overlap_history")
        self._check_windows(request)
        self._check_blocks(request)

    def _check_windows(self, request):
        """base_num_frames and overlap_history: 4k+1 frames, and an overlap required by (and shorter than) a window
        the row outgrows."""
        window, overlap = self.base_frames(request), request.arguments.get("overlap_history")
        for key, frames in (("base_num_frames", window), ("overlap_history", overlap)):
            if frames is not None and not LAYOUT.valid_frames(frames):
                nearest = " or ".join(map(str, LAYOUT.nearest_frames(frames)))
                raise RowRejected(f"params.{key}", frames, f"must be {LAYOUT.frame_rule()}: windows are whole latent "
                                  f"frames (nearest: {nearest})")
        if overlap is None and request.num_frames > window:
            raise RowRejected("params.overlap_history", None, f"required when num_frames ({request.num_frames}) "
                              f"exceeds params.base_num_frames ({window}): each window after the first is "
                              "conditioned on the last overlap_history frames of the one before (e.g. "
                              f"{min(17, window - LAYOUT.temporal)}; published 17 or 37)")
        if overlap is not None and overlap >= window:
            raise RowRejected("params.overlap_history", overlap, f"must be smaller than params.base_num_frames "
                              f"({window}), or no window would add a frame (e.g. {min(17, window - LAYOUT.temporal)})")

    def _check_blocks(self, request):
        """causal_block_size: asynchronous rows only, and every window and the overlap whole causal blocks (the
        pipeline never denoises a window's frames past its last whole block, and cuts the overlap to whole blocks,
        both silently)."""
        block = request.arguments.get("causal_block_size", 1)
        if block == 1:
            return
        if not request.arguments.get("ar_step"):
            raise RowRejected("params.causal_block_size", block, "must be 1 unless params.ar_step > 0: causal blocks "
                              "belong to asynchronous denoising (published: ar_step 5 with causal_block_size 5)")
        overlap = request.arguments.get("overlap_history")
        long_row = len(self.call_windows(request)) > 1
        checks = (("params.overlap_history", overlap), ("params.base_num_frames", self.base_frames(request)))
        for column, frames in (*(checks if long_row else ()), ("num_frames", request.num_frames)):
            if LAYOUT.latent_frames(frames) % block:
                nearest = " or ".join(map(str, block_frames(frames, block)))
                raise RowRejected(column, frames, f"must be whole causal blocks with params.causal_block_size={block}: "
                                  f"{frames} frames are {LAYOUT.latent_frames(frames)} latent frames, not a multiple "
                                  f"of {block} (nearest: {nearest})")

    def configure(self, pipeline, request, base_scheduler):
        super().configure(pipeline, request, base_scheduler)
        # the pipeline writes a row's causal_block_size into the transformer's config, where a call without one reads
        # it: every row starts from the published checkpoints' 1 (full attention) and sets its own in its call
        pipeline.transformer.register_to_config(num_frame_per_block=1)

    def pipeline_kwargs(self, request, image, video):
        call = dict(prompt=request.prompt, negative_prompt=request.negative_prompt, height=request.height,
                    width=request.width, num_frames=request.num_frames, num_inference_steps=request.num_inference_steps,
                    guidance_scale=request.guidance_scale, fps=request.fps, base_num_frames=self.base_frames(request))
        return {**call, **self.call_arguments(request)}

    def generate(self, pipeline, request, image, video, generator, **overrides):
        import torch

        if request.options.get("cache") is not None:
            overrides = {"callback_on_step_end": reset_cache_each_window, **overrides}
        device = pipeline._execution_device
        # the conditioning noise comes from torch's global generator: seeded per row, and restored after the call
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(condition_noise_seed(request.seed))
            return super().generate(pipeline, request, image, video, generator, **overrides)


ARGUMENTS = {
    "max_sequence_length": Param(int, "UMT5 tokens read from the prompt (longer prompts are cut)", minimum=1,
                                 maximum=512),
    "base_num_frames": Param(int, "frames one window denoises, 4k+1 (default: the model's native window; published "
                             "97 at 540P, 121 at 720P)", minimum=5),
    "overlap_history": Param(int, "frames each window after the first takes from the one before as its condition, "
                             "4k+1 (required when num_frames > base_num_frames; published 17 or 37)", minimum=1),
    "addnoise_condition": Param(float, "noise added to those conditioning frames, as a timestep (published 20; the "
                                "pipeline warns above 60)", minimum=0.0, maximum=1000.0),
    "ar_step": Param(int, "asynchronous denoising: each causal block starts this many steps after the one before "
                     "(0: all frames in step; published 5, with more transformer passes per window)", minimum=0),
    "causal_block_size": Param(int, "latent frames per causal block: blocks attend only to themselves and earlier "
                               "ones (ar_step > 0 only; published 5)", minimum=1),
}

SKYREELS_DF = SkyReelsDF(
    name="skyreels-v2-df", pipeline_class="SkyReelsV2DiffusionForcingPipeline", inputs=("prompt",), window=97,
    # the SkyReels-V2 release's generate_video_df.py: 97 frames at 544x960, 30 steps, guidance 6.0, 24 fps
    defaults=Defaults(num_frames=97, height=544, width=960, num_inference_steps=30, fps=24, guidance_scale=6.0),
    # a window of 9 frames (3 latent frames): a tiny long row has several
    tiny_defaults=Defaults(num_frames=9, height=32, width=32, num_inference_steps=4, fps=24, guidance_scale=6.0),
    arguments=ARGUMENTS, layout=LAYOUT, flow_shift="flow_shift", cuda_dtype="bfloat16",
    checkpoints=("Skywork/SkyReels-V2-DF-1.3B-540P-Diffusers", "Skywork/SkyReels-V2-DF-14B-540P-Diffusers",
                 "Skywork/SkyReels-V2-DF-14B-720P-Diffusers"),
    memory_options=("vae_slicing", "vae_tiling"),
    # the only diffusers cache its blocks take (the others need registered blocks or one timestep per call)
    caches=("taylorseer",), cache_defaults=WAN_CACHE_DEFAULTS,
)
# the published sizes by name: random-skyreels-v2-df-1.3b is random-skyreels-v2-df
SKYREELS_DF_1_3B = SKYREELS_DF.with_variant("1.3b")
DF_14B_540P = SKYREELS_DF.with_variant("14b")
DF_14B_720P = SKYREELS_DF.with_variant(
    "14b-720p", window=121,
    defaults=Defaults(num_frames=121, height=720, width=1280, num_inference_steps=30, fps=24, guidance_scale=6.0))
