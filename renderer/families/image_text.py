"""Image and text to video: I2VGen-XL and PIA (Personalized Image Animator)."""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

from ..chunks import ANCHORED, CHAIN, LatentLayout
from ..errors import RowRejected
from .base import Defaults, Family
from .components import (
    clip_image_encoder,
    clip_image_processor,
    clip_text_encoder,
    clip_tokenizer,
    scheduler,
    sd15_unet,
    sd_vae,
)
from .params import FREE_INIT, Param
from .pipeline_state import set_free_init


@contextlib.contextmanager
def seeded_global_rng(seed: int, device):
    """Seed torch's global RNGs for one call on `device`, then restore them."""
    import torch

    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        yield


@dataclass(frozen=True)
class I2VGenXL(Family):
    def components(self, size):
        from diffusers import I2VGenXLUNet

        tokenizer = clip_tokenizer()
        if size == "tiny":
            # I2VGenXLUNet reads attention_head_dim as the number of heads (see its __init__)
            unet = I2VGenXLUNet(block_out_channels=(32, 64), layers_per_block=1, sample_size=32, in_channels=4,
                                out_channels=4, down_block_types=("CrossAttnDownBlock3D", "DownBlock3D"),
                                up_block_types=("UpBlock3D", "CrossAttnUpBlock3D"), cross_attention_dim=32,
                                attention_head_dim=4, norm_num_groups=2)
        else:
            # ali-vilab/i2vgen-xl unet/config.json
            unet = I2VGenXLUNet(
                sample_size=32, in_channels=4, out_channels=4, block_out_channels=(320, 640, 1280, 1280),
                layers_per_block=2, norm_num_groups=32, cross_attention_dim=1024, attention_head_dim=64,
                num_attention_heads=64,
                down_block_types=("CrossAttnDownBlock3D", "CrossAttnDownBlock3D", "CrossAttnDownBlock3D",
                                  "DownBlock3D"),
                up_block_types=("UpBlock3D", "CrossAttnUpBlock3D", "CrossAttnUpBlock3D", "CrossAttnUpBlock3D"))
        # ali-vilab/i2vgen-xl's scheduler: cosine betas, v-prediction, zero terminal SNR
        ddim = scheduler("DDIMScheduler", beta_schedule="squaredcos_cap_v2", beta_start=0.0001, beta_end=0.02,
                         prediction_type="v_prediction", rescale_betas_zero_snr=True, clip_sample=False,
                         set_alpha_to_one=True, steps_offset=1, timestep_spacing="leading")
        return dict(vae=sd_vae(size), text_encoder=clip_text_encoder(size, tokenizer, "vit-h"), tokenizer=tokenizer,
                    image_encoder=clip_image_encoder(size), feature_extractor=clip_image_processor(), unet=unet,
                    scheduler=ddim)

    def pipeline_kwargs(self, request, image, video):
        # the pipeline crops and resizes the image itself; `target_fps` is a micro-condition of the UNet
        return dict(prompt=request.prompt, image=image, negative_prompt=request.negative_prompt,
                    height=request.height, width=request.width, target_fps=request.fps, num_frames=request.num_frames,
                    num_inference_steps=request.num_inference_steps, guidance_scale=request.guidance_scale,
                    **self.call_arguments(request))

    def generate(self, pipeline, request, image, video, generator, **overrides):
        # the pipeline samples the image latents from the VAE with torch's global RNG (it passes no generator
        # there), so the row's seed must seed that RNG too or the same row renders different frames
        with seeded_global_rng(request.seed, pipeline._execution_device):
            return super().generate(pipeline, request, image, video, generator, **overrides)


I2VGEN_XL = I2VGenXL(
    name="i2vgenxl", pipeline_class="I2VGenXLPipeline", inputs=("image", "prompt"), window=16,
    defaults=Defaults(num_frames=16, height=704, width=1280, num_inference_steps=50, fps=16, guidance_scale=9.0),
    tiny_defaults=Defaults(num_frames=16, height=64, width=64, num_inference_steps=4, fps=16, guidance_scale=9.0),
    arguments={
        "clip_skip": Param(int, "CLIP text layers to skip (the pipeline's default is 1; 0 uses the last layer)",
                           minimum=0),
        "eta": Param(float, "DDIM eta", minimum=0.0, maximum=1.0),
        "decode_chunk_size": Param(int, "frames the VAE decodes at once (the pipeline's default is 1)", minimum=1),
    },
    column_aliases={"target_fps": "fps"}, decode_chunk_default=1,
    chunk_modes=(ANCHORED, CHAIN), layout=LatentLayout(frame_axis=1), step_cache=True,
    # PNDM is left out: it cannot rescale the betas to the zero terminal SNR the model was trained with
    schedulers=("ddim", "euler", "euler_ancestral", "dpm++"),
    checkpoints=("ali-vilab/i2vgen-xl",),
)


