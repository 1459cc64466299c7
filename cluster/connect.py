"""Connecting the driver to Ray."""
from __future__ import annotations

import os


def connect(address: str | None, actors: int | None = None) -> None:
    """Join the cluster at `address`, or start an embedded local Ray sized for this machine."""
    import ray

    if ray.is_initialized():
        return
    quiet = dict(log_to_driver=True, configure_logging=True, logging_level="WARNING")
    if address:
        ray.init(address=address, **quiet)
        return
    # every CPU actor reserves a CPU slot; never declare fewer slots than requested actors
    cpus = max(os.cpu_count() or 1, actors or 1)
    # "local": a new Ray of its own, even where another Ray on this machine is recorded as the current one
    ray.init(address="local", num_cpus=cpus, include_dashboard=False, **quiet)
