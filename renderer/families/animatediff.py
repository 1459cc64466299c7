"""AnimateDiff: text to video with a motion adapter on a Stable Diffusion 1.5 UNet."""
from __future__ import annotations

from dataclasses import dataclass

from ..chunks import LatentLayout
from .base import Defaults, Family
from .components import clip_text_encoder, clip_tokenizer, scheduler, sd15_unet, sd_vae
from .params import FREE_INIT, Param
from .pipeline_state import set_free_init
from .prompts import clip_prompt_embeds


@dataclass(frozen=True)
class AnimateDiff(Family):
    def components(self, size):
        from diffusers import MotionAdapter

        tokenizer = clip_tokenizer()
        if size == "tiny":
            adapter = MotionAdapter(block_out_channels=(32, 64), motion_layers_per_block=2,
                                    motion_norm_num_groups=2, motion_num_attention_heads=4)
        else:
            # guoyww/animatediff-motion-adapter-v1-5-2
            adapter = MotionAdapter()
        # the scheduler the AnimateDiff guide pairs with SD1.5
        ddim = scheduler("DDIMScheduler", beta_start=0.00085, beta_end=0.012, beta_schedule="linear",
                         clip_sample=False, timestep_spacing="linspace", steps_offset=1)
        return dict(vae=sd_vae(size), text_encoder=clip_text_encoder(size, tokenizer), tokenizer=tokenizer,
                    unet=sd15_unet(size), motion_adapter=adapter, scheduler=ddim)

    def single_call(self, options):
        # FreeNoise denoises overlapping context windows inside one call: a long row on one actor, no chunks
        return options.get("free_noise") is not None

    def configure(self, pipeline, request, base_scheduler):
        super().configure(pipeline, request, base_scheduler)
        free_init, free_noise = request.options.get("free_init"), request.options.get("free_noise")
        set_free_init(pipeline, free_init)
        pipeline.enable_free_noise(**free_noise) if free_noise is not None else pipeline.disable_free_noise()

    def pipeline_kwargs(self, request, image, video):
        return dict(prompt=request.prompt, negative_prompt=request.negative_prompt, num_frames=request.num_frames,
                    height=request.height, width=request.width, num_inference_steps=request.num_inference_steps,
                    guidance_scale=request.guidance_scale, **self.call_arguments(request))


FREE_NOISE = Param(dict, "FreeNoise: long videos from overlapping context windows in one call (true or options)",
                   fields={
                       "context_length": Param(int, "frames per context window", minimum=1, maximum=32),
                       "context_stride": Param(int, "step between windows", minimum=1),
                       "weighting_scheme": Param(str, "blending of overlaps",
                                                 choices=("flat", "pyramid", "delayed_reverse_sawtooth")),
                       "noise_type": Param(str, "initial noise",
                                           choices=("shuffle_context", "repeated_context", "random")),
                   })

ANIMATEDIFF = AnimateDiff(
    name="animatediff", pipeline_class="AnimateDiffPipeline", inputs=("prompt",), window=16,
    layout=LatentLayout(frame_axis=1), step_cache=True, prompt_encoder=clip_prompt_embeds,
    defaults=Defaults(num_frames=16, height=512, width=512, num_inference_steps=25, fps=8, guidance_scale=7.5),
    tiny_defaults=Defaults(num_frames=16, height=64, width=64, num_inference_steps=4, fps=8, guidance_scale=7.5),
    arguments={
        "eta": Param(float, "DDIM eta", minimum=0.0, maximum=1.0),
        "clip_skip": Param(int, "CLIP layers to skip", minimum=0),
        "decode_chunk_size": Param(int, "frames the VAE decodes at once", minimum=1),
    },
    options={"free_init": FREE_INIT, "free_noise": FREE_NOISE},
    schedulers=("ddim", "euler", "euler_ancestral", "dpm++", "pndm"),
    checkpoints=("guoyww/animatediff-motion-adapter-v1-5-2 on runwayml/stable-diffusion-v1-5 "
                 "(saved as one AnimateDiffPipeline folder)",),
)

