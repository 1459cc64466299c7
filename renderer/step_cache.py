"""The step cache of a UNet denoiser (DeepCache), attached and reset through renderer/denoiser.py.

The step cache follows DeepCache (Ma et al., 2023): the deep features of a UNet change little from one
denoising step to the next, so for `interval - 1` steps out of every `interval` only the shallowest path of the
UNet runs, and everything deeper hands back what it computed at the last full step. The path is DeepCache's
shallowest branch (its default): conv_in, the first layer of the first down block, and the up layers that take
those two outputs as skip connections, then conv_out. Those skip connections stay fresh, which is why the output
stays close to the uncached one (BENCHMARKS.md measures how close, as PSNR).

Modules are wrapped once, when the pipeline is prepared; the cache is off (a pass-through) unless a row asks for
it, and is reset before every render so nothing crosses rows or chunks. Which steps reuse is decided on the
host from a step counter, so the step loop never waits for the GPU.
"""
from __future__ import annotations


class StepCache:
    def __init__(self, unet, deep: tuple | None = None):
        """`deep`: the modules a reusing step skips; default DeepCache's shallowest branch (`deep_modules`)."""
        # None: off
        self.interval = None
        self.step = 0
        self.reuse = False
        deep = deep_modules(unet) if deep is None else deep
        # deep module -> its output at the last full step. Its keys never change: a compiled UNet's graph is
        # specialised on them, and every full step must match the same graph
        self.outputs: dict = dict.fromkeys(deep)
        for module in deep:
            module.forward = self._cached(module, module.forward)
        unet.register_forward_pre_hook(self._before_step)

    def reset(self, interval: int | None) -> None:
        """Before a render: the row's interval (None: off), starting with a full step."""
        self.interval, self.step, self.reuse = interval, 0, False
        # the last row's features are let go
        self.outputs.update(dict.fromkeys(self.outputs))

    def _before_step(self, unet, args) -> None:
        self.reuse = bool(self.interval) and self.step % self.interval != 0
        self.step += 1

    def _cached(self, module, forward):
        def run(*args, **kwargs):
            if self.reuse:
                return self.outputs[module]
            out = forward(*args, **kwargs)
            if self.interval:
                self.outputs[module] = out
            return out
        return run


def deep_modules(unet) -> tuple:
    """What a reusing step skips: the first down block but its first layer, every deeper block, and the first
    layers of the last up block. That up block's layers take the down path's outputs as skip connections in
    reverse order, its last two taking the first layer's output and conv_in's: those two stay fresh.

    A layer is the i-th module of each of a block's lists (resnets, attentions, motion or temporal modules), which
    every family's UNet blocks share."""
    import torch

    first, last = unet.down_blocks[0], unet.up_blocks[-1]
    inner = [module for name, layers in first.named_children() if isinstance(layers, torch.nn.ModuleList)
             for module in (layers if name == "downsamplers" else layers[1:])]
    outer = [module for name, layers in last.named_children() if isinstance(layers, torch.nn.ModuleList)
             and name != "upsamplers" for module in layers[:len(last.resnets) - 2]]
    return (*inner, *unet.down_blocks[1:], unet.mid_block, *unet.up_blocks[:-1], *outer)
