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
    # CogVideoX's own: DDIM and a DPM-Solver on its SNR-shifted v-prediction schedule
    "cogvideox_ddim": "CogVideoXDDIMScheduler",
    "cogvideox_dpm": "CogVideoXDPMScheduler",
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
    # for kind list: the type of its numbers and how many it holds (None: any number of them)
    item: type = float
    length: int | None = None

    def check(self, key: str, value: Any) -> Any:
        column = f"params.{key}"
        if self.kind is dict:
            return self._check_fields(key, value)
        if self.kind is list:
            return self._check_items(key, value)
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

    def _check_items(self, key: str, value: Any) -> list:
        count = f"{self.length} " if self.length else ""
        if not isinstance(value, list) or (self.length and len(value) != self.length) or not value:
            raise RowRejected(f"params.{key}", value, f"must be a list of {count}{self.item.__name__} numbers")
        return [Param(self.item, self.help, minimum=self.minimum, maximum=self.maximum).check(f"{key}[{i}]", v)
                for i, v in enumerate(value)]

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


@dataclass(frozen=True)
class CacheParam(Param):
    """`params.cache`: {"kind": K, ...} with K one of the family's cache kinds and the other keys the options of
    that kind's diffusers config (under diffusers' names)."""

    kinds: Mapping[str, Mapping[str, Param]] = None

    def check(self, key: str, value: Any) -> dict:
        if not isinstance(value, dict) or "kind" not in value:
            raise RowRejected(f"params.{key}", value, 'must be an object {"kind": K, ...} with K one of '
                              + ", ".join(self.kinds))
        kind = value["kind"]
        if kind not in self.kinds:
            unsupported = f" (diffusers cannot apply {kind} to this family)" if kind in CACHE_KINDS else ""
            raise RowRejected(f"params.{key}.kind", kind, f"must be one of {', '.join(self.kinds)}{unsupported}")
        options = Param(dict, self.help, fields=self.kinds[kind]).check(key, {k: v for k, v in value.items()
                                                                              if k != "kind"})
        if kind == "mag" and "mag_ratios" not in options and not options.get("calibrate"):
            raise RowRejected(f"params.{key}.mag_ratios", None, "required by MagCache (its ratios are the "
                              "checkpoint's own), unless calibrate is true (no skipping; the ratios are logged)")
        return {"kind": kind, **options}


_TIMESTEPS = Param(list, "timesteps (0-1000) between which it applies", item=int, length=2, minimum=-1,
                   maximum=1000)
_SKIP = Param(int, "reuse the attention of 1 block of every N", minimum=1)
# the options of each kind of diffusers' transformer caches (`enable_cache`), as their configs name them
CACHE_KINDS: dict[str, Mapping[str, Param]] = {
    "first_block": {
        "threshold": Param(float, "relative change of the first block's output below which the rest is reused",
                           minimum=0.0),
    },
    "taylorseer": {
        "cache_interval": Param(int, "steps between full computations", minimum=1),
        # diffusers extrapolates from the steps computed so far: with none computed first, the call fails
        "disable_cache_before_step": Param(int, "steps computed in full at the start (at least 1)", minimum=1),
        "disable_cache_after_step": Param(int, "steps from which every step is computed in full", minimum=0),
        "max_order": Param(int, "order of the Taylor extrapolation", minimum=0, maximum=4),
        "use_lite_mode": Param(bool, "extrapolate the blocks' outputs only"),
        "cache_identifiers": Param(list, "regular expressions (full match) of the module names whose outputs are "
                                   "extrapolated (default: the family's attention and feed-forward layers)",
                                   item=str),
        "skip_predict_identifiers": Param(list, "regular expressions of module names skipped outright", item=str),
    },
    "mag": {
        "threshold": Param(float, "accumulated error below which a step reuses the residual", minimum=0.0),
        "max_skip_steps": Param(int, "most consecutive steps skipped", minimum=1),
        "retention_ratio": Param(float, "fraction of the first steps never skipped", minimum=0.0, maximum=1.0),
        "mag_ratios": Param(list, "the checkpoint's magnitude ratios, one per step (interpolated)", minimum=0.0),
        "calibrate": Param(bool, "compute and log the ratios instead of skipping"),
    },
    "pab": {
        "spatial_attention_block_skip_range": _SKIP,
        "temporal_attention_block_skip_range": _SKIP,
        "cross_attention_block_skip_range": _SKIP,
        "spatial_attention_timestep_skip_range": _TIMESTEPS,
        "temporal_attention_timestep_skip_range": _TIMESTEPS,
        "cross_attention_timestep_skip_range": _TIMESTEPS,
    },
    "faster": {
        "spatial_attention_block_skip_range": _SKIP,
        "temporal_attention_block_skip_range": _SKIP,
        "spatial_attention_timestep_skip_range": _TIMESTEPS,
        "temporal_attention_timestep_skip_range": _TIMESTEPS,
        "low_frequency_weight_update_timestep_range": _TIMESTEPS,
        "high_frequency_weight_update_timestep_range": _TIMESTEPS,
        "alpha_low_frequency": Param(float, "weight of the low-frequency update", minimum=0.0),
        "alpha_high_frequency": Param(float, "weight of the high-frequency update", minimum=0.0),
        "unconditional_batch_skip_range": Param(int, "compute the unconditional batch 1 step of every N",
                                                minimum=1),
        "unconditional_batch_timestep_skip_range": _TIMESTEPS,
    },
}


def cache_param(kinds: tuple[str, ...]) -> CacheParam:
    """`params.cache` of a family whose transformer takes the cache `kinds` (see CACHE_KINDS)."""
    return CacheParam(dict, "the transformer's step cache (diffusers' enable_cache): {\"kind\": K, ...options}, "
                      "reset for every row; faster, frames close to the uncached ones", choices=kinds,
                      kinds={kind: CACHE_KINDS[kind] for kind in kinds})


def chunk_params(modes: tuple[str, ...]) -> dict[str, Param]:
    """Renderer options of long rows (more frames than the window), for every family."""
    return {
        "chunk_mode": Param(str, "how the chunks of a long row are tied together: anchored (independent, in "
                            "parallel on any actor), chain (image-to-video: each chunk starts from the last) or "
                            "keyframes (keyframes a window apart first, then every window between two of them, "
                            "all in parallel)", choices=modes),
        "chunk_window": Param(int, "frames per chunk (default: the model's native window)", minimum=2),
        "chunk_overlap": Param(int, "frames neighbouring chunks share, blended (default: a quarter of the window "
                               "when anchored, 1 when chained)", minimum=0),
    }
