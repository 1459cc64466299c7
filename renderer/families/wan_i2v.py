"""Wan 2.1 image-to-video: WanImageToVideoPipeline, Wan's transformer conditioned on a first frame (its CLIP image
tokens and its VAE latents), and the first-and-last-frame model (FLF2V), conditioned on a last frame too.

The two layouts are not interchangeable in diffusers 0.42: the I2V transformer reads one image's CLIP tokens and
fails on two, while the FLF2V transformer adds positions for exactly two images and fails on one. So a row's
`last_image` goes to the FLF2V model, which requires it, and a long row chains I2V calls, each chunk starting
from the previous chunk's frame at its start.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

from ..chunks import CHAIN
from ..errors import RowRejected
from ..inputs import load_image
from .base import Defaults
from .components import clip_image_encoder, clip_image_processor, scheduler, t5_tokenizer, umt5_encoder
from .params import Param
from .wan import WAN, WAN_14B_CONFIG, WAN_TINY, WAN_VAE_TINY, Wan

# tokens WanAttnProcessor takes as the text's when the image tokens have their own keys and values: it counts
# them from the end of the cross-attention context, whatever the prompt was padded to
TEXT_TOKENS = 512
# diffusers' tiny I2V test image tower (1025 tokens of 32x32 one-pixel patches); its FLF2V test shrinks the image
# to 4x4, so that two images' tokens fit a small position table
TINY_CLIP = dict(hidden_size=4, projection_dim=4, num_hidden_layers=2, num_attention_heads=2, intermediate_size=16,
                 patch_size=1)


@dataclass(frozen=True)
class WanI2V(Wan):
    # the flow shift of the published scheduler (UniPC on flow sigmas): 3.0 at 480p, 5.0 at 720p, 16.0 for FLF2V
    published_shift: float = 3.0
    # the transformer gives the image tokens their own key/value projections (added_kv_proj_dim), as every
    # published checkpoint does; diffusers' tiny test layout, which the tiny presets follow, does not
    image_key_values: bool = True

    @property
    def first_and_last(self) -> bool:
        """The FLF2V layout: every call is conditioned on a first and a last frame."""
        return "last_image" in self.required

    def claims(self, index):
        # Wan 2.2's I2V checkpoints share the class but have no image encoder (two experts instead): family wan2.2
        return super().claims(index) and _saved(index.get("image_encoder")) and not _wan22(index)

    def for_checkpoint(self, index, read_config):
        if not self.claims(index):
            raise RowRejected("model", index.get("_class_name"), "a WanImageToVideoPipeline without an image "
                              "encoder (or with a second transformer) is Wan 2.2 image-to-video, not Wan 2.1's: "
                              "load it with family wan2.2")
        config = read_config("transformer")
        family = WAN_I2V_FLF2V if config.get("pos_embed_seq_len") else WAN_I2V
        return replace(family, image_key_values=config.get("added_kv_proj_dim") is not None)

    def components(self, size):
        from diffusers import AutoencoderKLWan, WanTransformer3DModel

        tiny = size == "tiny"
        tokenizer = t5_tokenizer()
        image_encoder, image_processor = self._image_tower(tiny)
        conditioning = dict(image_dim=image_encoder.config.hidden_size)
        if not tiny:
            # the image tokens' key/value projections, as wide as the transformer
            width = WAN_14B_CONFIG["num_attention_heads"] * WAN_14B_CONFIG["attention_head_dim"]
            conditioning["added_kv_proj_dim"] = width
        if self.first_and_last:
            # learned positions for the first image's tokens followed by the last image's
            conditioning["pos_embed_seq_len"] = 2 * clip_tokens(image_encoder.config)
        # in_channels: the 16 noise channels, then the 4 of the frame mask and the 16 of the conditioning latents
        transformer = WanTransformer3DModel(
            patch_size=(1, 2, 2), in_channels=36, out_channels=16, freq_dim=256, cross_attn_norm=True,
            qk_norm="rms_norm_across_heads", **(WAN_TINY if tiny else WAN_14B_CONFIG), **conditioning)
        unipc = scheduler("UniPCMultistepScheduler", prediction_type="flow_prediction", use_flow_sigmas=True,
                          flow_shift=self.published_shift)
        return dict(tokenizer=tokenizer, text_encoder=umt5_encoder(size, tokenizer), transformer=transformer,
                    vae=AutoencoderKLWan(**WAN_VAE_TINY) if tiny else AutoencoderKLWan(), scheduler=unipc,
                    image_encoder=image_encoder, image_processor=image_processor)

    def _image_tower(self, tiny: bool) -> tuple:
        """The CLIP vision model whose penultimate hidden states condition the transformer, and its processor:
        diffusers' tiny test tower, or the published one (OpenCLIP ViT-H/14, 257 tokens of 1280)."""
        from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

        if not tiny:
            return clip_image_encoder("random"), clip_image_processor()
        side = 4 if self.first_and_last else 32
        config = CLIPVisionConfig(image_size=side, **TINY_CLIP)
        return CLIPVisionModelWithProjection(config), CLIPImageProcessor(crop_size=side, size=side)

    def check_request(self, request):
        self._check_frames_conditioned(request)
        self._check_text_tokens(request)

    def _check_frames_conditioned(self, request) -> None:
        """A last frame only for the FLF2V model, and a FLF2V row in one call (its every call needs a last frame)."""
        if request.last_image is not None and not self.first_and_last:
            raise RowRejected("last_image", request.last_image, "needs the first-and-last-frame model (presets "
                              "tiny-wan-i2v-flf2v, random-wan-i2v-flf2v, or a Wan2.1-FLF2V checkpoint): this "
                              "I2V transformer reads the CLIP tokens of one image only")
        window = request.plan[0].frames
        if self.first_and_last and len(request.plan) > 1:
            raise RowRejected("num_frames", request.num_frames, f"more than one chunk window ({window} frames) of "
                              "the first-and-last-frame model, which needs a last frame (last_image) in every call: "
                              f"a chained row's earlier chunks would have none; render at most {window} frames, "
                              "raise params.chunk_window, or chain with the I2V model")

    def _check_text_tokens(self, request) -> None:
        length = request.arguments.get("max_sequence_length", TEXT_TOKENS)
        if length != TEXT_TOKENS and self.image_key_values and _model_source(request) != "tiny":
            raise RowRejected("params.max_sequence_length", length, f"must be {TEXT_TOKENS} for this model: its "
                              f"transformer takes the last {TEXT_TOKENS} context tokens as the text's and the rest "
                              "as the image's, so a prompt padded to fewer would be read partly as image tokens")

    def pipeline_kwargs(self, request, image, video):
        kwargs = dict(image=image, **super().pipeline_kwargs(request, image, video))
        if request.last_image is not None:
            kwargs["last_image"] = load_image(request.last_image, "last_image")
        return kwargs




