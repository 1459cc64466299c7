"""The contract every model family adapter fulfils: one small base class, one file per family."""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Mapping

from ..errors import RowRejected

# diffusers scheduler classes a row may pick with params {"scheduler": NAME}
SCHEDULERS = {
    "ddim": "DDIMScheduler",
    "euler": "EulerDiscreteScheduler",
    "euler_ancestral": "EulerAncestralDiscreteScheduler",
    "dpm++": "DPMSolverMultistepScheduler",
    "pndm": "PNDMScheduler",
}


@dataclass(frozen=True)
class Defaults:
    num_frames: int
    height: int
    width: int
    num_inference_steps: int
    fps: int
    guidance_scale: float


@dataclass(frozen=True)
class Param:
    """One allowed `params` key: its type and the values it may take."""

    kind: type
    help: str
    choices: tuple = ()
    minimum: float | None = None
    maximum: float | None = None

    def check(self, key: str, value: Any) -> Any:
        column = f"params.{key}"
        if self.kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, self.kind) or (self.kind is not bool and isinstance(value, bool)):
            raise RowRejected(column, value, f"must be {self.kind.__name__}")
        if self.choices and value not in self.choices:
            raise RowRejected(column, value, f"must be one of {', '.join(map(str, self.choices))}")
        if self.minimum is not None and value < self.minimum:
            raise RowRejected(column, value, f"must be >= {self.minimum}")
        if self.maximum is not None and value > self.maximum:
            raise RowRejected(column, value, f"must be <= {self.maximum}")
        return value


@dataclass(frozen=True)
class Family(ABC):
    """A diffusers video pipeline as the renderer sees it.

    Subclasses build the pipeline (tiny or full-size with random weights) and map a validated
    request to the pipeline's own keyword arguments, keeping diffusers' argument names.
    """

    name: str
    pipeline_class: str
    inputs: tuple[str, ...]  # of "prompt", "image", "video"
    window: int  # frames one pipeline call renders natively
    defaults: Defaults
    tiny_defaults: Defaults
    params: Mapping[str, Param] = field(default_factory=dict)
    # diffusers arguments set through a typed column, so `params` may not set them again
    column_aliases: Mapping[str, str] = field(default_factory=dict)
    schedulers: tuple[str, ...] = ()
    checkpoints: tuple[str, ...] = ()

    def allowed_params(self) -> dict[str, Param]:
        allowed = dict(self.params)
        if self.schedulers:
            allowed["scheduler"] = Param(str, "denoising scheduler", choices=self.schedulers)
        return allowed

    def window_from_checkpoint(self, read_config) -> int:
        """The native window of a real checkpoint; `read_config(subfolder)` returns its config dict."""
        return self.window

    @abstractmethod
    def components(self, size: str) -> dict:
        """The pipeline's components with random weights: 'tiny' (CPU tests) or 'random' (published architecture)."""

    def build(self, size: str, device: str, dtype) -> Any:
        """The pipeline with seeded random weights, built directly on `device` (fast for full-size models)."""
        import diffusers

        from .components import place, seeded_build

        with seeded_build(device):
            parts = self.components(size)
        return place(getattr(diffusers, self.pipeline_class)(**parts), device, dtype)

    @abstractmethod
    def pipeline_kwargs(self, request, image) -> dict:
        """The diffusers call's keyword arguments for one request (without generator/output_type)."""

    def select_scheduler(self, pipeline, request, base_scheduler) -> None:
        """Give the pipeline the row's scheduler, built from the checkpoint's own scheduler config."""
        name = request.params.get("scheduler")
        if name is None:
            pipeline.scheduler = base_scheduler
            return
        import diffusers

        cls = getattr(diffusers, SCHEDULERS[name])
        pipeline.scheduler = cls.from_config(base_scheduler.config)
