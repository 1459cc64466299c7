"""Stable Video Diffusion (SVD, SVD-XT): image to video with micro-conditioning."""
from __future__ import annotations

from dataclasses import dataclass

from ..chunks import ANCHORED, CHAIN, LatentLayout
from ..errors import RowRejected
from .base import Defaults, Family
from .components import clip_image_encoder, clip_image_processor, scheduler
from .params import Param


@dataclass(frozen=True)
class StableVideoDiffusion(Family):
    def window_from_checkpoint(self, read_config) -> int:
        return int(read_config("unet").get("num_frames", self.window))

    def components(self, size):
        from diffusers import (
            AutoencoderKLTemporalDecoder,
            UNetSpatioTemporalConditionModel,
        )

        if size == "tiny":
            unet = UNetSpatioTemporalConditionModel(
                block_out_channels=(32, 64), layers_per_block=2, sample_size=32, in_channels=8, out_channels=4,
                down_block_types=("CrossAttnDownBlockSpatioTemporal", "DownBlockSpatioTemporal"),
                up_block_types=("UpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal"),
                cross_attention_dim=32, num_attention_heads=8, projection_class_embeddings_input_dim=96,
                addition_time_embed_dim=32, num_frames=self.window)
            vae = AutoencoderKLTemporalDecoder(block_out_channels=(32, 32, 32, 32), layers_per_block=1,
                                               down_block_types=("DownEncoderBlock2D",) * 4, latent_channels=4)
        else:
            # the published SVD / SVD-XT configuration (diffusers' defaults are SVD's UNet)
            unet = UNetSpatioTemporalConditionModel(num_frames=self.window)
            vae = AutoencoderKLTemporalDecoder(block_out_channels=(128, 256, 512, 512), layers_per_block=2,
                                               down_block_types=("DownEncoderBlock2D",) * 4, latent_channels=4,
                                               sample_size=768)
        euler = scheduler(
            "EulerDiscreteScheduler", beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
            interpolation_type="linear", num_train_timesteps=1000, prediction_type="v_prediction", sigma_max=700.0,
            sigma_min=0.002, steps_offset=1, timestep_spacing="leading", timestep_type="continuous",
            use_karras_sigmas=True)
        return dict(vae=vae, image_encoder=clip_image_encoder(size), unet=unet, scheduler=euler,
                    feature_extractor=clip_image_processor())

    def check_request(self, request):
        # the pipeline encodes the image once, unguided when max_guidance_scale <= 1, but guides the steps when
        # any frame's scale is > 1: a ramp from above 1 to at most 1 ends in a tensor size mismatch at render
        minimum = request.arguments.get("min_guidance_scale", 1.0)
        if minimum > 1 >= request.guidance_scale:
            raise RowRejected("params.min_guidance_scale", minimum, "must be <= 1 when guidance_scale (SVD's "
                              f"max_guidance_scale) is {request.guidance_scale}: the ramp ends unguided")

    def pipeline_kwargs(self, request, image, video):
        # `fps` conditions the model and sets the mp4's rate; guidance_scale is SVD's max_guidance_scale
        return dict(image=image, height=request.height, width=request.width, num_frames=request.num_frames,
                    num_inference_steps=request.num_inference_steps, max_guidance_scale=request.guidance_scale,
                    fps=request.fps, **self.call_arguments(request))

    def decode_latents(self, pipeline, latents):
        # the VAE's dtype was set for the row by `configure` (the pipeline leaves it in float32 after encoding
        # the image when it returns latents); the temporal decoder sees all these frames at once, across seams
        frames = latents.shape[1]
        return pipeline.decode_latents(latents.to(pipeline.vae.dtype), frames, decode_chunk_size=frames)


SVD_PARAMS = {
    "motion_bucket_id": Param(int, "amount of motion (higher moves more)", minimum=0),
    "noise_aug_strength": Param(float, "noise added to the conditioning image", minimum=0.0),
    "min_guidance_scale": Param(float, "guidance at the first frame (ramps to guidance_scale)", minimum=0.0),
    "decode_chunk_size": Param(int, "frames the VAE decodes at once (memory vs speed)", minimum=1),
}


def _svd(name: str, window: int, checkpoint: str) -> StableVideoDiffusion:
    return StableVideoDiffusion(
        name=name, pipeline_class="StableVideoDiffusionPipeline", inputs=("image",), window=window,
        defaults=Defaults(num_frames=window, height=576, width=1024, num_inference_steps=25, fps=7, guidance_scale=3.0),
        tiny_defaults=Defaults(num_frames=window, height=64, width=64, num_inference_steps=4, fps=7,
                               guidance_scale=3.0),
        arguments=SVD_PARAMS, column_aliases={"max_guidance_scale": "guidance_scale"}, checkpoints=(checkpoint,),
        chunk_modes=(ANCHORED, CHAIN), step_cache=True,
        # latents are (frames, channels, h, w)
        layout=LatentLayout(frame_axis=0),
        # the temporal VAE's memory knob is decode_chunk_size
        memory_options=("forward_chunking", "vae_float32"))


SVD = _svd("svd", 14, "stabilityai/stable-video-diffusion-img2vid")
SVD_XT = _svd("svd-xt", 25, "stabilityai/stable-video-diffusion-img2vid-xt")

