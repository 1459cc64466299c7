"""Loading a model: a preset built in its target dtype, or a checkpoint folder or hub id read with safetensors
only, then prepared for rendering (offload, the denoiser seam)."""
from __future__ import annotations

from pathlib import Path

from . import denoiser
from .catalog import read_model_config, resolve_model
from .errors import UnsafeCheckpoint
from .model import Model
from .options import LoadOptions


def absent_components(location: str) -> dict:
    """Components a checkpoint was saved without (null in model_index.json), passed as None.

    Some pipelines (Text2Video-Zero) declare no optional components, so from_pretrained refuses a folder
    saved without, say, a safety checker unless it is told so explicitly."""
    index = read_model_config(location, "")
    return {name: None for name, value in index.items()
            if not name.startswith("_") and isinstance(value, list) and value[:1] == [None]}


PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")


def refuse_pickle_weights(location: str) -> None:
    """Raise UnsafeCheckpoint when a folder of the checkpoint holds pickle weights and no safetensors: loading
    them unpickles, which can run code. A hub id needs no look: from_pretrained(use_safetensors=True) fetches
    safetensors only and fails without them."""
    folder = Path(location).expanduser()
    if not folder.is_dir():
        return
    pickled = {path.parent for path in folder.rglob("*") if path.suffix in PICKLE_SUFFIXES}
    only = sorted(str(part.relative_to(folder)) for part in pickled if not any(part.glob("*.safetensors")))
    if only:
        raise UnsafeCheckpoint(f"{location}: safetensors only, and {', '.join(only)} hold(s) only pickle weights "
                               "(.bin/.pt), which can run code when loaded. Convert them to safetensors, or pass "
                               "--allow-pickle (allow_pickle=True) if you trust this checkpoint")


def load(model: str, device: str = "cpu", options: LoadOptions | None = None) -> Model:
    """Load a preset, a local folder or a hub id onto `device` (the family's half precision on CUDA, float32 on
    the CPU), as
    `options` say (see LoadOptions: CPU offload, compilation, the CUDA dtype, pickle weights, attention)."""
    import torch

    options = options or LoadOptions()
    spec = resolve_model(model)
    dtype = getattr(torch, options.dtype or spec.family.cuda_dtype) if device.startswith("cuda") else torch.float32
    build_on = "cpu" if options.cpu_offload else device
    if spec.source == "checkpoint":
        import diffusers

        if not options.allow_pickle:
            refuse_pickle_weights(spec.location)
        cls = getattr(diffusers, spec.family.pipeline_class)
        safetensors = None if options.allow_pickle else True
        pipeline = cls.from_pretrained(spec.location, torch_dtype=dtype, use_safetensors=safetensors,
                                       **absent_components(spec.location)).to(build_on)
    else:
        pipeline = spec.family.build(spec.source, build_on, dtype)
    spec.family.prepare_pipeline(pipeline)
    if options.cpu_offload:
        pipeline.enable_model_cpu_offload(device=device)
    denoiser.prepare(pipeline, options, step_cache=spec.family.step_cache)
    return Model(spec, pipeline, device, offloaded=options.cpu_offload)
