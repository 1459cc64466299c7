"""Typed options: how a model loads on an actor (`LoadOptions`).

Pure Python (no torch): the driver builds these while planning, and they travel to the actors as they are.
"""
from __future__ import annotations

from dataclasses import dataclass

DTYPES = ("float16", "bfloat16")


@dataclass(frozen=True, kw_only=True)
class LoadOptions:
    """How every actor of a run loads its model; the same for every row of that model."""

    # CUDA: each sub-model waits on the CPU until it runs (less GPU memory, slower)
    cpu_offload: bool = False
    # torch.compile the denoiser (slow first call per shape, faster after)
    compile: bool = False
    # CUDA weights and activations: "float16" or "bfloat16" (None: the family's); the CPU always runs float32
    dtype: str | None = None
    # let a checkpoint without safetensors load pickle weights (.bin): unpickling can run code
    allow_pickle: bool = False
    # the denoiser's attention backend, one of diffusers' names (e.g. "native", "flash"); None: its default
    attention_backend: str | None = None

    def __post_init__(self):
        if self.dtype not in (None, *DTYPES):
            raise ValueError(f"dtype={self.dtype!r}: must be one of {', '.join(DTYPES)}")
        if self.attention_backend is not None and not self.attention_backend.strip():
            raise ValueError("attention_backend: must name a backend, or be None for the model's default")
