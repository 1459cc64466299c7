"""A loaded pipeline and the one code path that turns a row into frames."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import BadOutput
from .images import load_image
from .models import ModelSpec, resolve_model
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

        A plain dict is validated exactly as a table row is (relative image paths resolve against the
        working directory, the seed defaults to one derived from the id).
        """
        import torch

        request = row if isinstance(row, RenderRequest) else to_request(
            {"id": "row", **row}, default_model=self.spec.name, table_dir=Path.cwd())
        family = self.spec.family
        image = load_image(request.image) if request.image is not None else None
        family.select_scheduler(self.pipeline, request, self._base_scheduler)
        kwargs = family.pipeline_kwargs(request, image)
        generator = torch.Generator("cpu").manual_seed(request.seed)
        frames = self.pipeline(**kwargs, generator=generator, output_type="np").frames[0]
        return to_uint8(np.asarray(frames))


def to_uint8(frames: np.ndarray) -> np.ndarray:
    """[0, 1] floats to uint8 as diffusers' own image conversion does; bad frames never pass."""
    if not np.isfinite(frames).all():
        raise BadOutput("nan_output: the pipeline produced NaN or infinite values")
    video = (frames * 255).round().clip(0, 255).astype(np.uint8)
    if video.max() == 0:
        raise BadOutput("black_output: every frame is black")
    return video


def load(model: str, device: str = "cpu") -> Model:
    """Load a preset, a local folder or a hub id onto `device` (float16 on CUDA, float32 on the CPU)."""
    import torch

    spec = resolve_model(model)
    dtype = torch.float16 if device.startswith("cuda") else torch.float32
    if spec.source == "checkpoint":
        import diffusers

        cls = getattr(diffusers, spec.family.pipeline_class)
        pipeline = cls.from_pretrained(spec.location, torch_dtype=dtype, use_safetensors=True).to(device)
    else:
        pipeline = spec.family.build(spec.source, device, dtype)
    return Model(spec, pipeline, device)
