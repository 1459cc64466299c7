"""Text2Video-Zero: zero-shot text to video on an unchanged Stable Diffusion 1.5 or XL model.

The pipeline denoises one latent down to step t1 and on to t0, warps it along a global translation
(the motion field) into every further frame, re-noises those copies from t0 back to t1 and denoises
all frames from t1 with cross-frame attention on the first frame. t0 and t1 count steps from the end.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass, replace

from ..errors import RowRejected
from .base import Defaults, Family
from .components import clip_text_encoder, clip_tokenizer, scheduler, sd15_unet, sd_vae
from .params import Param

# the pipeline's default t0=44, t1=47 are chosen for its default 50 steps
DEFAULT_STEPS, DEFAULT_T0, DEFAULT_T1 = 50, 44, 47


@dataclass(frozen=True)
class TextToVideoZero(Family):
    def components(self, size):
        tokenizer = clip_tokenizer()
        # Stable Diffusion 1.5's noise schedule with DDIM, the sampler of the Text2Video-Zero paper
        ddim = scheduler("DDIMScheduler", beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                         clip_sample=False, set_alpha_to_one=False, steps_offset=1)
        return dict(vae=sd_vae(size), text_encoder=clip_text_encoder(size, tokenizer), tokenizer=tokenizer,
                    unet=sd15_unet(size), scheduler=ddim, safety_checker=None, feature_extractor=None,
                    requires_safety_checker=False)

    def check_request(self, request):
        if request.guidance_scale <= 1:
            # without classifier-free guidance the cross-frame attention splits the frames into wrong groups
            # (and the SD1.5 pipeline fails outright)
            raise RowRejected("guidance_scale", request.guidance_scale, "must be > 1 for Text2Video-Zero")
        motion_timesteps(request)

    def pipeline_kwargs(self, request, image, video):
        params = {**self.call_arguments(request), **motion_timesteps(request)}
        return dict(prompt=request.prompt, negative_prompt=request.negative_prompt, video_length=request.num_frames,
                    height=request.height, width=request.width, num_inference_steps=request.num_inference_steps,
                    guidance_scale=request.guidance_scale, **params)

    def generate(self, pipeline, request, image, video, generator, **overrides):
        check_eta(pipeline.scheduler, request.arguments)
        kwargs = {**self.pipeline_kwargs(request, image, video), "output_type": "pt", **overrides}
        return pipeline(**kwargs, generator=generator).images

    def generate_chunk(self, pipeline, request, chunk, image, video, generator):
        # the Text2Video-Zero guide's long videos: frame 0 leads every chunk as the anchor all frames attend
        # to (the reseeded generator gives it the same latent each time), the motion field follows the
        # absolute frame ids, and the anchor's output is dropped
        frame_ids = [0, *range(chunk.start, chunk.end)]
        part = replace(request, num_frames=len(frame_ids))
        return self.generate(pipeline, part, image, video, generator, frame_ids=frame_ids)[1:]


def motion_timesteps(request) -> dict:
    """The row's t0 and t1, or the pipeline's defaults scaled to its step count; 0 <= t0 <= t1 < steps.

    The pipeline indexes its timesteps from the end with them: past the step count it fails with an
    IndexError, and t0 > t1 runs without error but makes no sense."""
    steps, params = request.num_inference_steps, request.arguments
    t1 = params.get("t1", DEFAULT_T1 * steps // DEFAULT_STEPS)
    # one step between t0 and t1 where the steps allow, as diffusers documents t1 in [t0 + 1, steps - 1]
    t0 = params.get("t0", max(0, min(DEFAULT_T0 * steps // DEFAULT_STEPS, t1 - 1)))
    if t1 >= steps:
        raise RowRejected("params.t1", t1, f"must be < num_inference_steps ({steps})")
    # only a row's own t0 can be: the default stays at or below t1
    if t0 > t1:
        raise RowRejected("params.t0", t0, f"needs t0 <= t1 (t0={t0}, t1={t1} for {steps} steps)")
    return {"t0": t0, "t1": t1}


def check_eta(scheduler, params: dict) -> None:
    # the pipeline drops eta silently when its scheduler's step takes none (all but DDIM here)
    if "eta" in params and "eta" not in inspect.signature(scheduler.step).parameters:
        raise RowRejected("params.eta", params["eta"],
                          f"{type(scheduler).__name__} takes no eta; set params.scheduler to \"ddim\"")


@dataclass(frozen=True)
class TextToVideoZeroSDXL(TextToVideoZero):
    def components(self, size):
        tokenizer = clip_tokenizer()
        return dict(vae=sdxl_vae(size), text_encoder=clip_text_encoder(size, tokenizer),
                    text_encoder_2=clip_text_encoder(size, tokenizer, "bigg", with_projection=True),
                    tokenizer=tokenizer, tokenizer_2=clip_tokenizer(), unet=sdxl_unet(size), scheduler=sdxl_euler(),
                    # a post-process that would depend on an optional package
                    add_watermarker=False)


def sdxl_unet(size: str):
    """SDXL's UNet2DConditionModel (stabilityai/stable-diffusion-xl-base-1.0), or the diffusers SDXL test's tiny one."""
    from diffusers import UNet2DConditionModel

    if size == "tiny":
        return UNet2DConditionModel(
            block_out_channels=(2, 4), layers_per_block=2, sample_size=32, in_channels=4, out_channels=4,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            attention_head_dim=(2, 4), use_linear_projection=True, addition_embed_type="text_time",
            addition_time_embed_dim=8, transformer_layers_per_block=(1, 2),
            # 6 time ids * 8 + text_encoder_2's projection 32
            projection_class_embeddings_input_dim=80,
            # both text encoders' hidden states side by side, 32 + 32
            cross_attention_dim=64,
            norm_num_groups=1)
    return UNet2DConditionModel(
        block_out_channels=(320, 640, 1280), layers_per_block=2, sample_size=128, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(5, 10, 20), transformer_layers_per_block=(1, 2, 10), use_linear_projection=True,
        addition_embed_type="text_time", addition_time_embed_dim=256, projection_class_embeddings_input_dim=2816,
        cross_attention_dim=2048)


def sdxl_vae(size: str):
    """SDXL's VAE: Stable Diffusion's layout with its own sample size and latent scaling."""
    from diffusers import AutoencoderKL

    if size == "tiny":
        return sd_vae("tiny")
    four = ["DownEncoderBlock2D"] * 4, ["UpDecoderBlock2D"] * 4
    return AutoencoderKL(block_out_channels=(128, 256, 512, 512), down_block_types=four[0], up_block_types=four[1],
                         layers_per_block=2, latent_channels=4, sample_size=1024, scaling_factor=0.13025)


def sdxl_euler():
    """SDXL's scheduler_config.json."""
    euler = scheduler("EulerDiscreteScheduler", beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                      interpolation_type="linear", num_train_timesteps=1000, prediction_type="epsilon", steps_offset=1,
                      timestep_spacing="leading", use_karras_sigmas=False)
    # the published file also carries these DDIM keys; params {"scheduler": "ddim"} builds its DDIM from them
    euler.register_to_config(clip_sample=False, set_alpha_to_one=False, skip_prk_steps=True, sample_max_value=1.0)
    return euler


