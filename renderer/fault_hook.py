"""The one hook through which production code meets fault injection (renderer/testing/faults.py).

Reliability tests make GPU and process faults happen on a CPU by setting RENDER_FAULTS. Unset (always, outside
those tests), `strike` hands its value back untouched and nothing of the testing package is imported.
"""
from __future__ import annotations

import os

# what the driver hands on to its actors and encode tasks
VARIABLES = ("RENDER_FAULTS", "RENDER_FAULTS_LOG")


def strike(point: str, row_id: str, value=None, done: float = 1.0):
    """At `point` of row `row_id`'s work ("render", "output", "encode", "metadata"; `done`: the share of a
    write made so far): `value` (the pipeline's frames at "output"), unless a configured fault acts first."""
    if not os.environ.get("RENDER_FAULTS"):
        return value
    from .testing import faults

    return faults.strike(point, row_id, value, done)


def runtime_env() -> dict:
    """Ray options that pass the fault variables on to workers; empty when no fault is configured."""
    env = {name: os.environ[name] for name in VARIABLES if name in os.environ}
    return {"runtime_env": {"env_vars": env}} if env else {}
