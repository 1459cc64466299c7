"""Pipeline components shared by several families, in two sizes.

`tiny` parts are small enough to render a video on a CPU in well under a second; `full` parts are the
published architectures (Stable Diffusion 1.5, CLIP ViT-L/14 and ViT-H/14) with random weights, so
a benchmark on them costs the real FLOPs and memory. No weights or tokenizer files are downloaded:
the tokenizers are built in memory (a byte-level CLIP BPE without merges; a T5/UMT5 Unigram with byte fallback).
"""
from __future__ import annotations

import contextlib


@contextlib.contextmanager
def seeded_build(device: str, dtype=None, seed: int = 0):
    """Build modules directly on `device` in `dtype` with reproducible random weights, leaving global RNG alone.

    Built in the target dtype, a full-size model never exists in float32: two 14B experts and their text encoder
    fit one 80 GB GPU in bfloat16, and would not while being built in float32 to be cast afterwards."""
    import torch

    with torch.random.fork_rng(devices=[]), torch.device(device), default_dtype(dtype or torch.float32):
        torch.manual_seed(seed)
        yield


@contextlib.contextmanager
def default_dtype(dtype):
    """torch's default floating dtype inside the block (new parameters and buffers get it)."""
    import torch

    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def scheduler(class_name: str, **config):
    """A diffusers scheduler, always on the CPU in float32 (its tables are tiny; the pipeline moves what it needs,
    and its sigmas must not lose precision to a half-precision build)."""
    import diffusers
    import torch

    with torch.device("cpu"), default_dtype(torch.float32):
        return getattr(diffusers, class_name)(**config)


def place(pipeline, device: str, dtype):
    """Move a built pipeline; float32 stays as built (a dtype cast there only adds diffusers warnings)."""
    import torch

    return pipeline.to(device) if dtype == torch.float32 else pipeline.to(device=device, dtype=dtype)


def expose_text_model(text_encoder) -> None:
    """Give a transformers 5 CLIP text encoder the `text_model` attribute diffusers' clip_skip path reads.

    transformers 5 flattened CLIPTextModel (its final LayerNorm moved from `text_model.final_layer_norm`
    to `final_layer_norm`), while diffusers 0.42 pipelines still read
    `text_encoder.text_model.final_layer_norm` whenever clip_skip is set (I2VGen-XL sets it by default).
    The alias is the model itself, kept out of the module registry so weights and saving are unchanged.
    """
    if not hasattr(text_encoder, "text_model"):
        object.__setattr__(text_encoder, "text_model", text_encoder)


def _byte_alphabet() -> list[str]:
    # GPT-2/CLIP byte-to-unicode table: every byte gets a printable character
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    extra = [b for b in range(256) if b not in printable]
    codes = printable + [256 + i for i in range(len(extra))]
    return [chr(c) for c in codes]


def clip_tokenizer():
    """A working CLIP tokenizer over single bytes (514 tokens): any text encodes, nothing is fetched."""
    from transformers import CLIPTokenizer

    chars = _byte_alphabet()
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": len(chars) + i for i, c in enumerate(chars)})
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)


def t5_tokenizer(model_max_length: int = 512):
    """A working T5/UMT5 tokenizer (448 pieces: the specials, 256 byte pieces, printable ASCII with and without the
    word-start mark): a Unigram with byte fallback, so any UTF-8 text encodes, nothing is fetched."""
    from tokenizers import Tokenizer, decoders, pre_tokenizers, processors
    from tokenizers.models import Unigram
    from transformers import T5Tokenizer

    # SentencePiece's word-start mark: each word begins with it, as a space would
    mark = "\u2581"
    # ids as T5 has them (pad 0, eos 1, unk 2); the scores make whole characters win over their bytes
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), (mark, -2.0)]
    pieces += [(f"<0x{b:02X}>", -10.0) for b in range(256)]
    ascii_chars = [chr(c) for c in range(33, 127)]
    pieces += [(c, -5.0) for c in ascii_chars] + [(mark + c, -4.0) for c in ascii_chars]
    unigram = Tokenizer(Unigram(pieces, unk_id=2, byte_fallback=True))
    words = dict(replacement=mark, prepend_scheme="always", split=True)
    split = pre_tokenizers.WhitespaceSplit()
    unigram.pre_tokenizer = pre_tokenizers.Sequence([split, pre_tokenizers.Metaspace(**words)])
    unigram.decoder = decoders.Sequence([decoders.ByteFallback(), decoders.Metaspace(**words)])
    unigram.post_processor = processors.TemplateProcessing(single=["$A", "</s>"], pair=["$A", "</s>", "$B", "</s>"],
                                                           special_tokens=[("</s>", 1)])
    return T5Tokenizer(tokenizer_object=unigram, vocab=pieces, extra_ids=0, model_max_length=model_max_length)


