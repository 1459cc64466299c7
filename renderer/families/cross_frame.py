"""Text2Video-Zero's video recipes: Stable Diffusion 1.5 image pipelines with cross-frame attention.

One pipeline call renders every frame as one batch item; `CrossFrameAttnProcessor` makes each frame's
self-attention look at the first frame of its copy of the video, which keeps the frames consistent.
- controlnet-video: ControlNet (pose or edges, whichever the checkpoint has) on a control video, one
  shared initial noise for all frames.
- pix2pix-video: InstructPix2Pix edits a source video by an instruction.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

from ..errors import RowRejected
from .base import Defaults, Family
from .components import clip_text_encoder, clip_tokenizer, scheduler, sd15_unet, sd_vae
from .params import Param

SCHEDULER_NAMES = ("ddim", "euler", "euler_ancestral", "dpm++", "pndm")
# StableDiffusionInstructPix2PixPipeline's default image_guidance_scale (known without importing diffusers, for the
# estimate of `render validate`)
IMAGE_GUIDANCE_DEFAULT = 1.5


def cross_frame_processor(batch_size: int):
    try:
        from diffusers.pipelines.deprecated.text_to_video_synthesis.pipeline_text_to_video_zero import (
            CrossFrameAttnProcessor,
        )
    except ImportError:
        # diffusers releases before Text2Video-Zero moved under `deprecated`
        from diffusers.pipelines.text_to_video_synthesis.pipeline_text_to_video_zero import CrossFrameAttnProcessor
    return CrossFrameAttnProcessor(batch_size=batch_size)


def set_video_copies(model, copies: int) -> None:
    """Tell the processors how many copies of the video one batch holds, so each copy finds its own first frame.

    Guidance stacks one copy per branch; a row without guidance (or a ControlNet in guess mode) has one,
    and a stale count would make frames attend to a frame in the middle of the video.
    """
    for processor in model.attn_processors.values():
        processor.batch_size = copies


def sd15_components(size: str, **parts) -> dict:
    """The Stable Diffusion 1.5 parts both pipelines share; presets carry no safety checker."""
    tokenizer = clip_tokenizer()
    return dict(vae=sd_vae(size), text_encoder=clip_text_encoder(size, tokenizer), tokenizer=tokenizer,
                safety_checker=None, feature_extractor=None, image_encoder=None, requires_safety_checker=False,
                **parts)


def wake_zero_convs(controlnet):
    """Random weights for the convolutions a new ControlNet starts at zero, so it steers the UNet as a trained one does.

    Left at zero, neither the control video nor the conditioning scale would change a preset's frames.
    """
    blocks = [controlnet.controlnet_cond_embedding.conv_out, *controlnet.controlnet_down_blocks,
              controlnet.controlnet_mid_block]
    for conv in blocks:
        conv.reset_parameters()
    return controlnet


def check_control_window(params: dict) -> None:
    """The ControlNet's span of steps must not be empty (the pipeline would fail the row with a ValueError)."""
    start, end = params.get("control_guidance_start", 0.0), params.get("control_guidance_end", 1.0)
    if start >= end:
        key = "control_guidance_start" if "control_guidance_start" in params else "control_guidance_end"
        raise RowRejected(f"params.{key}", params[key], f"control_guidance_start ({start}) must be below "
                          f"control_guidance_end ({end})")


def repeated(text: str | None, count: int) -> list[str] | None:
    # the pipelines take one prompt per frame, and a negative prompt must then be a list of the same length
    return None if text is None else [text] * count


@dataclass(frozen=True)
class CrossFrameVideo(Family):
    def generate(self, pipeline, request, image, video, generator):
        # image pipelines: one image per frame, returned as `.images` (F, 3, H, W)
        return pipeline(**self.pipeline_kwargs(request, image, video), generator=generator, output_type="pt").images

    def generate_chunk(self, pipeline, request, chunk, image, video, generator):
        # as Text2Video-Zero's long videos: the row's frame 0 leads every chunk as the anchor all frames attend
        # to, the generator is reseeded, and the anchor's output is dropped
        ids = [0, *range(chunk.start, chunk.end)]
        part = replace(request, num_frames=len(ids))
        return self.generate(pipeline, part, image, [video[i] for i in ids], generator)[1:]