def _model_source(request) -> str:
    """"tiny", "random" or "checkpoint": what the row's model is."""
    from ..catalog import resolve_model

    return resolve_model(request.model).source


def clip_tokens(config) -> int:
    """Tokens a CLIP vision tower gives per image: its patches and the class token."""
    return (config.image_size // config.patch_size) ** 2 + 1


def _saved(entry) -> bool:
    """Whether a model_index.json entry names a saved component (absent ones are [null, null])."""
    return isinstance(entry, list) and bool(entry) and entry[0] is not None


def _wan22(index: dict) -> bool:
    return _saved(index.get("transformer_2")) or index.get("boundary_ratio") is not None


ARGUMENTS = {
    "max_sequence_length": Param(int, f"UMT5 tokens the prompt is padded or cut to (the published transformers "
                                 f"need {TEXT_TOKENS})", minimum=1, maximum=TEXT_TOKENS),
}
I2V_480P = Defaults(num_frames=81, height=480, width=832, num_inference_steps=50, fps=16, guidance_scale=5.0)
I2V_720P = Defaults(num_frames=81, height=720, width=1280, num_inference_steps=50, fps=16, guidance_scale=5.0)

WAN_I2V = WanI2V(
    name="wan-i2v", pipeline_class="WanImageToVideoPipeline", inputs=("prompt", "image", "last_image"),
    required=("prompt", "image"), window=81, defaults=I2V_480P, tiny_defaults=WAN.tiny_defaults,
    arguments=ARGUMENTS, layout=WAN.layout, prompt_encoder=WAN.prompt_encoder, memory_options=WAN.memory_options,
    cuda_dtype="bfloat16", context_parallel=True, caches=WAN.caches, cache_defaults=WAN.cache_defaults,
    flow_shift="flow_shift",
    # anchored chunks would all start from the row's first image: each chunk starts from the last one's frame
    chunk_modes=(CHAIN,),
    checkpoints=("Wan-AI/Wan2.1-I2V-14B-480P-Diffusers", "Wan-AI/Wan2.1-I2V-14B-720P-Diffusers",
                 "Wan-AI/Wan2.1-FLF2V-14B-720P-diffusers"),
)
# the published models by name: random-wan-i2v-480p is random-wan-i2v; the 720P model renders 720p with a larger
# shift; FLF2V (720p) is conditioned on both ends, with the largest shift
WAN_I2V_480P = WAN_I2V.with_variant("480p")
WAN_I2V_720P = WAN_I2V.with_variant("720p", defaults=I2V_720P, published_shift=5.0)
WAN_I2V_FLF2V = WAN_I2V.with_variant("flf2v", defaults=I2V_720P, published_shift=16.0,
                                     required=("prompt", "image", "last_image"))