# the XXL encoders' shared shape, as their published config.json files have it
XXL = dict(d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64, relative_attention_num_buckets=32,
           relative_attention_max_distance=128, feed_forward_proj="gated-gelu")
# UMT5-XXL's encoder (Wan, SkyReels-V2) and T5-v1.1-XXL's (CogVideoX, LTX-Video) differ in vocabulary
UMT5_XXL = dict(vocab_size=256384, **XXL)
T5_XXL = dict(vocab_size=32128, **XXL)


def umt5_encoder(size: str, tokenizer):
    """A UMT5 text encoder: tiny, or UMT5-XXL's encoder with random weights ('random'); see `_text_encoder`."""
    from transformers import UMT5Config, UMT5EncoderModel

    return _text_encoder(size, tokenizer, UMT5Config, UMT5EncoderModel, UMT5_XXL)


def t5_encoder(size: str, tokenizer):
    """A T5 text encoder: tiny, or T5-v1.1-XXL's encoder with random weights ('random'); see `_text_encoder`."""
    from transformers import T5Config, T5EncoderModel

    return _text_encoder(size, tokenizer, T5Config, T5EncoderModel, T5_XXL)


def _text_encoder(size: str, tokenizer, config_class, model_class, published: dict):
    """A T5-style encoder in eval mode (its dropout would make runs differ): tiny (d_model 32, the shape of
    diffusers' test encoder) or the `published` shape."""
    ids = dict(pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    if size == "tiny":
        config = config_class(vocab_size=len(tokenizer), d_model=32, d_kv=8, d_ff=37, num_layers=2, num_heads=4,
                              relative_attention_num_buckets=8, **ids)
    elif size == "random":
        config = config_class(**published, **ids)
    else:
        raise ValueError(f"size={size!r}: must be 'tiny' or 'random'")
    return model_class(config).eval()


# full-size CLIP text encoders of the published checkpoints
TEXT_TOWERS = {
    # SD1.5, SDXL's first
    "vit-l": dict(hidden_size=768, intermediate_size=3072, num_attention_heads=12, num_hidden_layers=12,
                  projection_dim=768, hidden_act="quick_gelu"),
    # OpenCLIP ViT-H/14 less its last layer: SD2, ModelScope, I2VGen-XL
    "vit-h": dict(hidden_size=1024, intermediate_size=4096, num_attention_heads=16, num_hidden_layers=23,
                  projection_dim=512, hidden_act="gelu"),
    # OpenCLIP ViT-bigG/14: SDXL's second
    "bigg": dict(hidden_size=1280, intermediate_size=5120, num_attention_heads=20, num_hidden_layers=32,
                 projection_dim=1280, hidden_act="gelu"),
}


def clip_text_encoder(size: str, tokenizer, tower: str = "vit-l", with_projection: bool = False):
    """A CLIP text model: tiny, or the full-size `tower` of TEXT_TOWERS (with its projection if asked)."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    ids = dict(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
               pad_token_id=tokenizer.pad_token_id)
    if size == "tiny":
        config = CLIPTextConfig(hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=5,
                                vocab_size=1000, projection_dim=32, **ids)
    else:
        config = CLIPTextConfig(vocab_size=49408, **TEXT_TOWERS[tower], **ids)
    return (CLIPTextModelWithProjection if with_projection else CLIPTextModel)(config)


def clip_image_encoder(size: str):
    """CLIP vision model with projection: tiny (224 px input, as SVD resizes to 224), or ViT-H/14."""
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    if size == "tiny":
        config = CLIPVisionConfig(hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2,
                                  image_size=224, patch_size=32, projection_dim=32)
    else:
        config = CLIPVisionConfig(hidden_size=1280, intermediate_size=5120, num_attention_heads=16,
                                  num_hidden_layers=32, image_size=224, patch_size=14, projection_dim=1024,
                                  hidden_act="gelu")
    return CLIPVisionModelWithProjection(config)


def clip_image_processor():
    from transformers import CLIPImageProcessor

    return CLIPImageProcessor(crop_size=224, size=224)


def sd_vae(size: str):
    """Stable Diffusion's image VAE (4 blocks, 8x downsampling) in either size."""
    from diffusers import AutoencoderKL

    four = ["DownEncoderBlock2D"] * 4, ["UpDecoderBlock2D"] * 4
    if size == "tiny":
        return AutoencoderKL(block_out_channels=(8, 16, 16, 16), down_block_types=four[0], up_block_types=four[1],
                             layers_per_block=1, latent_channels=4, norm_num_groups=4)
    return AutoencoderKL(block_out_channels=(128, 256, 512, 512), down_block_types=four[0], up_block_types=four[1],
                         layers_per_block=2, latent_channels=4, sample_size=512)


def sd15_unet(size: str, in_channels: int = 4):
    """Stable Diffusion 1.5's UNet2DConditionModel, or a tiny one of the same layout."""
    from diffusers import UNet2DConditionModel

    if size == "tiny":
        return UNet2DConditionModel(block_out_channels=(32, 64), layers_per_block=2, sample_size=32,
                                    in_channels=in_channels, out_channels=4, norm_num_groups=2, cross_attention_dim=32,
                                    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"))
    return UNet2DConditionModel(sample_size=64, in_channels=in_channels, out_channels=4, cross_attention_dim=768,
                                attention_head_dim=8, block_out_channels=(320, 640, 1280, 1280), layers_per_block=2)


def llama_tokenizer(model_max_length: int = 4096):
    """A working Llama tokenizer (355 tokens: the specials, 256 byte pieces, printable ASCII, the word-start mark):
    a BPE without merges and with byte fallback, so any UTF-8 text encodes, nothing is fetched. Padded on the
    right, as HunyuanVideo's template prefix is cropped from the left of the encoded sequence."""
    from transformers import LlamaTokenizer

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, "<pad>": 3, "\u2581": 4}
    vocab.update({f"<0x{b:02X}>": len(vocab) + b for b in range(256)})
    vocab.update({chr(c): len(vocab) + i for i, c in enumerate(range(33, 127))})
    # an argument, not an attribute set afterwards: only the arguments are saved with a checkpoint
    return LlamaTokenizer(vocab=vocab, merges=[], pad_token="<pad>", padding_side="right",
                          model_max_length=model_max_length)


# llava-llama-3-8b's language model (HunyuanVideo's text tower), as its published config.json has it
LLAVA_LLAMA3_8B = dict(vocab_size=128320, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                       num_attention_heads=32, num_key_value_heads=8, rms_norm_eps=1e-5, rope_theta=500000.0,
                       max_position_embeddings=8192)


def llama_config(size: str, tokenizer):
    """A Llama text tower's config: tiny (hidden 16; three layers, so the hidden state two below the last, which
    HunyuanVideo reads, has passed through one), or llava-llama-3-8b's ('random')."""
    from transformers import LlamaConfig

    ids = dict(pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
               eos_token_id=tokenizer.eos_token_id)
    if size == "tiny":
        return LlamaConfig(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=37, num_hidden_layers=3,
                           num_attention_heads=4, num_key_value_heads=2, hidden_act="gelu", **ids)
    if size == "random":
        return LlamaConfig(**LLAVA_LLAMA3_8B, **ids)
    raise ValueError(f"size={size!r}: must be 'tiny' or 'random'")


def llama_text_encoder(size: str, tokenizer):
    """A Llama text tower (LlamaModel) in eval mode, of `llama_config`'s size, with random weights."""
    from transformers import LlamaModel

    return LlamaModel(llama_config(size, tokenizer)).eval()
