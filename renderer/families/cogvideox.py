"""CogVideoX: CogVideoXPipeline (text to video) and CogVideoXImageToVideoPipeline, a diffusion transformer over a
causal 3D VAE and a T5-v1.1-XXL text encoder. Its latents hold frames first: (batch, frames, channels, h, w)."""
from __future__ import annotations

from dataclasses import dataclass, replace

from ..chunks import ANCHORED, CHAIN, LatentLayout
from ..errors import RowRejected
from .base import Defaults, Family
from .components import scheduler, t5_encoder, t5_tokenizer
from .params import Param
from .pipeline_state import frame_noise
from .prompts import t5_prompt_embeds

I2V_PIPELINE = "CogVideoXImageToVideoPipeline"
# T5 tokens the published transformers were trained on (diffusers' conversion script: TOKENIZER_MAX_LENGTH)
TEXT_TOKENS = 226
# the published transformers as diffusers' conversion script builds them (scripts/convert_cogvideox_to_diffusers.py);
# the class defaults are CogVideoX-2B's: 30 heads of 64, 30 blocks, 60x90 latent samples of 49 frames
FIVE_B = dict(num_attention_heads=48, num_layers=42)
# diffusers' test transformer with a head size RoPE can split (a multiple of 16) and two blocks (the first-block
# cache needs a block after the first); 4x4 latent samples are 32x32 frames
TINY = dict(num_attention_heads=2, attention_head_dim=16, time_embed_dim=2, text_embed_dim=32, num_layers=2,
            sample_height=4, sample_width=4)
# what sets each variant apart: its positional embeddings (2B: sincos; 5B: RoPE; 5B-I2V: RoPE and embeddings learned
# for its sample size), and CogVideoX 1.5's temporal patches over a RoPE table of 300x300 latent pixels
POSITIONS = {
    "": dict(use_rotary_positional_embeddings=True),
    "2b": {},
    "i2v": dict(use_rotary_positional_embeddings=True, use_learned_positional_embeddings=True),
    "1.5": dict(use_rotary_positional_embeddings=True, patch_size_t=2, patch_bias=False, sample_height=300,
                sample_width=300, sample_frames=81),
}
# diffusers' test VAE: four blocks, so 8x spatially as published, and 4x in time
TINY_VAE = dict(down_block_types=("CogVideoXDownBlock3D",) * 4, up_block_types=("CogVideoXUpBlock3D",) * 4,
                block_out_channels=(8, 8, 8, 8), latent_channels=4, layers_per_block=1, norm_num_groups=2)
# the conversion script's schedule: v-prediction on zero-terminal-SNR betas, shifted by snr_shift_scale
SCHEDULE = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                num_train_timesteps=1000, prediction_type="v_prediction", rescale_betas_zero_snr=True,
                set_alpha_to_one=True, timestep_spacing="trailing")


@dataclass(frozen=True)
class OddLatentLayout(LatentLayout):
    """CogVideoX's layout: 4 frames per latent frame after a first one alone, but its VAE decodes latent frames in
    pairs, and keeps the first frame alone only where their count is odd (the first batch then holds three): an even
    count decodes to 4 frames each (13 frames asked, 4 latent frames, 16 rendered). The counts that render as asked
    are those of an odd count of latent frames: 8k+1."""

    def valid_frames(self, frames: int) -> bool:
        return frames % (2 * self.temporal) == 1

    def frame_rule(self) -> str:
        step = 2 * self.temporal
        return f"{step}k+1 ({step + 1}, {2 * step + 1}, ...)"

    def nearest_frames(self, frames: int) -> tuple[int, ...]:
        step = 2 * self.temporal
        lower = (frames - 1) // step * step + 1
        return lower, lower + step