def _params(eta_note: str) -> dict:
    return {
        "motion_field_strength_x": Param(float, "translation per frame along x, in 1/512ths of the frame width "
                                                "(default 12)"),
        "motion_field_strength_y": Param(float, "translation per frame along y, in 1/512ths of the frame height "
                                                "(default 12)"),
        "t0": Param(int, "step, counted from the end, at which the first frame is warped into the others "
                         "(default 44 of 50 steps, scaled to num_inference_steps); t0 <= t1", minimum=0),
        "t1": Param(int, "step, counted from the end, to which the warped frames are re-noised "
                         "(default 47 of 50 steps, scaled); t1 < num_inference_steps", minimum=0),
        "eta": Param(float, f"DDIM eta ({eta_note})", minimum=0.0, maximum=1.0),
    }


T2V_ZERO = TextToVideoZero(
    name="t2v-zero", pipeline_class="TextToVideoZeroPipeline", inputs=("prompt",), window=8,
    defaults=Defaults(num_frames=8, height=512, width=512, num_inference_steps=50, fps=4, guidance_scale=7.5),
    tiny_defaults=Defaults(num_frames=8, height=64, width=64, num_inference_steps=4, fps=4, guidance_scale=7.5),
    arguments=_params("a checkpoint whose scheduler is not DDIM needs params.scheduler \"ddim\""),
    column_aliases={"video_length": "num_frames"},
    # DDIM is the paper's sampler; Euler's float timesteps break this pipeline's `alphas[t0:t1]` slicing
    schedulers=("ddim",),
    # the method runs on an unchanged Stable Diffusion checkpoint: name it as t2v-zero:LOCATION
    compatible_classes=("StableDiffusionPipeline",),
    checkpoints=("t2v-zero:stable-diffusion-v1-5/stable-diffusion-v1-5 (was runwayml/stable-diffusion-v1-5)",),
)

T2V_ZERO_SDXL = TextToVideoZeroSDXL(
    name="t2v-zero-sdxl", pipeline_class="TextToVideoZeroSDXLPipeline", inputs=("prompt",), window=8,
    defaults=Defaults(num_frames=8, height=1024, width=1024, num_inference_steps=50, fps=4, guidance_scale=7.5),
    tiny_defaults=Defaults(num_frames=8, height=64, width=64, num_inference_steps=4, fps=4, guidance_scale=7.5),
    arguments=_params("with params.scheduler \"ddim\"; SDXL's Euler takes none"),
    column_aliases={"video_length": "num_frames"},
    schedulers=("euler", "ddim"),
    compatible_classes=("StableDiffusionXLPipeline",),
    checkpoints=("t2v-zero-sdxl:stabilityai/stable-diffusion-xl-base-1.0",),
)