@dataclass(frozen=True)
class PIA(Family):
    def components(self, size):
        from diffusers import MotionAdapter

        tokenizer = clip_tokenizer()
        if size == "tiny":
            # diffusers' own PIA test adapter
            adapter = MotionAdapter(block_out_channels=(32, 64), motion_layers_per_block=2, motion_norm_num_groups=2,
                                    motion_num_attention_heads=4, conv_in_channels=9)
        else:
            # openmmlab/PIA-condition-adapter: AnimateDiff v1 layout, 9-channel input (latents, mask, image)
            adapter = MotionAdapter(block_out_channels=(320, 640, 1280, 1280), motion_layers_per_block=2,
                                    motion_num_attention_heads=8, motion_norm_num_groups=32, motion_max_seq_length=32,
                                    use_motion_mid_block=False, conv_in_channels=9)
        # SD1.5's betas as DDIM with clip_sample off, as the PIA guide pairs DDIM with it
        ddim = scheduler("DDIMScheduler", beta_start=0.00085, beta_end=0.012, beta_schedule="linear",
                         clip_sample=False, set_alpha_to_one=False, steps_offset=1)
        # the pipeline turns the SD1.5 UNet and the adapter into one 9-channel UNetMotionModel
        return dict(vae=sd_vae(size), text_encoder=clip_text_encoder(size, tokenizer), tokenizer=tokenizer,
                    unet=sd15_unet(size), motion_adapter=adapter, scheduler=ddim)

    def check_request(self, request):
        check_strength_leaves_a_step(request)

    def pipeline_kwargs(self, request, image, video):
        # PIA encodes the image at its own size: resize it to the video's, as the PIA guide does
        return dict(image=image.resize((request.width, request.height)), prompt=request.prompt,
                    negative_prompt=request.negative_prompt, num_frames=request.num_frames, height=request.height,
                    width=request.width, num_inference_steps=request.num_inference_steps,
                    guidance_scale=request.guidance_scale, **self.call_arguments(request))

    def configure(self, pipeline, request, base_scheduler):
        super().configure(pipeline, request, base_scheduler)
        set_free_init(pipeline, request.options.get("free_init"))


def check_strength_leaves_a_step(request) -> None:
    """PIA denoises int(num_inference_steps * strength) steps; with none left diffusers fails obscurely."""
    strength = request.arguments.get("strength", 1.0)
    if int(request.num_inference_steps * strength) < 1:
        raise RowRejected("params.strength", strength, f"leaves no denoising step: strength * num_inference_steps "
                          f"({request.num_inference_steps}) must be >= 1")


PIA_FAMILY = PIA(
    name="pia", pipeline_class="PIAPipeline", inputs=("image", "prompt"), window=16,
    defaults=Defaults(num_frames=16, height=512, width=512, num_inference_steps=25, fps=8, guidance_scale=7.5),
    tiny_defaults=Defaults(num_frames=16, height=64, width=64, num_inference_steps=4, fps=8, guidance_scale=7.5),
    arguments={
        "motion_scale": Param(int, "0-2 more motion, 3-5 looping motion, 6-8 motion with style transfer",
                              minimum=0, maximum=8),
        "strength": Param(float, "below 1: start from the noised image, denoising that share of the steps",
                          minimum=0.0, maximum=1.0),
        "eta": Param(float, "DDIM eta", minimum=0.0, maximum=1.0),
        "clip_skip": Param(int, "CLIP text layers to skip", minimum=0),
    },
    options={"free_init": FREE_INIT},
    schedulers=("ddim", "euler"),
    chunk_modes=(ANCHORED, CHAIN), layout=LatentLayout(frame_axis=1), step_cache=True,
    checkpoints=("openmmlab/PIA-condition-adapter on an SD1.5 checkpoint (saved as one PIAPipeline folder)",),
)

