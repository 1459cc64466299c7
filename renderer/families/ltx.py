"""LTX-Video: one checkpoint, three diffusers pipelines over the same components (a diffusion transformer over
packed tokens, a causal video VAE packing 8 frames and 32x32 pixels into one latent, T5-v1.1-XXL).

LTXPipeline renders a row from its text, LTXImageToVideoPipeline a row with an image (its first frame), and
LTXConditionPipeline a row pinned to keyframes (a last_image, and the image if given, at the window's last and
first frames). The siblings are built once per loaded pipeline from its components.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass, replace

from ..chunks import ANCHORED, KEYFRAMES as KEYFRAME_MODE, LatentLayout
from ..errors import RowRejected
from .base import Defaults, Family
from .components import scheduler, t5_encoder, t5_tokenizer
from .params import Param
from .pipeline_state import frame_noise, keyed_seed, sibling_pipeline

TEXT, IMAGE, KEYFRAMES = "LTXPipeline", "LTXImageToVideoPipeline", "LTXConditionPipeline"
# the tokenizer length of the published checkpoints
TOKENS = 128

# LTX-Video 2B (0.9.0 to 0.9.5) is the transformer class's defaults; 0.9.7/0.9.8 13B widens the heads and deepens it
LTX_13B_CONFIG = dict(attention_head_dim=128, cross_attention_dim=4096, num_layers=48)
# diffusers' test transformer with two blocks: the first-block cache needs a block after the first
LTX_TINY = dict(in_channels=8, out_channels=8, num_attention_heads=4, attention_head_dim=8, cross_attention_dim=32,
                num_layers=2, caption_channels=32)
# the 0.9.5+ VAE (0.9.5, 0.9.7, 0.9.8): four down blocks (spatial, temporal, then both twice), a decoder that
# upsamples three times and is conditioned on the decode timestep
VAE_095_LAYOUT = dict(down_block_types=("LTXVideo095DownBlock3D",) * 4, spatio_temporal_scaling=(True,) * 4,
                      downsample_type=("spatial", "temporal", "spatiotemporal", "spatiotemporal"),
                      decoder_spatio_temporal_scaling=(True,) * 3, decoder_inject_noise=(False,) * 4,
                      upsample_residual=(True,) * 3, upsample_factor=(2,) * 3, timestep_conditioning=True,
                      temporal_compression_ratio=8)
VAE_095 = dict(latent_channels=128, block_out_channels=(128, 256, 512, 1024, 2048),
               decoder_block_out_channels=(256, 512, 1024), layers_per_block=(4, 6, 6, 2, 2),
               decoder_layers_per_block=(5, 5, 5, 5), patch_size=4, spatial_compression_ratio=32)
# the same layout at 8 channels without the 4x4 pixel patches (8x spatially, 8x in time, as the layout plans); the
# decoder's channels double towards its input since each upsampler halves them
VAE_TINY = dict(latent_channels=8, block_out_channels=(8,) * 5, decoder_block_out_channels=(8, 16, 32),
                layers_per_block=(1,) * 5, decoder_layers_per_block=(1,) * 4, patch_size=1,
                spatial_compression_ratio=8)

# the self- and cross-attention and the feed-forward layer of every transformer block (module names)
LTX_BLOCK_LAYERS = r"transformer_blocks\.\d+\.(attn1|attn2|ff)"


def ltx_prompt_embeds(pipeline, request) -> dict:
    """LTX's encode_prompt: embeddings and their attention masks, padded to the call's max_sequence_length (the
    row's, else the pipeline call's default: 128, or 256 for LTXConditionPipeline)."""
    default = inspect.signature(type(pipeline).__call__).parameters["max_sequence_length"].default
    embeds, mask, negative, negative_mask = pipeline.encode_prompt(
        prompt=request.prompt, negative_prompt=request.negative_prompt,
        do_classifier_free_guidance=request.guidance_scale > 1, device=pipeline._execution_device,
        max_sequence_length=request.params.get("max_sequence_length", default))
    return dict(prompt_embeds=embeds, prompt_attention_mask=mask, negative_prompt_embeds=negative,
                negative_prompt_attention_mask=negative_mask)


@dataclass(frozen=True)
class LTXVideo(Family):
    def components(self, size):
        from diffusers import AutoencoderKLLTXVideo, LTXVideoTransformer3DModel

        tokenizer = t5_tokenizer(TOKENS)
        published = LTX_13B_CONFIG if self.variant == "13b" else {}
        transformer = LTXVideoTransformer3DModel(**(LTX_TINY if size == "tiny" else published))
        vae = AutoencoderKLLTXVideo(**VAE_095_LAYOUT, **(VAE_TINY if size == "tiny" else VAE_095))
        # the 0.9.5+ scheduler: flow matching shifted by a fixed `shift` (1.0), not by the frame size
        flow = scheduler("FlowMatchEulerDiscreteScheduler", use_dynamic_shifting=False)
        return dict(tokenizer=tokenizer, text_encoder=t5_encoder(size, tokenizer), transformer=transformer,
                    vae=vae, scheduler=flow)

    def claims(self, index):
        # 0.9.0-0.9.5 are saved as LTXPipeline, 0.9.7+ as LTXConditionPipeline
        return index.get("_class_name") in (self.pipeline_class, *self.compatible_classes)

    def for_checkpoint(self, index, read_config):
        return LTX_13B if read_config("transformer").get("num_layers") == LTX_13B_CONFIG["num_layers"] else self

    def check_request(self, request):
        between_keyframes = request.chunk_mode == KEYFRAME_MODE
        keyframed = request.last_image is not None or between_keyframes
        for key in KEYFRAME_ARGUMENTS:
            if key in request.arguments and not keyframed:
                raise RowRejected(f"params.{key}", request.arguments[key], "applies to keyframe rows only (a row "
                                  "with a last_image or rendered between keyframes, by LTXConditionPipeline)")
        if request.last_image is not None and len(request.plan) > 1 and not between_keyframes:
            raise RowRejected("num_frames", request.num_frames, f"must fit one window ({request.plan[0].frames} "
                              "frames, params.chunk_window) for a row with a last_image, unless rendered between "
                              'keyframes (params.chunk_mode "keyframes"): its keyframes pin one window\'s first and '
                              "last frames")
        self._check_schedule(request)

    @staticmethod
    def _check_schedule(request):
        steps, arguments = request.num_inference_steps, request.arguments
        timesteps = arguments.get("timesteps")
        if timesteps is not None and (len(timesteps) != steps or timesteps != sorted(timesteps, reverse=True)):
            raise RowRejected("params.timesteps", timesteps, f"must hold num_inference_steps ({steps}) timesteps "
                              "in descending order")
        strength = arguments.get("denoise_strength")
        if strength is not None and int(steps * strength) < 1:
            raise RowRejected("params.denoise_strength", strength, f"runs no step of {steps} (at least "
                              f"{1 / steps:.3g} runs one)")

    def pipeline_for(self, pipeline, request):
        if request.last_image is not None:
            return self.sibling(pipeline, KEYFRAMES)
        return self.sibling(pipeline, IMAGE if request.image is not None else self.pipeline_class)

    @staticmethod
    def sibling(pipeline, class_name: str):
        """The loaded pipeline, or its sibling of class `class_name` over the same components."""
        return sibling_pipeline(pipeline, class_name)

    def call_kwargs(self, request) -> dict:
        """The call's keyword arguments but its images: the columns, then the row's params (a keyframe row's
        `strength` goes to its conditions)."""
        arguments = {k: v for k, v in self.call_arguments(request).items() if k != "strength"}
        return dict(prompt=request.prompt, negative_prompt=request.negative_prompt, height=request.height,
                    width=request.width, num_frames=request.num_frames, frame_rate=request.fps,
                    num_inference_steps=request.num_inference_steps, guidance_scale=request.guidance_scale,
                    **arguments)

    def pipeline_kwargs(self, request, image, video):
        if request.last_image is not None:
            from ..inputs import load_image

            last = load_image(request.last_image, "last_image")
            return {**self.call_kwargs(request), "conditions": self.keyframes(request, image, last)}
        return {**self.call_kwargs(request), **({} if image is None else {"image": image})}

    @staticmethod
    def keyframes(request, first, last) -> list:
        """LTXConditionPipeline's conditions: `first` at frame 0 and `last` at the window's last frame (either
        may be None), held with the row's `strength`."""
        from diffusers.pipelines.ltx.pipeline_ltx_condition import LTXVideoCondition

        strength = request.arguments.get("strength", 1.0)
        pinned = ((first, 0), (last, request.num_frames - 1))
        return [LTXVideoCondition(image=image, frame_index=index, strength=strength)
                for image, index in pinned if image is not None]

    def generate(self, pipeline, request, image, video, generator, **overrides):
        """Frames (F, 3, H, W), or with output_type="latent" the normalised latents (C, F, h, w)."""
        runner = self.pipeline_for(pipeline, request)
        if "latents" in overrides and image is not None and request.last_image is None:
            overrides["latents"] = self.with_image(runner, request, image, overrides["latents"], generator)
        kwargs = {**self.pipeline_kwargs(request, image, video), "output_type": "pt", **overrides}
        return self._call(runner, request, kwargs, generator)

    def keyframe_window(self, pipeline, request, first, last, generator, **overrides):
        """One window of `request.num_frames` frames pinned to the PIL images `first` at its first frame and
        `last` at its last (either may be None), by LTXConditionPipeline with the row's arguments: frames as
        `generate` returns them. `overrides` replace call arguments (prompt embeddings, output_type)."""
        runner = self.sibling(pipeline, KEYFRAMES)
        kwargs = {**self.call_kwargs(request), "conditions": self.keyframes(request, first, last),
                  "output_type": "pt", **overrides}
        return self._call(runner, request, kwargs, generator)

    def generate_keyframe(self, pipeline, request, keyframe, anchor, generator):
        """The first keyframe from the text alone (a one-frame LTXPipeline call); every other one the last frame
        of the shortest window LTXConditionPipeline renders from the first keyframe (one latent frame on), each
        from noise of its own."""
        generator.manual_seed(keyed_seed(request.seed, f"keyframe {keyframe.index}"))
        text = replace(request, image=None, last_image=None, num_frames=1)
        if anchor is None:
            return self.generate(pipeline, text, None, None, generator)
        hop = replace(text, num_frames=self.layout.temporal + 1)
        return self.keyframe_window(pipeline, hop, anchor, None, generator)[-1:]

    def generate_between(self, pipeline, request, chunk, first, last, generator):
        """A window pinned to its two keyframes by LTXConditionPipeline, from noise of its own (the condition
        pipeline draws its noise from the generator alone)."""
        generator.manual_seed(keyed_seed(request.seed, f"window {chunk.index}"))
        window = replace(request, image=None, last_image=None, num_frames=chunk.frames)
        return self.keyframe_window(pipeline, window, first, last, generator)

    def _call(self, runner, request, kwargs, generator):
        self.set_cache(runner, request)
        # LTXImageToVideoPipeline draws its decode noise with torch.randn on its own device, which a CPU generator
        # cannot feed on a GPU (its siblings draw with randn_tensor since diffusers#10535): it is decoded here as
        # they decode, from the same draws
        decodes_here = (type(runner).__name__ == IMAGE and kwargs["output_type"] != "latent"
                        and runner.vae.config.timestep_conditioning)
        out = runner(**{**kwargs, **({"output_type": "latent"} if decodes_here else {})}, generator=generator)
        out = out.frames[0]
        # LTXPipeline and LTXImageToVideoPipeline return packed tokens (S, C); LTXConditionPipeline unpacks them
        if out.ndim == 2:
            out = runner._unpack_latents(out[None], *self._latent_size(runner, request), *self._patches(runner))[0]
        if decodes_here:
            video = self.decode_normalised(runner, out[None], kwargs, generator)
            return runner.video_processor.postprocess_video(video=video, output_type=kwargs["output_type"])[0]
        return out

    def set_cache(self, runner, request):
        """The row's transformer cache applied afresh for the pipeline that runs the call, which a keyframe call
        picks apart from `pipeline_for`: PAB reads the current timestep from that pipeline."""
        from ..transformer_cache import cache_config, set_transformer_cache

        cache = self.row_cache(request)
        config = None if cache is None else cache_config(runner, cache, request.num_inference_steps,
                                                         self.layout.frame_axis)
        set_transformer_cache(runner.transformer, config)

    @staticmethod
    def _latent_size(pipeline, request) -> tuple[int, int, int]:
        """(frames, height, width) of a request's latents, as the pipeline computes them."""
        frames = (request.num_frames - 1) // pipeline.vae_temporal_compression_ratio + 1
        scale = pipeline.vae_spatial_compression_ratio
        return frames, request.height // scale, request.width // scale

    @staticmethod
    def _patches(pipeline) -> tuple[int, int]:
        return pipeline.transformer_spatial_patch_size, pipeline.transformer_temporal_patch_size

    def with_image(self, runner, request, image, latents, generator):
        """Packed initial latents with the first latent frame replaced by the image's, as the image-to-video
        pipeline's prepare_latents lays them out (given latents, it takes them as they are: the image would be lost)."""
        import torch

        device, frames = runner._execution_device, self._latent_size(runner, request)
        pixels = runner.video_processor.preprocess(image, height=request.height, width=request.width)
        with torch.no_grad():
            own, _ = runner.prepare_latents(pixels.to(device, runner.text_encoder.dtype), 1,
                                            runner.transformer.config.in_channels, request.height, request.width,
                                            request.num_frames, torch.float32, device, generator)
        own, given = (runner._unpack_latents(x, *frames, *self._patches(runner)) for x in (own, latents))
        return runner._pack_latents(torch.cat([own[:, :, :1], given[:, :, 1:]], dim=2), *self._patches(runner))

    def generate_chunk(self, pipeline, request, chunk, image, video, generator):
        # the row's image is the video's first frame: the chunks after the first render from the text alone
        if chunk.index > 0:
            request, image = replace(request, image=None), None
        return super().generate_chunk(pipeline, request, chunk, image, video, generator)

    def chunk_noise(self, pipeline, request, chunk):
        """A chunk's slice of the noise bank as the pipeline's packed tokens (1, frames*h*w, C), in float32 as
        its prepare_latents draws them."""
        noise = frame_noise(request.seed, range(chunk.latent_start, chunk.latent_end),
                            self.latent_frame_shape(pipeline, request))
        video = noise.movedim(0, 1).unsqueeze(0)
        return pipeline._pack_latents(video, *self._patches(pipeline)).to(pipeline._execution_device)

    def latent_frame_shape(self, pipeline, request):
        scale = pipeline.vae_spatial_compression_ratio
        return pipeline.transformer.config.in_channels, request.height // scale, request.width // scale

    def decode(self, pipeline, request, latents):
        """Stitched latents (frames first) decoded whole, as the pipeline decodes one call's latents (F latent
        frames decode to 8(F-1)+1 frames, so windows decoded apart would not join), with the row's decode
        timestep and noise."""
        import numpy as np
        import torch

        video = torch.from_numpy(np.moveaxis(latents, 0, 1)).unsqueeze(0).to(pipeline._execution_device)
        generator = torch.Generator("cpu").manual_seed(request.seed)
        frames = self.decode_normalised(pipeline, video, self.call_arguments(request), generator)
        yield pipeline.video_processor.postprocess_video(video=frames, output_type="pt")[0]

    @staticmethod
    def decode_normalised(pipeline, latents, arguments: dict, generator):
        """The pipelines' decode after their last step: normalised latents (1, C, F, h, w) back to the VAE's
        scale, blended towards noise by decode_noise_scale, and decoded at decode_timestep (the 0.9.1+ VAE's
        decoder is conditioned on it)."""
        import torch
        from diffusers.utils.torch_utils import randn_tensor

        vae = pipeline.vae
        latents = pipeline._denormalize_latents(latents, vae.latents_mean, vae.latents_std, vae.config.scaling_factor)
        latents = latents.to(pipeline.text_encoder.dtype)
        timestep = None
        if vae.config.timestep_conditioning:
            noise = randn_tensor(latents.shape, generator=generator, device=latents.device, dtype=latents.dtype)
            step = arguments.get("decode_timestep", 0.0)
            scale = arguments.get("decode_noise_scale", step)
            timestep = torch.tensor([step], device=latents.device, dtype=latents.dtype)
            scale = torch.tensor([scale], device=latents.device, dtype=latents.dtype)[:, None, None, None, None]
            latents = (1 - scale) * latents + scale * noise
        with torch.no_grad():
            return vae.decode(latents.to(vae.dtype), timestep, return_dict=False)[0]

    def configure(self, pipeline, request, base_scheduler):
        super().configure(pipeline, request, base_scheduler)
        if request.options.get("flow_shift") is not None and pipeline.scheduler.config.use_dynamic_shifting:
            # 0.9.0/0.9.1 checkpoints shift by the frame size (`mu`), which leaves `shift` unread: a row's
            # flow_shift replaces that shift with its own
            pipeline.scheduler = type(pipeline.scheduler).from_config(pipeline.scheduler.config,
                                                                      use_dynamic_shifting=False)


