"""What a row's `params` may hold: the Param checker and the keys every family shares (schedulers, memory
options, the step cache, long-row chunking, FreeInit)."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

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
class Param:
    """One allowed `params` key: its type and the values it may take."""

    kind: type
    help: str
    choices: tuple = ()
    minimum: float | None = None
    maximum: float | None = None
    # for kind dict: the allowed keys, all optional
    fields: Mapping[str, Param] | None = None

    def check(self, key: str, value: Any) -> Any:
        column = f"params.{key}"
        if self.kind is dict:
            return self._check_fields(key, value)
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

    def _check_fields(self, key: str, value: Any) -> dict:
        # {"free_init": true}: the pipeline's own defaults
        if value is True:
            return {}
        # {"free_init": false}: off, as when absent
        if value is False:
            return None
        if not isinstance(value, dict):
            raise RowRejected(f"params.{key}", value, "must be true or an object of " + ", ".join(self.fields))
        unknown = [k for k in value if k not in self.fields]
        if unknown:
            raise RowRejected(f"params.{key}.{unknown[0]}", value[unknown[0]],
                              f"not an option of {key} (allowed: {', '.join(self.fields)})")
        return {k: self.fields[k].check(f"{key}.{k}", v) for k, v in value.items()}


FREE_INIT = Param(dict, "FreeInit: re-initialise low frequencies over num_iters denoising passes (true or options)",
                  # enable_free_init's arguments; diffusers implements only these three filters
                  fields={
                      "method": Param(str, "low-pass filter", choices=("butterworth", "gaussian", "ideal")),
                      "num_iters": Param(int, "rounds (each one is a full denoising pass)", minimum=1, maximum=10),
                      "use_fast_sampling": Param(bool, "coarse-to-fine: fewer steps in the early rounds"),
                      "order": Param(int, "butterworth filter order", minimum=1),
                      "spatial_stop_frequency": Param(float, "spatial cut-off", minimum=0.0, maximum=1.0),
                      "temporal_stop_frequency": Param(float, "temporal cut-off", minimum=0.0, maximum=1.0),
                  })


# renderer options: they change memory use and speed, not the pipeline's arguments
MEMORY_PARAMS = {
    "vae_slicing": Param(bool, "decode the VAE one frame/image at a time"),
    "vae_tiling": Param(bool, "decode the VAE in tiles (large frames)"),
    "forward_chunking": Param(int, "run the UNet's feed-forward layers in chunks of this size", minimum=1),
    "vae_float32": Param(bool, "run the VAE in float32 on a GPU (slower; avoids float16 overflow to NaN)"),
}


STEP_CACHE = Param(int, "DeepCache: all of the UNet but its shallowest layers runs on 1 step of every N and is "
                   "reused in between (faster; frames close to, not equal to, the uncached ones)",
                   minimum=2, maximum=10)


def chunk_params(modes: tuple[str, ...]) -> dict[str, Param]:
    """Renderer options of long rows (more frames than the window), for every family."""
    return {
        "chunk_mode": Param(str, "how the chunks of a long row are tied together: anchored (independent, in "
                            "parallel on any actor) or chain (image-to-video: each chunk starts from the last)",
                            choices=modes),
        "chunk_window": Param(int, "frames per chunk (default: the model's native window)", minimum=2),
        "chunk_overlap": Param(int, "frames neighbouring chunks share, blended (default: a quarter of the window "
                               "when anchored, 1 when chained)", minimum=0),
    }
