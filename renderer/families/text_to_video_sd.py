"""ModelScope text-to-video and Zeroscope: TextToVideoSDPipeline (a UNet3D on Stable Diffusion parts).

A row that gives a `video` is plain video-to-video through VideoToVideoSDPipeline over the same loaded
modules. Zeroscope rows may ask for the two-stage recipe of diffusers' text-to-video guide with
params `upscale`: render small, resize the frames to the row's size, denoise them again at `strength`.
"""
from __future__ import annotations

import weakref
from dataclasses import dataclass
from pathlib import Path

from ..chunks import LatentLayout
from ..errors import RowRejected
from .base import Defaults, Family
from .components import clip_text_encoder, clip_tokenizer, scheduler, sd_vae
from .params import Param
from .prompts import clip_prompt_embeds

# VideoToVideoSDPipeline's default and the guide's upscale strength
GUIDE_STRENGTH = 0.6
# text-to-video arguments; video-to-video reads them off the video
SIZE_ONLY = ("num_frames", "height", "width")

# a loaded pipeline -> the VideoToVideoSDPipeline over its own modules (no copy of the weights)
_VIDEO_TO_VIDEO = weakref.WeakKeyDictionary()
# params.upscale.model loaded once per process: (name, device) -> (VideoToVideoSDPipeline, its base scheduler)
_UPSCALERS: dict = {}


@dataclass(frozen=True)
class TextToVideoSD(Family):
    def components(self, size):
        from diffusers import UNet3DConditionModel

        tokenizer = clip_tokenizer()
        if size == "tiny":
            unet = UNet3DConditionModel(
                block_out_channels=(32, 64), layers_per_block=1, sample_size=32, in_channels=4, out_channels=4,
                down_block_types=("CrossAttnDownBlock3D", "DownBlock3D"),
                up_block_types=("UpBlock3D", "CrossAttnUpBlock3D"),
                cross_attention_dim=32, attention_head_dim=8, norm_num_groups=2)
        else:
            # damo-vilab/text-to-video-ms-1.7b; Zeroscope v2 is a fine-tune of the same architecture
            # attention_head_dim=64 as the checkpoint writes it: diffusers reads it as the head count (its naming quirk)
            unet = UNet3DConditionModel(
                block_out_channels=(320, 640, 1280, 1280), layers_per_block=2, sample_size=32, in_channels=4,
                out_channels=4, down_block_types=("CrossAttnDownBlock3D",) * 3 + ("DownBlock3D",),
                up_block_types=("UpBlock3D",) + ("CrossAttnUpBlock3D",) * 3, cross_attention_dim=1024,
                attention_head_dim=64, norm_num_groups=32)
        ddim = scheduler("DDIMScheduler", beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                         clip_sample=False, set_alpha_to_one=False, steps_offset=1, num_train_timesteps=1000)
        return dict(vae=sd_vae(size), text_encoder=clip_text_encoder(size, tokenizer, "vit-h"), tokenizer=tokenizer,
                    unet=unet, scheduler=ddim)

    def check_request(self, request):
        params, upscale = request.arguments, request.options.get("upscale")
        if request.video is None:
            if "strength" in params:
                raise RowRejected("params.strength", params["strength"], "applies only to a row that gives a `video`")
        else:
            check_denoises("params.strength", params.get("strength", GUIDE_STRENGTH), request.num_inference_steps)
            if upscale is not None:
                raise RowRejected("params.upscale", upscale,
                                  "applies only to text-to-video rows (this row gives a `video`)")
        if upscale is not None:
            upscale_settings(request, upscale, self.model_defaults(request))

    def pipeline_kwargs(self, request, image, video):
        kwargs = dict(prompt=request.prompt, negative_prompt=request.negative_prompt,
                      num_inference_steps=request.num_inference_steps, guidance_scale=request.guidance_scale,
                      **self.call_arguments(request))
        if video is not None:
            return dict(kwargs, video=video, strength=kwargs.get("strength", GUIDE_STRENGTH))
        return dict(kwargs, num_frames=request.num_frames, height=request.height, width=request.width)

    def generate(self, pipeline, request, image, video, generator, **overrides):
        kwargs = {**self.pipeline_kwargs(request, image, video), "output_type": "pt", **overrides}
        upscale = request.options.get("upscale")
        if video is not None:
            return video_to_video(pipeline)(**kwargs, generator=generator).frames[0]
        if upscale is None:
            return pipeline(**kwargs, generator=generator).frames[0]
        return self.generate_upscaled(pipeline, request, kwargs, upscale, generator)

    def stitches_latents(self, request):
        # the two-stage recipe ends in the second pipeline's frames: its chunks are stitched as frames
        return super().stitches_latents(request) and "upscale" not in request.options

    def chunk_overrides(self, pipeline, request, chunk):
        if "upscale" in request.options:
            # the first stage renders at its own size from the reseeded generator
            return {}
        overrides = super().chunk_overrides(pipeline, request, chunk)
        if request.video is not None:
            # video-to-video noises the row's video with the generator; it takes no latents
            del overrides["latents"]
        return overrides

    def generate_upscaled(self, pipeline, request, kwargs, upscale, generator):
        """The guide's two stages; the row's height/width is the final size, so the mp4 and metadata agree."""
        width, height, steps, strength = upscale_settings(request, upscale, self.model_defaults(request))
        upscaler = self.upscaler(upscale.get("model"), pipeline, request)

        # one generator for both calls, as one script running the guide's two calls would use it
        small = pipeline(**dict(kwargs, width=width, height=height, output_type="pil"), generator=generator).frames[0]
        video = [frame.resize((request.width, request.height)) for frame in small]
        second = {k: v for k, v in kwargs.items() if k not in SIZE_ONLY}
        second.update(video=video, strength=strength, num_inference_steps=steps,
                      guidance_scale=upscale.get("guidance_scale", request.guidance_scale))
        return upscaler(**second, generator=generator).frames[0]

    def upscaler(self, name, pipeline, request):
        """The second stage's pipeline: the row's own modules, or the named model loaded once and configured per row."""
        if name is None:
            return video_to_video(pipeline)
        # the GPU even when the pipeline is offloaded to the CPU
        device = str(pipeline._execution_device)
        if (name, device) not in _UPSCALERS:
            loaded = load_upscaler(name, device, pipeline.dtype)
            loaded.set_progress_bar_config(disable=True)
            _UPSCALERS[name, device] = loaded, loaded.scheduler
        loaded, base_scheduler = _UPSCALERS[name, device]
        # the row's scheduler and memory options, reset every row
        self.configure(loaded, request, base_scheduler)
        return loaded