@dataclass(frozen=True)
class CogVideoX(Family):
    # the transformer's positional embeddings were learned for one size and frame count (CogVideoX-5B-I2V): a row
    # renders exactly its model's default size, in chunks of its default frame count
    learned_positions: bool = False
    # the largest height and width (pixels) CogVideoX 1.5's RoPE table covers
    rope_limit: int | None = None

    def claims(self, index):
        return index.get("_class_name") in (self.pipeline_class, *self.compatible_classes)

    def for_checkpoint(self, index, read_config):
        return variant_of(index.get("_class_name"), read_config("transformer"))

    def window_from_checkpoint(self, read_config):
        return int(read_config("transformer").get("sample_frames", self.window))

    def components(self, size):
        from diffusers import AutoencoderKLCogVideoX, CogVideoXTransformer3DModel

        tokenizer = t5_tokenizer(TEXT_TOKENS)
        latent = 4 if size == "tiny" else 16
        dims = TINY if size == "tiny" else {} if self.variant == "2b" else FIVE_B
        # an image-conditioned transformer reads the image's latents beside the noisy ones
        channels = latent * 2 if "image" in self.inputs else latent
        transformer = CogVideoXTransformer3DModel(in_channels=channels, out_channels=latent,
                                                  **{**dims, **POSITIONS[self.variant]})
        # 2B's VAE scaling differs from 5B's; 1.5's image latents were trained unscaled
        vae = AutoencoderKLCogVideoX(**(TINY_VAE if size == "tiny" else {}), invert_scale_latents=self.variant == "1.5",
                                     scaling_factor=1.15258426 if self.variant == "2b" else 0.7)
        # CogVideo's recommendation: DDIM for 2B, the DPM solver for the 5B models (less shifted SNR)
        ddim = self.variant == "2b"
        denoise = scheduler("CogVideoXDDIMScheduler" if ddim else "CogVideoXDPMScheduler",
                            snr_shift_scale=3.0 if ddim else 1.0, **SCHEDULE)
        return dict(tokenizer=tokenizer, text_encoder=t5_encoder(size, tokenizer), vae=vae, transformer=transformer,
                    scheduler=denoise)

    def check_request(self, request):
        self.check_positions(request)
        check_guided_knobs(request)

    def check_positions(self, request) -> None:
        """Sizes and frame counts the transformer's positional embeddings cannot take: diffusers refuses another
        size for learned embeddings but silently swaps them for sincos ones at another frame count."""
        if self.rope_limit:
            for column in ("height", "width"):
                if getattr(request, column) > self.rope_limit:
                    raise RowRejected(column, getattr(request, column), f"must be <= {self.rope_limit}: CogVideoX "
                                      f"1.5's rotary position table covers {self.rope_limit} pixels")
        if not self.learned_positions:
            return
        native = self.model_defaults(request)
        learned = (f"the positional embeddings are learned for {native.width}x{native.height} frames, "
                   f"{native.num_frames} at once")
        for column in ("height", "width"):
            if getattr(request, column) != getattr(native, column):
                raise RowRejected(column, getattr(request, column), f"must be {getattr(native, column)}: {learned}")
        if request.num_frames < native.num_frames:
            raise RowRejected("num_frames", request.num_frames, f"must be {native.num_frames} or more (a long row "
                              f"in chunks of {native.num_frames}): {learned}")
        if any(chunk.frames != native.num_frames for chunk in request.plan):
            raise RowRejected("params.chunk_window", request.options.get("chunk_window"),
                              f"must be {native.num_frames}: {learned}")

    def pipeline_kwargs(self, request, image, video):
        images = {"image": image} if "image" in self.inputs else {}
        return dict(prompt=request.prompt, negative_prompt=request.negative_prompt, height=request.height,
                    width=request.width, num_frames=request.num_frames,
                    num_inference_steps=request.num_inference_steps, guidance_scale=request.guidance_scale,
                    **images, **self.call_arguments(request))

    def latent_frame_shape(self, pipeline, request):
        scale = pipeline.vae_scale_factor_spatial
        return pipeline.vae.config.latent_channels, request.height // scale, request.width // scale

    def chunk_noise(self, pipeline, request, chunk):
        # frames first, as the pipeline's prepare_latents lays them out, with CogVideoX 1.5's padding frames
        # ahead of the chunk's own: they start from the noise of the latent frames before it
        frames = range(chunk.latent_start - padding(pipeline, chunk), chunk.latent_end)
        noise = frame_noise(request.seed, frames, self.latent_frame_shape(pipeline, request))
        return noise.unsqueeze(0).to(pipeline._execution_device, pipeline.dtype)

    def generate_chunk(self, pipeline, request, chunk, image, video, generator):
        out = super().generate_chunk(pipeline, request, chunk, image, video, generator)
        # latent output keeps CogVideoX 1.5's padding frames, which the pipeline drops itself before decoding
        return out[padding(pipeline, chunk):] if self.stitches_latents(request) else out

    def decode_window(self, request, latent_frames):
        # the VAE is causal in time and decodes in batches of latent frames with a convolution cache carried from one
        # to the next: a window decoded alone would start afresh, so a stitched row is decoded whole, as one call is
        return latent_frames


def padding(pipeline, chunk) -> int:
    """Latent frames CogVideoX 1.5 puts ahead of a chunk's own so that their count divides into its temporal patches
    (the pipeline pads a call of an odd number of latent frames, every valid count, with one); none on CogVideoX
    1.0."""
    patch = pipeline.transformer.config.patch_size_t
    return -(chunk.latent_end - chunk.latent_start) % patch if patch else 0


def check_guided_knobs(request) -> None:
    """Knobs that act on classifier-free guidance do nothing, or fail, in a call without it (guidance_scale <= 1)."""
    if request.guidance_scale > 1:
        return
    if request.arguments.get("use_dynamic_cfg"):
        raise RowRejected("params.use_dynamic_cfg", True, f"needs guidance_scale > 1 (it is {request.guidance_scale}"
                          "): dynamic guidance scales the guided branch, which the call does not run")
    cache = request.options.get("cache")
    if cache and cache["kind"] == "faster":
        raise RowRejected("params.cache.kind", "faster", f"needs guidance_scale > 1 (it is {request.guidance_scale}"
                          "): FasterCache splits the unconditional half off the batched guidance pass")


