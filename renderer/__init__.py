"""Batch video rendering with diffusers pipelines.

`renderer.load(model, device)` returns a `Model` whose `render(row)` gives uint8 frames; the Ray
actors of `render run` use exactly this. torch and diffusers are imported only when a model loads.
"""
from .errors import BadOutput, RowRejected, TableError

__all__ = ["load", "Model", "RowRejected", "TableError", "BadOutput"]


def __getattr__(name):
    if name in ("load", "Model"):
        from . import model

        return getattr(model, name)
    raise AttributeError(name)