ARGUMENTS = {
    "guidance_rescale": Param(float, "rescale the guided prediction towards the text one's spread (0: off; "
                              "counters over-exposure at high guidance)", minimum=0.0, maximum=1.0),
    "decode_timestep": Param(float, "timestep the VAE decodes at (0.9.1+ VAEs; published: 0.03-0.05)", minimum=0.0,
                             maximum=1.0),
    "decode_noise_scale": Param(float, "noise blended into the latents before decoding (default: decode_timestep)",
                                minimum=0.0, maximum=1.0),
    "max_sequence_length": Param(int, "T5 tokens read from the prompt (longer prompts are cut; default 128, 256 "
                                 "for keyframe rows)", minimum=1, maximum=512),
    "strength": Param(float, "how firmly the keyframes hold (keyframe rows; 1: exactly)", minimum=0.0, maximum=1.0),
    "image_cond_noise_scale": Param(float, "noise added to the keyframes at each step, easing motion away from "
                                    "them (keyframe rows; default 0.15)", minimum=0.0),
    "denoise_strength": Param(float, "fraction of the schedule run, its first steps skipped (keyframe rows; "
                              "default 1)", minimum=0.0, maximum=1.0),
    "timesteps": Param(list, "the denoising timesteps, descending from 1000 (pure noise), one per step, in place "
                       "of LTX's linear-quadratic schedule (keyframe rows)", item=float, minimum=0.0, maximum=1000.0),
}
# arguments of LTXConditionPipeline alone (LTXPipeline passes its own sigmas, so it refuses timesteps)
KEYFRAME_ARGUMENTS = ("strength", "image_cond_noise_scale", "denoise_strength", "timesteps")

