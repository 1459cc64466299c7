"""Model families, one adapter file each: a module here that defines `FAMILIES = (...)` is registered.

Adding a family is one file; nothing else changes.
"""
import importlib
import pkgutil

from .base import Defaults, Family, Param


def _discover() -> dict[str, Family]:
    found: dict[str, Family] = {}
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{__name__}.{info.name}")
        for family in getattr(module, "FAMILIES", ()):
            found[family.name] = family
    return found


FAMILIES: dict[str, Family] = _discover()

__all__ = ["FAMILIES", "Defaults", "Family", "Param"]