def video_to_video(pipeline):
    """The VideoToVideoSDPipeline sharing `pipeline`'s modules, made once per loaded pipeline."""
    from diffusers import VideoToVideoSDPipeline

    twin = _VIDEO_TO_VIDEO.get(pipeline)
    if twin is None:
        twin = _VIDEO_TO_VIDEO[pipeline] = VideoToVideoSDPipeline(**pipeline.components)
        twin.set_progress_bar_config(disable=True)
    # configure() gives the loaded pipeline a new scheduler object per row
    twin.scheduler = pipeline.scheduler
    return twin


def load_upscaler(name: str, device: str, dtype):
    """A preset of these families, built as its family builds it (no step cache: the second stage runs
    uncached), or a folder/hub id (zeroscope_v2_XL is a VideoToVideoSDPipeline folder, which no family loads)
    straight into VideoToVideoSDPipeline."""
    import diffusers

    from ..catalog import HUB_ID, PRESET_SIZES

    size, _, family_name = name.partition("-")
    family = {family.name: family for family in (MODELSCOPE, ZEROSCOPE)}.get(family_name)
    if size in PRESET_SIZES and family is not None:
        pipeline = family.build(size, device, dtype)
        family.prepare_pipeline(pipeline)
        return diffusers.VideoToVideoSDPipeline(**pipeline.components)
    if not Path(name).expanduser().is_dir() and not HUB_ID.match(name):
        raise RowRejected("params.upscale.model", name, "not a modelscope/zeroscope preset, an existing folder or "
                          "a hub id of the form owner/name")
    return diffusers.VideoToVideoSDPipeline.from_pretrained(name, torch_dtype=dtype, use_safetensors=True).to(device)


