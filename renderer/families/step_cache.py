"""Speed options of the denoiser: a step cache (DeepCache) and compilation of its blocks.

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
        self.outputs: dict = {}  # deep block -> its output at the last full step
        for block in (*unet.down_blocks[1:], unet.mid_block, *unet.up_blocks[:-1]):
            block.forward = self._cached(block, block.forward)
        unet.register_forward_pre_hook(self._before_step)

    def reset(self, interval: int | None) -> None:
        """Before a render: the row's interval (None: off), starting with a full step."""
        self.interval, self.step, self.reuse = interval, 0, False
        self.outputs.clear()

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


def compile_blocks(unet) -> None:
    """torch.compile each block of the UNet (regional compilation): the blocks repeat, so this compiles far
    faster than the whole UNet, and the step cache can skip compiled blocks from plain Python."""
    import torch

    for block in (*unet.down_blocks, unet.mid_block, *unet.up_blocks):
        block.forward = torch.compile(block.forward)
