"""The denoiser seam: outside the family files, the only code that names a pipeline's denoiser.

A video pipeline denoises with a UNet (`pipeline.unet`) or a diffusion transformer (`pipeline.transformer`, and
Wan 2.2's second expert `pipeline.transformer_2`, which takes over for the low-noise steps). What the renderer
does to a denoiser goes through here: its dtype, compilation, the step caches (DeepCache on a UNet, diffusers'
cache hooks on a transformer), feed-forward chunking and the attention backend. Which kind a pipeline has is
read from the attribute it is found under, never guessed from its class; what differs between families is
declared by the family (`Family.step_cache`, `Family.caches`) or by diffusers' model class (`_repeated_blocks`).
"""
from __future__ import annotations

from .options import LoadOptions

UNET = "unet"
# a pipeline's denoisers, under the names diffusers' pipelines give them
DENOISERS = (UNET, "transformer", "transformer_2")


def denoisers(pipeline) -> dict:
    """The pipeline's denoisers by attribute name: its UNet, or its transformer(s)."""
    found = {name: getattr(pipeline, name, None) for name in DENOISERS}
    found = {name: module for name, module in found.items() if module is not None}
    if not found:
        raise TypeError(f"{type(pipeline).__name__} has no denoiser (none of {', '.join(DENOISERS)})")
    return found


def primary(pipeline):
    """The denoiser every step starts with: the UNet, or the (high-noise) transformer."""
    return next(iter(denoisers(pipeline).values()))


def dtype(pipeline):
    """The dtype the denoiser computes in (the pipelines hand the VAE latents of this dtype)."""
    return primary(pipeline).dtype


def prepare(pipeline, options: LoadOptions, step_cache: bool) -> None:
    """Once, when a pipeline is loaded: the attention backend, the step cache where the family offers one, and
    compilation last (it compiles what the others set up)."""
    if options.attention_backend is not None:
        set_attention_backend(pipeline, options.attention_backend)
    if step_cache:
        attach_step_cache(pipeline)
    if options.compile:
        compile_denoisers(pipeline)


def set_attention_backend(pipeline, backend: str) -> None:
    """diffusers' attention dispatch backend (e.g. "native", "flash", "sage") on every denoiser; attention
    processors that do not go through the dispatcher (most UNets') keep theirs."""
    for module in denoisers(pipeline).values():
        module.set_attention_backend(backend)


def compile_denoisers(pipeline) -> None:
    """torch.compile each denoiser.

    A UNet compiles as one graph, fused across its blocks (no family's UNet breaks it). Module hooks stay outside
    the graph, so the step cache's choice of step (made in its pre-hook) is a plain Python value the graph is
    specialised on: a row with the cache compiles two more graphs once, and never waits for the GPU to decide.
    A transformer whose class declares its repeated blocks compiles those alone (diffusers' regional compile:
    one graph serves every block, so compiling takes seconds, not minutes); any other compiles as one graph."""
    import torch

    for name, module in denoisers(pipeline).items():
        if name != UNET and getattr(module, "_repeated_blocks", None):
            module.compile_repeated_blocks()
        else:
            module.forward = torch.compile(module.forward)


def attach_step_cache(pipeline) -> None:
    """A UNet gets DeepCache's step cache (see step_cache.py), off until a row asks for it. A transformer gets
    nothing here: its caches are diffusers' own (`enable_cache`), switched per row."""
    from .step_cache import StepCache

    unet = denoisers(pipeline).get(UNET)
    if unet is not None:
        unet.step_cache = StepCache(unet)


def set_step_cache(pipeline, interval: int | None) -> None:
    """Before a render: the row's step cache interval (None: off). A denoiser without a cache (a second-stage
    upscaler's) runs uncached."""
    for module in denoisers(pipeline).values():
        cache = getattr(module, "step_cache", None)
        if cache is not None:
            cache.reset(interval)


def set_cache(pipeline, cache: dict | None, steps: int, frame_axis: int | None) -> None:
    """Before a call: the row's transformer cache (`params.cache`; None: off) on every transformer of the
    pipeline (both of Wan 2.2's experts), applied afresh so no state crosses from one call to the next."""
    from .transformer_cache import cache_config, set_transformer_cache

    for name, module in denoisers(pipeline).items():
        if name != UNET:
            config = None if cache is None else cache_config(pipeline, cache, steps, frame_axis)
            set_transformer_cache(module, config)


def has_transformer(pipeline) -> bool:
    """Whether the pipeline denoises with a diffusion transformer (which can be offloaded block by block)."""
    return UNET not in denoisers(pipeline)


def offload_groups(pipeline, device: str) -> None:
    """Every transformer's blocks wait on the CPU and move to `device` one at a time as they run (diffusers' group
    offloading, with the next block's copy overlapping the current block's work on CUDA): a large transformer's
    memory shrinks to a block's, while the rest of the pipeline stays where it is."""
    import torch

    for name, module in denoisers(pipeline).items():
        if name != UNET:
            module.enable_group_offload(onload_device=torch.device(device), offload_device=torch.device("cpu"),
                                        offload_type="block_level", num_blocks_per_group=1,
                                        use_stream=device.startswith("cuda"))


def restore_groups(pipeline, device: str) -> None:
    """Undo `offload_groups`: the transformers' offloading hooks removed, their weights back whole on `device`."""
    from diffusers.hooks import HookRegistry
    from diffusers.hooks.group_offloading import _GROUP_OFFLOADING, _LAZY_PREFETCH_GROUP_OFFLOADING

    for name, module in denoisers(pipeline).items():
        if name != UNET:
            registry = HookRegistry.check_if_exists_or_initialize(module)
            for hook in (_LAZY_PREFETCH_GROUP_OFFLOADING, _GROUP_OFFLOADING):
                registry.remove_hook(hook, recurse=True)
            module.to(device)


def set_forward_chunking(pipeline, chunk_size: int | None) -> None:
    """Feed-forward layers in chunks of `chunk_size` (None: off) on every block that offers it, in every
    denoiser: UNets' transformer blocks and diffusion transformers' blocks alike."""
    for denoiser in denoisers(pipeline).values():
        for module in denoiser.modules():
            if hasattr(module, "set_chunk_feed_forward"):
                module.set_chunk_feed_forward(chunk_size=chunk_size, dim=1 if chunk_size else 0)
