"""A diffusion transformer's step cache: diffusers' own cache hooks (`enable_cache`), built from a row's
`params.cache` (checked on the driver by `families.params.CacheParam`).

The hooks hold state across the steps of one call (the residuals and features they reuse), so they are applied
afresh before every call: a row never starts from what the previous row left behind.
"""
from __future__ import annotations

# params.cache kinds -> diffusers' config classes
CONFIGS = {
    "first_block": "FirstBlockCacheConfig",
    "taylorseer": "TaylorSeerCacheConfig",
    "mag": "MagCacheConfig",
    "pab": "PyramidAttentionBroadcastConfig",
    "faster": "FasterCacheConfig",
}
# options given as lists in a row, as tuples in diffusers' configs
_RANGES = ("timestep_skip_range", "weight_update_timestep_range")


def cache_config(pipeline, cache: dict, steps: int, frame_axis: int | None):
    """The diffusers config of one `params.cache` value for a call of `steps` steps. The kinds that skip by
    timestep read the pipeline's current one; FasterCache needs the latents' layout (frames before channels or
    after)."""
    import diffusers

    options = {k: tuple(v) if k.endswith(_RANGES) else v for k, v in cache.items() if k != "kind"}
    kind = cache["kind"]
    if kind in ("pab", "faster"):
        options["current_timestep_callback"] = lambda: pipeline.current_timestep
    if kind == "faster":
        options["tensor_format"] = "BFCHW" if frame_axis == 0 else "BCFHW"
    if kind == "mag":
        options["num_inference_steps"] = steps
    return getattr(diffusers, CONFIGS[kind])(**options)


def set_transformer_cache(transformer, config) -> None:
    """The transformer's cache hooks removed, then applied anew from `config` (None: left uncached)."""
    if transformer.is_cache_enabled:
        transformer.disable_cache()
    if config is not None:
        transformer.enable_cache(config)
