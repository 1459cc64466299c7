"""One video on several devices: the members of a gang join one process group and shard the denoiser's
sequence between them (diffusers' context parallelism), each holding the whole pipeline.

Every member renders the same request with the same CPU-seeded generator; the transformer's context-parallel
hooks split its tokens across the members and gather its output on every member, so all of them end with the
same frames and the leader (rank 0) reports them. The process group is NCCL on CUDA and gloo on the CPU, where
Ulysses gives frames bit-identical to one process.
"""
from __future__ import annotations

import contextlib
import socket


def free_port() -> int:
    """A TCP port free on this node now, for the leader to offer its gang (every member runs on its node)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def join(rank: int, size: int, port: int, device: str, timeout_s: float) -> None:
    """Join the gang's process group at the leader's port on this node (NCCL on CUDA, gloo on the CPU); a collective
    waiting longer than `timeout_s` for a member fails instead of hanging."""
    from datetime import timedelta

    import torch.distributed as dist

    backend = "nccl" if device.startswith("cuda") else "gloo"
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=size,
                            timeout=timedelta(seconds=timeout_s))


def enable(pipeline, size: int, mode: str = "ulysses") -> dict:
    """Shard every transformer of the pipeline (both of Wan 2.2's experts) across the gang's `size` members, with
    diffusers' context-parallel plan of its class: `mode` "ulysses" (all-to-all over heads), "ring" (needs the
    attention's log-sum-exp: CUDA backends only) or "ulysses_anything" (token or head counts `size` does not
    divide). Once per process, after `join`. Returns each transformer's (ring, ulysses) degrees as enabled."""
    from diffusers import ContextParallelConfig

    from .denoiser import UNET, denoisers

    degree = {"ring_degree": size} if mode == "ring" else {"ulysses_degree": size}
    if mode == "ulysses_anything":
        _gather_uneven_shards_evenly()
    enabled = {}
    for name, module in denoisers(pipeline).items():
        if name == UNET or not getattr(module, "_cp_plan", None):
            raise ValueError(f"{type(module).__name__} has no context-parallel plan: it renders on one device")
        with _cpu_device_count():
            module.enable_parallelism(config=ContextParallelConfig(**degree,
                                                                   ulysses_anything=mode == "ulysses_anything"))
        config = module._parallel_config.context_parallel_config
        enabled[name] = (config.ring_degree, config.ulysses_degree)
    return enabled


@contextlib.contextmanager
def _cpu_device_count():
    """diffusers 0.42.1 places each rank on device `rank % torch.accelerator.device_count()`, a division by zero on a
    CPU-only torch: count the CPU as one device while parallelism is enabled (a GPU build is left alone)."""
    import torch

    if torch.accelerator.device_count() > 0:
        yield
        return
    count = torch.accelerator.device_count
    torch.accelerator.device_count = lambda: 1
    try:
        yield
    finally:
        torch.accelerator.device_count = count


def _gather_uneven_shards_evenly() -> None:
    """Ulysses-anything gathers shards of unequal length, which gloo's all_gather refuses (NCCL takes them): pad
    each shard to the longest, gather, and cut the padding off, for every backend alike."""
    import torch
    import torch.distributed as dist
    from diffusers.hooks import context_parallel
    from diffusers.models._modeling_parallel import gather_size_by_comm

    def gather(tensor, dim, group):
        tensor = tensor.contiguous()
        sizes = gather_size_by_comm(tensor.shape[dim], group)
        padding = list(tensor.shape)
        padding[dim] = max(sizes) - tensor.shape[dim]
        padded = torch.cat([tensor, tensor.new_zeros(padding)], dim=dim) if padding[dim] else tensor
        parts = [torch.empty_like(padded) for _ in sizes]
        dist.all_gather(parts, padded, group=group)
        return torch.cat([part.narrow(dim, 0, size) for part, size in zip(parts, sizes, strict=True)], dim=dim)

    # looked up as a module global when the hooks gather
    context_parallel._all_gather_anything = gather