def variant_of(class_name: str, config: dict) -> CogVideoX:
    """The variant a checkpoint is, by its transformer's config and the pipeline class it was saved as (an
    image-to-video CogVideoX 1.5 is the 1.5 variant taking an image)."""
    if config.get("patch_size_t"):
        family = COGVIDEOX_1_5
    elif config.get("use_learned_positional_embeddings"):
        return learned_for(COGVIDEOX_I2V, config)
    elif config.get("use_rotary_positional_embeddings"):
        family = COGVIDEOX
    else:
        family = COGVIDEOX_2B
    if class_name == I2V_PIPELINE:
        return replace(family, variant=f"{family.variant}-i2v", pipeline_class=I2V_PIPELINE, **IMAGE_INPUTS)
    return family


def learned_for(family: CogVideoX, config: dict) -> CogVideoX:
    """The family with the size its checkpoint's positional embeddings were learned for as its default (the
    pipeline's own default: the transformer's sample size in latent pixels, times the VAE's factor)."""
    scale = family.layout.spatial
    size = dict(height=config["sample_height"] * scale, width=config["sample_width"] * scale)
    return replace(family, defaults=replace(family.defaults, **size))


GUIDANCE = Param(bool, "CogVideoX's dynamic guidance: the scale follows a cosine ramp over the timesteps instead of "
                 "staying at guidance_scale")
ARGUMENTS = {
    "use_dynamic_cfg": GUIDANCE,
    "max_sequence_length": Param(int, "T5 tokens read from the prompt (longer prompts are cut; the models were "
                                 f"trained on {TEXT_TOKENS})", minimum=1, maximum=TEXT_TOKENS),
}
# sincos or learned positions span exactly the transformer's max_text_seq_length text tokens
FIXED_TEXT = {"use_dynamic_cfg": GUIDANCE}
IMAGE_INPUTS = dict(inputs=("prompt", "image"), required=("prompt", "image"), chunk_modes=(ANCHORED, CHAIN))

COGVIDEOX = CogVideoX(
    name="cogvideox", pipeline_class="CogVideoXPipeline", inputs=("prompt",), window=49,
    defaults=Defaults(num_frames=49, height=480, width=720, num_inference_steps=50, fps=8, guidance_scale=6.0),
    tiny_defaults=Defaults(num_frames=9, height=32, width=32, num_inference_steps=4, fps=8, guidance_scale=6.0),
    arguments=ARGUMENTS, schedulers=("cogvideox_ddim", "cogvideox_dpm"), compatible_classes=(I2V_PIPELINE,),
    checkpoints=("THUDM/CogVideoX-5b", "THUDM/CogVideoX-2b", "THUDM/CogVideoX-5b-I2V", "THUDM/CogVideoX1.5-5B"),
    # (F, C, H, W) latents: frame 0 alone, then 4 frames per latent frame, an odd count of them; an 8x VAE under 2x2
    # patches
    layout=OddLatentLayout(frame_axis=0, temporal=4, causal_first=True, spatial=8, patch=2),
    prompt_encoder=t5_prompt_embeds, memory_options=("vae_slicing", "vae_tiling", "vae_float32"),
    cuda_dtype="bfloat16", caches=("first_block", "taylorseer", "mag", "pab", "faster"),
    # TaylorSeer's default patterns name modules ending in "attn"; CogVideoX's attention is attn1
    cache_defaults={"taylorseer": {"cache_identifiers": [r"^transformer_blocks\.\d+\.(attn1|ff)$"]}},
)
# CogVideoX-2B: sincos positions, published and run in float16
COGVIDEOX_2B = COGVIDEOX.with_variant("2b", arguments=FIXED_TEXT, cuda_dtype="float16")
# CogVideoX-5B-I2V: the image's latents beside the noise, positions learned for 480x720 frames, 49 at once
COGVIDEOX_I2V = COGVIDEOX.with_variant(
    "i2v", pipeline_class=I2V_PIPELINE, arguments=FIXED_TEXT, learned_positions=True, **IMAGE_INPUTS,
    tiny_defaults=Defaults(num_frames=49, height=32, width=32, num_inference_steps=4, fps=8, guidance_scale=6.0))
# CogVideoX1.5-5B: 81 frames at 768x1360, 16 fps, temporal patches of 2 latent frames
COGVIDEOX_1_5 = COGVIDEOX.with_variant(
    "1.5", window=81, rope_limit=POSITIONS["1.5"]["sample_height"] * 8,
    defaults=Defaults(num_frames=81, height=768, width=1360, num_inference_steps=50, fps=16, guidance_scale=6.0),
    tiny_defaults=Defaults(num_frames=9, height=32, width=32, num_inference_steps=4, fps=16, guidance_scale=6.0))