def upscale_settings(request, upscale: dict, first_size) -> tuple[int, int, int, float]:
    """(first-stage width, height, second-stage steps, strength), checked; the first stage's size defaults to
    `first_size` (576x320 for Zeroscope checkpoints)."""
    width, height = upscale.get("from_width", first_size.width), upscale.get("from_height", first_size.height)
    for key, value in (("from_width", width), ("from_height", height)):
        if value % 8:
            raise RowRejected(f"params.upscale.{key}", value, "must be divisible by 8")
    steps = upscale.get("num_inference_steps", request.num_inference_steps)
    strength = upscale.get("strength", GUIDE_STRENGTH)
    check_denoises("params.upscale.strength", strength, steps)
    return width, height, steps, strength


def check_denoises(column: str, strength: float, num_inference_steps: int) -> None:
    # VideoToVideoSDPipeline runs int(steps * strength) steps and fails on an empty schedule
    if int(num_inference_steps * strength) < 1:
        raise RowRejected(column, strength, f"too small: strength x num_inference_steps ({num_inference_steps}) "
                          "must give at least one denoising step")


PARAMS = {
    "eta": Param(float, "DDIM eta", minimum=0.0, maximum=1.0),
    "clip_skip": Param(int, "CLIP layers to skip", minimum=0),
    "strength": Param(float, "video-to-video only: how much of the row's video is re-noised (1 = all)",
                      minimum=0.0, maximum=1.0),
}
UPSCALE = Param(dict, "Zeroscope's two-stage recipe: render at from_width x from_height, resize to the row's "
                "width x height, denoise again (video-to-video)", fields={
                    "model": Param(str, "second-stage model: a modelscope/zeroscope preset, a folder or hub id "
                                   "(cerspense/zeroscope_v2_XL); default: the row's own model"),
                    "from_width": Param(int, "first-stage width (default: the model's default width)", minimum=8),
                    "from_height": Param(int, "first-stage height (default: the model's default height)", minimum=8),
                    "strength": Param(float, "second-stage strength (default 0.6)", minimum=0.0, maximum=1.0),
                    "num_inference_steps": Param(int, "second-stage steps (default: the row's)", minimum=1),
                    "guidance_scale": Param(float, "second-stage guidance (default: the row's)", minimum=0.0),
                })
SCHEDULERS = ("ddim", "dpm++", "euler", "euler_ancestral", "pndm")


def _family(name: str, window: int, defaults: Defaults, options: dict, checkpoints: tuple) -> TextToVideoSD:
    tiny = Defaults(num_frames=window, height=64, width=64, num_inference_steps=4, fps=8,
                    guidance_scale=defaults.guidance_scale)
    return TextToVideoSD(name=name, pipeline_class="TextToVideoSDPipeline", inputs=("prompt", "video"),
                         layout=LatentLayout(frame_axis=1), step_cache=True, prompt_encoder=clip_prompt_embeds,
                         required=("prompt",), window=window, defaults=defaults, tiny_defaults=tiny, arguments=PARAMS,
                         options=options,
                         schedulers=SCHEDULERS, checkpoints=checkpoints)


ZEROSCOPE = _family(
    "zeroscope", 24,
    Defaults(num_frames=24, height=320, width=576, num_inference_steps=40, fps=8, guidance_scale=9.0),
    # drives a second pipeline call: an argument of neither pipeline
    {"upscale": UPSCALE},
    ("cerspense/zeroscope_v2_576w",
     "cerspense/zeroscope_v2_XL (second stage only: params.upscale.model, at 1024x576)"))
MODELSCOPE = _family(
    "modelscope", 16,
    Defaults(num_frames=16, height=256, width=256, num_inference_steps=25, fps=8, guidance_scale=9.0),
    {},
    ("damo-vilab/text-to-video-ms-1.7b (name it modelscope:damo-vilab/text-to-video-ms-1.7b; "
     "unprefixed it loads as zeroscope)",))

# checkpoints of one pipeline class load as the first family unless named FAMILY:LOCATION: zeroscope,
# so zeroscope_v2_576w keeps its 24-frame window and upscale recipe (ms-1.7b renders there too)
