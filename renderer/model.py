"""A loaded pipeline and the one code path that turns a row into frames."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from . import denoiser, fault_hook
from .catalog import ModelSpec
from .chunks import KEYFRAMES, colour_match, join_at_keyframes, keyframe_chunks, seam_metrics, stitch
from .dispatch import Dispatcher
from .errors import BadOutput
from .in_process import InProcessExecutor
from .inputs import load_image, load_video
from .request import RenderRequest, to_request


@dataclass
class Model:
    spec: ModelSpec
    pipeline: Any
    device: str
    # loaded with CPU offload
    offloaded: bool = False
    # what the last render needed to succeed (OOM, NaN)
    recoveries: list[str] = field(default_factory=list)
    # False for a gang's follower (see ray_gang.py): the leader's frames are the row's, so a follower's whole-row
    # render stops at the latents (its denoising must run: its collectives pair with the leader's)
    decodes: bool = True

    def __post_init__(self):
        self.pipeline.set_progress_bar_config(disable=True)
        self._base_scheduler = self.pipeline.scheduler

    def prompt_truncated(self, request: RenderRequest) -> bool | None:
        """Whether the text encoder sees only the start of the row's prompt (CLIP reads 77 tokens, and the
        pipeline drops the rest with no more than a log line); None for a row without a prompt."""
        tokenizer = getattr(self.pipeline, "tokenizer", None)
        if request.prompt is None or tokenizer is None:
            return None
        return len(tokenizer(request.prompt).input_ids) > tokenizer.model_max_length

    def render(self, row: dict | RenderRequest) -> np.ndarray:
        """Frames of one row as uint8 (frames, height, width, 3).

        A plain dict is validated exactly as a table row is (relative paths resolve against the working
        directory, the seed defaults to one derived from the id). A row longer than the model's window goes
        through the dispatcher's task graph (chunks, chains, the stitch) as in `render run`, each task rendered
        here in turn (in_process.py) instead of on actors spread over GPUs.
        """
        request = row if isinstance(row, RenderRequest) else to_request(
            {"id": "row", **row}, default_model=self.spec.name, table_dir=Path.cwd())
        if len(request.plan) == 1:
            return self.render_whole(request)
        executor, results = InProcessExecutor(self), []
        Dispatcher(executor, max_attempts=1, on_done=lambda _, outcome, __: results.append(outcome)).run([request])
        if executor.error is not None:
            raise executor.error
        return results[0].output

    def render_whole(self, request: RenderRequest) -> np.ndarray | None:
        """A row that fits the window: the plain diffusers call (None on a gang's follower, see `decodes`)."""
        image, video = self._inputs(request, request.num_frames)

        def frames(req):
            if not self.decodes:
                self.spec.family.generate(self.pipeline, req, image, video, self._configure(req), output_type="latent")
                return None
            out = self.spec.family.generate(self.pipeline, req, image, video, self._configure(req))
            return to_uint8(fault_hook.strike("output", req.id, out))
        return self._guarded(request, frames)

    def window_seams(self, request: RenderRequest, frames: np.ndarray) -> dict:
        """The seam metrics of a whole row whose one call renders windows in turn (see Family.call_windows), as a
        stitched row records its chunks'; none for a plain call."""
        windows = self.spec.family.call_windows(request)
        return seam_metrics(frames, windows) if len(windows) > 1 else {}

    def render_chunk(self, request: RenderRequest, index: int, previous=None, first=None) -> np.ndarray:
        """One chunk of a long row: uint8 frames, or float32 latents (frames first) where the family stitches
        latents. Chained chunks get the previous chunk's frames (this chunk starts from its frame at this
        chunk's start) and the first chunk's frames (their colours are matched to it); a window between
        keyframes gets its two keyframes (one frame each)."""
        if request.chunk_mode == KEYFRAMES:
            return self._render_between(request, index, previous, first)
        family, chunk = self.spec.family, request.plan[index]
        image, video = self._inputs(request, chunk.end)
        if previous is not None:
            from PIL import Image

            image = Image.fromarray(previous[chunk.start - request.plan[index - 1].start])

        def output(req):
            # reseeded per chunk: every chunk sees the row's own seed
            out = family.generate_chunk(self.pipeline, req, chunk, image, video, self._configure(req))
            out = fault_hook.strike("output", req.id, out)
            if family.stitches_latents(req):
                if not np.isfinite(out).all():
                    raise BadOutput("nan_output: the pipeline produced NaN or infinite latents")
                return out
            frames = to_uint8(out)
            return colour_match(frames, first) if first is not None else frames
        return self._guarded(request, output)

    def render_keyframe(self, request: RenderRequest, index: int, anchor=None) -> np.ndarray:
        """Keyframe `index` of a row rendered between keyframes, as uint8 frames (1, height, width, 3): the
        first is the row's own image where it has one, else one rendered frame; the last is the row's last_image
        where it has one; every other one is rendered conditioned on the first (`anchor`)."""
        from PIL import Image

        family = self.spec.family
        keyframes = keyframe_chunks(request.plan, family.layout)
        given = {0: ("image", request.image), len(keyframes) - 1: ("last_image", request.last_image)}.get(index)
        if given is not None and given[1] is not None:
            image = load_image(given[1], given[0]).resize((request.width, request.height), Image.Resampling.LANCZOS)
            return np.asarray(image)[None]
        keyframe = keyframes[index]
        first = None if anchor is None else Image.fromarray(anchor[0])

        def output(req):
            out = family.generate_keyframe(self.pipeline, req, keyframe, first, self._configure(req))
            return to_uint8(fault_hook.strike("output", req.id, out))
        return self._guarded(request, output)

    def _render_between(self, request: RenderRequest, index: int, start, end) -> np.ndarray:
        """Window `index` of a row rendered between keyframes: uint8 frames that begin on the `start` keyframe
        and end on the `end` one."""
        from PIL import Image

        family, chunk = self.spec.family, request.plan[index]
        first, last = Image.fromarray(start[0]), Image.fromarray(end[0])

        def output(req):
            out = family.generate_between(self.pipeline, req, chunk, first, last, self._configure(req))
            return to_uint8(fault_hook.strike("output", req.id, out))
        return self._guarded(request, output)

    def stitch(self, request: RenderRequest, parts: list) -> tuple[np.ndarray, dict]:
        """The chunks blended into exactly num_frames uint8 frames, and the seam metrics of the result."""
        family = self.spec.family
        if request.chunk_mode == KEYFRAMES:
            blended = join_at_keyframes(request.plan, parts)
        elif not family.stitches_latents(request):
            blended = stitch(request.plan, parts)
        else:
            latents = stitch(tuple(chunk.in_latents() for chunk in request.plan), parts)

            def decoded(req):
                # the row's VAE options
                self._configure(req)
                return np.concatenate([to_uint8(piece) for piece in family.decode(self.pipeline, req, latents)])
            blended = self._guarded(request, decoded)
        return blended, seam_metrics(blended, request.plan)

    def warm_up(self) -> None:
        """Render a synthetic two-step row of the model's default shape, so that a compiled denoiser is compiled
        for that shape before the first real row (families that need a source video are left to their first row)."""
        import io

        from PIL import Image

        family = self.spec.family
        if "video" in family.required:
            return
        row = {"id": "warm-up", "num_inference_steps": 2, "prompt": "warm-up" if "prompt" in family.required else None}
        png = io.BytesIO()
        Image.new("RGB", (self.spec.defaults.width, self.spec.defaults.height), (128, 110, 90)).save(png, "PNG")
        # a first-and-last-frame model needs both ends
        row.update({column: png.getvalue() for column in ("image", "last_image") if column in family.required})
        try:
            self.render_whole(to_request(row, default_model=self.spec.name))
        except BadOutput:
            # random weights may render black: the compiling is what counted
            pass

    def _guarded(self, request: RenderRequest, produce: Callable[[RenderRequest], np.ndarray]) -> np.ndarray:
        """`produce(request)` with the two recoveries a GPU render may need, each noted in `self.recoveries`:

        - out of memory: retried down a ladder of memory options (smaller VAE decodes, slicing and tiling,
          then group offloading of a transformer's blocks, then CPU offload), so a row that fits only with them
          still renders; the next row starts afresh;
        - NaN or black frames (fp16 overflow, mostly in the VAE): retried once with the VAE in float32, then
          the row fails `nan_output`, never retried again: the same weights give the same frames.
        """
        import torch

        self.recoveries = []
        rungs = memory_rungs(self.spec.family, request, self.device, self.offloaded,
                             transformer=denoiser.has_transformer(self.pipeline))
        # how the ladder moved the pipeline's weights for this row: None, "groups" or "cpu_offload"
        moved = None
        try:
            while True:
                try:
                    fault_hook.strike("render", request.id)
                    return produce(request)
                except torch.OutOfMemoryError:
                    if not rungs:
                        raise
                    rung = rungs.pop(0)
                    self.recoveries.append("out_of_memory: " + ", ".join(f"{k}={v}" for k, v in rung.items()))
                    self._free_memory()
                    moved = self._move_weights(rung, moved)
                    request = replace(request, options={**request.options, **rung})
                except BadOutput as exc:
                    if request.options.get("vae_float32"):
                        raise BadOutput(f"{exc} (again with the VAE in float32)") from None
                    self.recoveries.append(f"{str(exc).split(':')[0]}: vae_float32=True")
                    request = replace(request, options={**request.options, "vae_float32": True})
        finally:
            # the next row starts with the pipeline as it was loaded
            self._restore_weights(moved)

    def _move_weights(self, rung: dict, moved: str | None) -> str | None:
        """Apply a rung's offloading (popped from it): the transformers' blocks one at a time, or every sub-model
        waiting on the CPU; diffusers allows one of the two at a time."""
        if rung.pop("group_offload", False):
            denoiser.offload_groups(self.pipeline, self.device)
            return "groups"
        if rung.pop("cpu_offload", False):
            self._restore_weights(moved)
            self.pipeline.enable_model_cpu_offload(device=self.device)
            return "cpu_offload"
        return moved

    def _restore_weights(self, moved: str | None) -> None:
        if moved == "groups":
            denoiser.restore_groups(self.pipeline, self.device)
        elif moved == "cpu_offload":
            self.pipeline.remove_all_hooks()
            self.pipeline.to(self.device)

    def _free_memory(self) -> None:
        """Release what a failed attempt held before the next one allocates."""
        import gc

        import torch

        gc.collect()
        if self.device.startswith("cuda"):
            torch.cuda.empty_cache()

    def _inputs(self, request: RenderRequest, frames: int) -> tuple:
        """The row's image and the first `frames` frames of its video (None where the row gives none)."""
        image = load_image(request.image) if request.image is not None else None
        video = None if request.video is None else load_video(request.video, frames, request.width, request.height)
        return image, video

    def _configure(self, request: RenderRequest):
        """Set the row's pipeline state; return the generator seeded by the row's seed."""
        import torch

        self.spec.family.configure(self.pipeline, request, self._base_scheduler)
        return torch.Generator("cpu").manual_seed(request.seed)


def memory_rungs(family, request: RenderRequest, device: str, offloaded: bool = False,
                 transformer: bool = False) -> list[dict]:
    """The memory options tried in turn after an out-of-memory error, each rung adding to the last: the VAE
    decodes fewer frames at once (sliced), then one frame in tiles with the denoiser's feed-forward chunked, then
    (CUDA only) a diffusion transformer's blocks wait on the CPU and come one at a time (group offloading), then
    every sub-model waits on the CPU until it runs. Options a family lacks are left out."""
    allowed, params = family.allowed_params(), request.params
    decode = params.get("decode_chunk_size") or family.decode_chunk_default or request.num_frames
    rungs = [{"decode_chunk_size": decode // 2, "vae_slicing": True},
             {"decode_chunk_size": 1, "vae_tiling": True, "forward_chunking": 1}]
    rungs = [{k: v for k, v in rung.items() if k in allowed and params.get(k) != v
              and not (k == "decode_chunk_size" and not 1 <= v < decode)} for rung in rungs]
    if device.startswith("cuda") and not offloaded:
        # a diffusion transformer first offloads its own blocks (the rest stays on the GPU), then everything
        rungs += [{"group_offload": True}] if transformer else []
        rungs.append({"cpu_offload": True})
    return [rung for rung in rungs if rung]


def to_uint8(frames) -> np.ndarray:
    """Float frames in [0, 1] to uint8 (F, H, W, 3) on the host, rounded as diffusers' own image conversion
    rounds; bad frames never pass. A tensor (F, 3, H, W) is converted where it lies: from a GPU only the uint8
    frames cross to the host, a quarter of the float bytes, and the CPU does no per-pixel work while the GPU
    waits for the next row. A NumPy array (F, H, W, 3) (a pipeline with no tensor output) is converted as is."""
    import torch

    frames = frames.permute(0, 2, 3, 1) if torch.is_tensor(frames) else torch.from_numpy(frames)
    video = (frames.float() * 255).round().clamp(0, 255).to(torch.uint8)
    # one wait on the GPU
    finite, lit = torch.stack([torch.isfinite(frames).all(), video.amax() > 0]).tolist()
    if not finite:
        raise BadOutput("nan_output: the pipeline produced NaN or infinite values")
    if not lit:
        raise BadOutput("black_output: every frame is black")
    return video.contiguous().cpu().numpy()
