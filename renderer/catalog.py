"""Which model a row names, and loading it: presets, local folders and hub ids.

`resolve_model` only reads small JSON files, so the driver can validate rows without weights or
torch; `load` builds or loads the pipeline on the actor.
"""
from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass
from pathlib import Path

from .errors import RowRejected
from .families.base import Defaults, Family
from .families.registry import FAMILIES, PRESETS

PRESET_SIZES = ("tiny", "random")
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
# where a checkpoint's components may come from: anything else in model_index.json names a module diffusers
# would import (a .py file in the folder, or any installed package), i.e. code the checkpoint brings along
COMPONENT_LIBRARIES = ("diffusers", "transformers")


@dataclass(frozen=True)
class ModelSpec:
    # as the row or --model wrote it
    name: str
    family: Family
    # "tiny", "random" or "checkpoint"
    source: str
    window: int
    defaults: Defaults
    # folder or hub id for checkpoints
    location: str = ""


def preset_names() -> list[str]:
    return [f"{size}-{preset}" for preset in PRESETS for size in PRESET_SIZES]


@functools.lru_cache(maxsize=256)
def resolve_model(name: str) -> ModelSpec:
    """Map a model name to its spec; raise RowRejected (column `model`) when it cannot be used."""
    size, _, preset = name.partition("-")
    if size in PRESET_SIZES and preset in PRESETS:
        family = PRESETS[preset]
        defaults = family.tiny_defaults if size == "tiny" else family.defaults
        return ModelSpec(name, family, size, family.window, defaults)
    family_name, sep, location = name.partition(":")
    # FAMILY:LOCATION picks the family explicitly
    if sep and family_name in FAMILIES:
        return _checkpoint_spec(name, location, FAMILIES[family_name])
    return _checkpoint_spec(name, name, None)


def _checkpoint_spec(name: str, location: str, family: Family | None) -> ModelSpec:
    if not Path(location).expanduser().is_dir() and not HUB_ID.match(location):
        raise RowRejected("model", name, f"not a preset ({', '.join(preset_names())}), "
                          "an existing folder or a hub id of the form owner/name (optionally as FAMILY:LOCATION)")
    read_config = functools.partial(read_model_config, location)
    try:
        index = read_config("")
    except Exception as exc:
        raise RowRejected("model", name, f"no readable model_index.json in the folder or hub repo "
                          f"({type(exc).__name__}: {exc})"[:300]) from None
    _refuse_custom_code(name, index)
    class_name = index.get("_class_name")
    if family is None:
        family = next((f for f in FAMILIES.values() if f.claims(index)), None)
        if family is None:
            supported = sorted({f.pipeline_class for f in PRESETS.values()})
            raise RowRejected("model", name, f"pipeline {class_name!r} is not supported (supported: "
                              f"{', '.join(supported)}; name a family explicitly as FAMILY:LOCATION)")
    elif class_name not in (family.pipeline_class, *family.compatible_classes):
        loadable = ", ".join((family.pipeline_class, *family.compatible_classes))
        raise RowRejected("model", name, f"family {family.name!r} cannot load a {class_name} checkpoint ({loadable})")
    family = family.for_checkpoint(index, read_config)
    window = family.window_from_checkpoint(read_config)
    defaults = Defaults(**{**family.defaults.__dict__, "num_frames": window})
    return ModelSpec(name, family, "checkpoint", window, defaults, location=location)


def _refuse_custom_code(name: str, index: dict) -> None:
    """A checkpoint is data: a custom pipeline class or a component from outside diffusers and transformers
    would run the checkpoint's own code (diffusers imports it by name), so it is refused before any import."""
    class_name = index.get("_class_name")
    if not isinstance(class_name, str):
        raise RowRejected("model", name, f"model_index.json names a custom pipeline ({class_name!r}): code from a "
                          "checkpoint is never run; only diffusers' own pipeline classes load")
    for component, value in index.items():
        library = value[0] if isinstance(value, list) and value else None
        if not component.startswith("_") and library is not None and not _installed_library(library):
            raise RowRejected("model", name, f"model_index.json: component {component!r} comes from {library!r} "
                              f"({value!r}): code from a checkpoint is never run; components load only from "
                              f"{' and '.join(COMPONENT_LIBRARIES)}")


def _installed_library(library: str) -> bool:
    """diffusers or transformers, or one of diffusers' own pipeline modules, which model_index.json names bare
    (a safety checker comes from 'stable_diffusion', i.e. diffusers.pipelines.stable_diffusion)."""
    import importlib.util

    if library in COMPONENT_LIBRARIES:
        return True
    return library.isidentifier() and importlib.util.find_spec(f"diffusers.pipelines.{library}") is not None


def read_model_config(location: str, subfolder: str) -> dict:
    """model_index.json (subfolder '') or SUBFOLDER/config.json of a folder or hub id (HF_HUB_OFFLINE=1: cache only)."""
    filename = "model_index.json" if not subfolder else f"{subfolder}/config.json"
    folder = Path(location).expanduser()
    if folder.is_dir():
        return json.loads((folder / filename).read_text())
    from huggingface_hub import hf_hub_download

    return json.loads(Path(hf_hub_download(location, filename)).read_text())
