"""Speed options of the denoiser: a step cache (DeepCache) and its compilation.

The step cache follows DeepCache (Ma et al., 2023): the deep features of a UNet change little from one
denoising step to the next, so for `interval - 1` steps out of every `interval` only the shallow ends of the
UNet run (its first down block and last up block, with the convolutions around them), and every deeper
block hands back what it computed at the last full step. The skip connection of the first down block stays
fresh, which is why the output stays close to the uncached one (BENCHMARKS.md measures how close, as PSNR).

Blocks are wrapped once, when the pipeline is prepared; the cache is off (a pass-through) unless a row asks for
it, and is reset before every render so nothing crosses rows or chunks. Which steps reuse is decided on the
host from a step counter, so the step loop never waits for the GPU.
"""
from __future__ import annotations


class StepCache:
    def __init__(self, unet):
        self.interval = None  # None: off
        self.step = 0
        self.reuse = False
        deep = (*unet.down_blocks[1:], unet.mid_block, *unet.up_blocks[:-1])
        # deep block -> its output at the last full step. Its keys never change: a compiled UNet's graph is
        # specialised on them, and every full step must match the same graph
        self.outputs: dict = dict.fromkeys(deep)
        for block in deep:
            block.forward = self._cached(block, block.forward)
        unet.register_forward_pre_hook(self._before_step)

    def reset(self, interval: int | None) -> None:
        """Before a render: the row's interval (None: off), starting with a full step."""
        self.interval, self.step, self.reuse = interval, 0, False
        self.outputs.update(dict.fromkeys(self.outputs))  # the last row's features are let go

    def _before_step(self, unet, args) -> None:
        self.reuse = bool(self.interval) and self.step % self.interval != 0
        self.step += 1

    def _cached(self, block, forward):
        def run(*args, **kwargs):
            if self.reuse:
                return self.outputs[block]
            out = forward(*args, **kwargs)
            if self.interval:
                self.outputs[block] = out
            return out
        return run


def compile_denoiser(unet) -> None:
    """torch.compile the UNet's forward into one graph, fused across its blocks (no family's UNet breaks it).
    Module hooks stay outside the graph, so the step cache's choice of step (made in its pre-hook) is a plain
    Python value the graph is specialised on: a row with the cache compiles two more graphs once (a full step
    that keeps the deep features, a step that reuses them), and never waits for the GPU to decide."""
    import torch

    unet.forward = torch.compile(unet.forward)