@dataclass(frozen=True)
class ControlNetVideo(CrossFrameVideo):
    def components(self, size):
        from diffusers import ControlNetModel

        if size == "tiny":
            # diffusers' ControlNet pipeline test, with a conditioning embedding down to the VAE's 1/8
            controlnet = ControlNetModel(block_out_channels=(32, 64), layers_per_block=2, in_channels=4,
                                         down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                         cross_attention_dim=32, conditioning_embedding_out_channels=(16, 32, 32, 32),
                                         norm_num_groups=1)
        else:
            # lllyasviel/sd-controlnet-openpose and -canny share this architecture
            controlnet = ControlNetModel(cross_attention_dim=768, attention_head_dim=8)
        # runwayml/stable-diffusion-v1-5's scheduler
        pndm = scheduler("PNDMScheduler", beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                         skip_prk_steps=True, set_alpha_to_one=False, steps_offset=1)
        return sd15_components(size, unet=sd15_unet(size), controlnet=wake_zero_convs(controlnet), scheduler=pndm)

    def prepare_pipeline(self, pipeline):
        pipeline.unet.set_attn_processor(cross_frame_processor(batch_size=2))
        pipeline.controlnet.set_attn_processor(cross_frame_processor(batch_size=2))

    def configure(self, pipeline, request, base_scheduler):
        super().configure(pipeline, request, base_scheduler)
        guided = request.guidance_scale > 1 and pipeline.unet.config.time_cond_proj_dim is None
        # in guess mode the ControlNet sees only the prompted half of the batch (as the pipeline decides it)
        guess_mode = request.arguments.get("guess_mode", False) or pipeline.controlnet.config.global_pool_conditions
        set_video_copies(pipeline.unet, 2 if guided else 1)
        set_video_copies(pipeline.controlnet, 2 if guided and not guess_mode else 1)

    def check_request(self, request):
        check_control_window(request.arguments)

    def pipeline_kwargs(self, request, image, video):
        params = self.call_arguments(request)
        return dict(prompt=repeated(request.prompt, len(video)), image=video,
                    negative_prompt=repeated(request.negative_prompt, len(video)), height=request.height,
                    width=request.width, num_inference_steps=request.num_inference_steps,
                    guidance_scale=request.guidance_scale, **params)

    def generate(self, pipeline, request, image, video, generator):
        import torch

        # the guide's recipe: every frame starts from the same noise, so only the control frames differ
        shape = (1, pipeline.unet.config.in_channels, request.height // pipeline.vae_scale_factor,
                 request.width // pipeline.vae_scale_factor)
        noise = torch.randn(shape, generator=generator).to(pipeline.device, pipeline.dtype)
        latents = noise.repeat(len(video), 1, 1, 1)
        return pipeline(**self.pipeline_kwargs(request, image, video), latents=latents, generator=generator,
                        output_type="pt").images


@dataclass(frozen=True)
class Pix2PixVideo(CrossFrameVideo):
    def components(self, size):
        # timbrooks/instruct-pix2pix: the SD1.5 UNet with the source image's latents as 4 more input channels
        euler_a = scheduler("EulerAncestralDiscreteScheduler", beta_start=0.00085, beta_end=0.012,
                            beta_schedule="scaled_linear", num_train_timesteps=1000, prediction_type="epsilon")
        return sd15_components(size, unet=sd15_unet(size, in_channels=8), scheduler=euler_a)

    def prepare_pipeline(self, pipeline):
        pipeline.unet.set_attn_processor(cross_frame_processor(batch_size=3))

    def guidance_passes(self, request):
        # the pipeline's own rule: text, image and unconditioned copies only when both guidances are on
        image_guidance = request.arguments.get("image_guidance_scale", IMAGE_GUIDANCE_DEFAULT)
        return 3 if request.guidance_scale > 1.0 and image_guidance >= 1.0 else 1

    def configure(self, pipeline, request, base_scheduler):
        super().configure(pipeline, request, base_scheduler)
        # the UNet's batch holds one copy of the video per guidance pass
        set_video_copies(pipeline.unet, self.guidance_passes(request))

    def pipeline_kwargs(self, request, image, video):
        # no height/width/num_frames: the output has the source frames' size and count
        return dict(prompt=repeated(request.prompt, len(video)), image=video,
                    negative_prompt=repeated(request.negative_prompt, len(video)),
                    num_inference_steps=request.num_inference_steps, guidance_scale=request.guidance_scale,
                    **self.call_arguments(request))


ETA = Param(float, "DDIM eta (noise added per step; 0 is deterministic DDIM)", minimum=0.0, maximum=1.0)
REAL_DEFAULTS = Defaults(num_frames=8, height=512, width=512, num_inference_steps=50, fps=4, guidance_scale=7.5)
TINY_DEFAULTS = Defaults(num_frames=8, height=64, width=64, num_inference_steps=4, fps=4, guidance_scale=7.5)

CONTROLNET_VIDEO = ControlNetVideo(
    name="controlnet-video", pipeline_class="StableDiffusionControlNetPipeline", inputs=("prompt", "video"),
    # memory-bound: all frames (times two for guidance) go through the UNet as one batch
    window=8,
    defaults=REAL_DEFAULTS, tiny_defaults=TINY_DEFAULTS,
    arguments={
        "controlnet_conditioning_scale": Param(float, "weight of the ControlNet's residuals", minimum=0.0),
        "guess_mode": Param(bool, "the ControlNet recognises the content without the prompt (try guidance 3-5)"),
        "control_guidance_start": Param(float, "fraction of the steps where the ControlNet starts", minimum=0.0,
                                        maximum=1.0),
        "control_guidance_end": Param(float, "fraction of the steps where the ControlNet stops", minimum=0.0,
                                      maximum=1.0),
        "eta": ETA,
    },
    schedulers=SCHEDULER_NAMES,
    checkpoints=(
        "lllyasviel/sd-controlnet-openpose on runwayml/stable-diffusion-v1-5 (saved as one "
        "StableDiffusionControlNetPipeline folder)",
        "lllyasviel/sd-controlnet-canny on runwayml/stable-diffusion-v1-5 (saved as one "
        "StableDiffusionControlNetPipeline folder)",
    ),
)

PIX2PIX_VIDEO = Pix2PixVideo(
    name="pix2pix-video", pipeline_class="StableDiffusionInstructPix2PixPipeline", inputs=("prompt", "video"),
    # memory-bound: all frames (times three for guidance) go through the UNet as one batch
    window=8,
    defaults=REAL_DEFAULTS, tiny_defaults=TINY_DEFAULTS,
    arguments={
        "image_guidance_scale": Param(float, "how closely the edit keeps to the source frames (>= 1 to use it)",
                                      minimum=0.0),
        "eta": ETA,
    },
    schedulers=SCHEDULER_NAMES,
    checkpoints=("timbrooks/instruct-pix2pix",),
)

