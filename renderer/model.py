"""A loaded pipeline and the one code path that turns a row into frames."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import BadOutput
from .inputs import load_image, load_video
from .models import ModelSpec, read_model_config, resolve_model
from .request import RenderRequest, to_request


@dataclass
class Model:
    spec: ModelSpec
    pipeline: Any
    device: str

    def __post_init__(self):
        self.pipeline.set_progress_bar_config(disable=True)
        self._base_scheduler = self.pipeline.scheduler

    def render(self, row: dict | RenderRequest) -> np.ndarray:
        """Frames of one row as uint8 (frames, height, width, 3).

        A plain dict is validated exactly as a table row is (relative paths resolve against the working
        directory, the seed defaults to one derived from the id).
        """
        import torch

        request = row if isinstance(row, RenderRequest) else to_request(
            {"id": "row", **row}, default_model=self.spec.name, table_dir=Path.cwd())
        family = self.spec.family
        image = load_image(request.image) if request.image is not None else None
        video = None if request.video is None else load_video(
            request.video, request.num_frames, request.width, request.height)
        family.configure(self.pipeline, request, self._base_scheduler)
        generator = torch.Generator("cpu").manual_seed(request.seed)
        return to_uint8(np.asarray(family.generate(self.pipeline, request, image, video, generator)))


def to_uint8(frames: np.ndarray) -> np.ndarray:
    """[0, 1] floats to uint8 as diffusers' own image conversion does; bad frames never pass."""
    if not np.isfinite(frames).all():
        raise BadOutput("nan_output: the pipeline produced NaN or infinite values")
    video = (frames * 255).round().clip(0, 255).astype(np.uint8)
    if video.max() == 0:
        raise BadOutput("black_output: every frame is black")
    return video


def absent_components(location: str) -> dict:
    """Components a checkpoint was saved without (null in model_index.json), passed as None.

    Some pipelines (Text2Video-Zero) declare no optional components, so from_pretrained refuses a folder
    saved without, say, a safety checker unless it is told so explicitly."""
    index = read_model_config(location, "")
    return {name: None for name, value in index.items()
            if not name.startswith("_") and isinstance(value, list) and value[:1] == [None]}


def load(model: str, device: str = "cpu", *, cpu_offload: bool = False, compile: bool = False) -> Model:
    """Load a preset, a local folder or a hub id onto `device` (float16 on CUDA, float32 on the CPU).

    `cpu_offload` keeps each sub-model on the CPU until it runs (CUDA only: less GPU memory, slower);
    `compile` compiles the denoiser with torch.compile (slow first call per shape, faster after).
    """
    import torch

    spec = resolve_model(model)
    dtype = torch.float16 if device.startswith("cuda") else torch.float32
    build_on = "cpu" if cpu_offload else device
    if spec.source == "checkpoint":
        import diffusers

        cls = getattr(diffusers, spec.family.pipeline_class)
        pipeline = cls.from_pretrained(spec.location, torch_dtype=dtype, use_safetensors=True,
                                       **absent_components(spec.location)).to(build_on)
    else:
        pipeline = spec.family.build(spec.source, build_on, dtype)
    spec.family.prepare_pipeline(pipeline)
    if cpu_offload:
        pipeline.enable_model_cpu_offload(device=device)
    if compile:
        pipeline.unet.compile()
    return Model(spec, pipeline, device)
