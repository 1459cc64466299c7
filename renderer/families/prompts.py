"""Prompt encoding, once per row on each actor, for pipelines whose `encode_prompt` signatures differ.

A long row's chunks share its prompt, so the text encoder runs once per row on each actor and every chunk that
actor renders reuses the embeddings. What differs between pipelines is only how `encode_prompt` is called and
which call arguments take its results; a family names its encoder (`Family.prompt_encoder`), one of these.
"""
from __future__ import annotations

import inspect
import json
import weakref
from collections.abc import Callable

# a loaded pipeline -> (the key of the row it last encoded, the call arguments that hand its embeddings on)
_ENCODED = weakref.WeakKeyDictionary()


def clip_prompt_embeds(pipeline, request) -> dict:
    """Stable Diffusion's signature (AnimateDiff, ModelScope/Zeroscope, PIA, ...): a CLIP text tower, positional
    arguments, and `clip_skip`."""
    guided = request.guidance_scale > 1
    embeds, negative = pipeline.encode_prompt(request.prompt, pipeline._execution_device, 1, guided,
                                              request.negative_prompt, clip_skip=request.arguments.get("clip_skip"))
    return dict(prompt_embeds=embeds, negative_prompt_embeds=negative)


def t5_prompt_embeds(pipeline, request) -> dict:
    """The keyword signature of the T5/UMT5 pipelines (Wan, SkyReels-V2, CogVideoX): (embeddings, negative).

    Padded to as many tokens as the pipeline's own call pads to (the row's `max_sequence_length`, else the call's
    default), since the transformer attends to the padding too: Wan's call pads to 512 tokens, its encode_prompt
    alone to 226."""
    length = request.params.get("max_sequence_length", _call_default(pipeline, "max_sequence_length"))
    embeds, negative = pipeline.encode_prompt(
        prompt=request.prompt, negative_prompt=request.negative_prompt,
        do_classifier_free_guidance=request.guidance_scale > 1, device=pipeline._execution_device,
        max_sequence_length=length)
    return dict(prompt_embeds=embeds, negative_prompt_embeds=negative)


def _call_default(pipeline, name: str):
    """The default value of one of the pipeline call's keyword arguments."""
    return inspect.signature(type(pipeline).__call__).parameters[name].default


def prompt_embeds_once(pipeline, request, encode: Callable = clip_prompt_embeds) -> dict:
    """Call arguments that hand a row's prompt embeddings to the pipeline, encoded by `encode` only when the
    pipeline's last encoded row differs in text, guidance or params (a row's chunks never do)."""
    key = (encode, request.prompt, request.negative_prompt, request.guidance_scale > 1,
           json.dumps(request.params, sort_keys=True, default=str))
    cached = _ENCODED.get(pipeline)
    if cached is None or cached[0] != key:
        import torch

        with torch.no_grad():
            cached = _ENCODED[pipeline] = (key, encode(pipeline, request))
    return dict(prompt=None, negative_prompt=None, **cached[1])