DEFAULTS = Defaults(num_frames=161, height=512, width=704, num_inference_steps=50, fps=25, guidance_scale=3.0)
LTX = LTXVideo(
    name="ltx", pipeline_class=TEXT, inputs=("prompt", "image", "last_image"), required=("prompt",), window=161,
    defaults=DEFAULTS,
    tiny_defaults=Defaults(num_frames=9, height=32, width=32, num_inference_steps=4, fps=25, guidance_scale=3.0),
    arguments=ARGUMENTS, column_aliases={"frame_rate": "fps"}, compatible_classes=(IMAGE, KEYFRAMES),
    checkpoints=("Lightricks/LTX-Video-0.9.5", "Lightricks/LTX-Video (0.9.0/0.9.1)",
                 "Lightricks/LTX-Video-0.9.7-dev (13b)"),
    # (C, F, H, W) latents once unpacked: frame 0 alone, then 8 frames per latent frame; 32x VAE, 1x1 patches
    layout=LatentLayout(frame_axis=1, temporal=8, causal_first=True, spatial=32, patch=1),
    chunk_modes=(ANCHORED, KEYFRAME_MODE),
    prompt_encoder=ltx_prompt_embeds, memory_options=("vae_slicing", "vae_tiling"), cuda_dtype="bfloat16",
    # FasterCache fails on the packed latents
    caches=("first_block", "taylorseer", "mag", "pab"), flow_shift="shift",
    # TaylorSeer's default patterns name modules ending in "attn"; LTX's attention is attn1/attn2
    cache_defaults={"taylorseer": {"cache_identifiers": [LTX_BLOCK_LAYERS]}},
)
# the published sizes by name: random-ltx-2b is random-ltx; 0.9.7/0.9.8 13B
LTX_2B = LTX.with_variant("2b")
LTX_13B = LTX.with_variant("13b")
