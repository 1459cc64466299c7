"""Per-row pipeline state a family sets in `configure` (FreeInit, the VAE's dtype), the row's noise bank, and the
sibling pipelines a family's rows pick over one loaded pipeline's components."""
from __future__ import annotations

import weakref

# a loaded pipeline -> its sibling pipelines by class name
_SIBLINGS = weakref.WeakKeyDictionary()


def sibling_pipeline(pipeline, class_name: str, **config):
    """The loaded pipeline, or its sibling of diffusers' class `class_name` over the same components (built once
    per loaded pipeline, with `config`: the sibling's own init values such as Wan's boundary_ratio), holding the
    scheduler `configure` set on the loaded one for this row."""
    if type(pipeline).__name__ == class_name:
        return pipeline
    siblings = _SIBLINGS.setdefault(pipeline, {})
    if class_name not in siblings:
        import diffusers

        siblings[class_name] = getattr(diffusers, class_name)(**pipeline.components, **config)
        siblings[class_name].set_progress_bar_config(**getattr(pipeline, "_progress_bar_config", {}))
    sibling = siblings[class_name]
    sibling.scheduler = pipeline.scheduler
    return sibling


def set_free_init(pipeline, options: dict | None) -> None:
    """FreeInit on with the row's options, or off: set on every row so it never leaks into the next."""
    pipeline.enable_free_init(**options) if options is not None else pipeline.disable_free_init()


def frame_noise(seed: int, frames, shape: tuple):
    """The noise bank of a row: latent frame t's initial noise comes from its own CPU generator seeded by (seed, t),
    so the chunks that share a latent frame start it from identical noise, whichever actor renders them."""
    import torch

    out = []
    for t in frames:
        generator = torch.Generator("cpu").manual_seed((seed * 1_000_003 + t) % 2**63)
        out.append(torch.randn(shape, generator=generator))
    return torch.stack(out)


def keyed_seed(seed: int, key: str) -> int:
    """A seed of its own for one part of a row (a keyframe, a window), the same on any actor: where a pipeline
    draws its noise from the generator alone, parts of one row must not share the row's seed."""
    import hashlib

    digest = hashlib.sha256(f"{seed}\x00{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") & (2**63 - 1)


def set_vae_float32(vae, dtype, on: bool) -> None:
    """The VAE in float32 (`on`) or back in the pipeline's `dtype`. In float32 its inputs are cast on the way
    in, since the pipelines hand it latents in the denoiser's dtype."""
    import torch

    target = torch.float32 if on else dtype
    # moving is not free, and diffusers warns on every move
    if vae.dtype != target:
        vae.to(target)
    hooks = vae.__dict__.setdefault("_render_float32_hooks", [])
    if on and not hooks:
        for part in (vae.decoder, getattr(vae, "post_quant_conv", None)):
            if part is not None:
                hooks.append(part.register_forward_pre_hook(_inputs_to_float32, with_kwargs=True))
    elif not on:
        while hooks:
            hooks.pop().remove()


def _inputs_to_float32(module, args, kwargs):
    import torch

    cast = lambda v: v.float() if isinstance(v, torch.Tensor) and v.is_floating_point() else v  # noqa: E731
    return tuple(cast(a) for a in args), {k: cast(v) for k, v in kwargs.items()}
