"""Batch video rendering with diffusers pipelines.

`renderer.load(model, device)` returns a `Model` whose `render(row)` gives uint8 frames; the Ray
actors of `render run` use exactly this. torch and diffusers are imported only when a model loads.
"""
from .errors import BadOutput, RowRejected, TableError

__all__ = ["load", "Model", "RowRejected", "TableError", "BadOutput"]


def __getattr__(name):
    if name == "load":
        from .loading import load

        return load
    if name == "Model":
        from .model import Model

        return Model
    raise AttributeError(name)
