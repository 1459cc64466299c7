"""The contract every model family adapter fulfils: one small base class, one file per family."""
from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from .. import denoiser
from ..chunks import ANCHORED, FRAME_LAYOUT, Chunk, LatentLayout
from .params import MEMORY_PARAMS, SCHEDULERS, STEP_CACHE, Param, cache_param, chunk_params
from .pipeline_state import frame_noise, set_vae_float32
from .prompts import prompt_embeds_once


@dataclass(frozen=True)
class Defaults:
    num_frames: int
    height: int
    width: int
    num_inference_steps: int
    fps: int
    guidance_scale: float


@dataclass(frozen=True)
class Family(ABC):
    """A diffusers video pipeline as the renderer sees it.

    Subclasses build the pipeline (tiny or full-size with random weights) and map a validated
    request to the pipeline's own keyword arguments, keeping diffusers' argument names.
    """

    name: str
    pipeline_class: str
    # what a row may give: of "prompt", "image", "video"
    inputs: tuple[str, ...]
    # frames one pipeline call renders natively
    window: int
    defaults: Defaults
    tiny_defaults: Defaults
    # the pipeline call's own keyword arguments a row may set in `params`, under diffusers' names
    arguments: Mapping[str, Param] = field(default_factory=dict)
    # the family's own renderer options a row may set in `params`: per-row pipeline state set in `configure`
    options: Mapping[str, Param] = field(default_factory=dict)
    # diffusers arguments set through a typed column, so `params` may not set them again
    column_aliases: Mapping[str, str] = field(default_factory=dict)
    schedulers: tuple[str, ...] = ()
    # the scheduler config's name for the flow-matching shift ("flow_shift" on UniPC, "shift" on FlowMatchEuler),
    # which a row may set as `params.flow_shift`; None: the family's scheduler has none
    flow_shift: str | None = None
    checkpoints: tuple[str, ...] = ()
    # what a row must give; default: every input
    required: tuple[str, ...] = ()
    # other pipeline classes whose checkpoints this family loads when named as FAMILY:LOCATION
    compatible_classes: tuple[str, ...] = ()
    memory_options: tuple[str, ...] = ("vae_slicing", "vae_tiling", "forward_chunking", "vae_float32")
    # the pipeline's default decode_chunk_size; None: all frames at once
    decode_chunk_default: int | None = None
    # rows may ask for the denoiser's step cache (see step_cache.py)
    step_cache: bool = False
    # the kinds of diffusers' transformer caches a row may ask for in `params.cache` (see params.CACHE_KINDS):
    # those diffusers can apply to the family's transformer
    caches: tuple[str, ...] = ()
    # options of a cache kind the family sets unless the row does (e.g. which of its modules TaylorSeer caches,
    # where diffusers' default names match none of the family's)
    cache_defaults: Mapping[str, dict] = field(default_factory=dict)
    # how a long row's chunks are tied together; the first is the default
    chunk_modes: tuple[str, ...] = (ANCHORED,)
    # how the family's latents hold a video: their frame axis, temporal compression, spatial factor
    layout: LatentLayout = FRAME_LAYOUT
    # how its pipeline's encode_prompt is called (see prompts.py); None: chunks pass the prompt, not embeddings
    prompt_encoder: Callable | None = None
    # its transformers have diffusers' context-parallel plan: a gang of devices can render one video together
    # (--gpus-per-video, renderer/gang.py)
    context_parallel: bool = False
    # the dtype a CUDA device computes in unless the run names one (diffusion transformers are published and
    # trained in bfloat16, whose range float16 lacks)
    cuda_dtype: str = "float16"
    # one of the family's published sizes or layouts (a preset SIZE-FAMILY-VARIANT), made with `with_variant`;
    # "" for the family's first
    variant: str = ""

    def __post_init__(self):
        if not self.required:
            object.__setattr__(self, "required", self.inputs)

    @property
    def preset(self) -> str:
        """The family's part of a preset name: `wan`, or `wan-14b` for a variant."""
        return f"{self.name}-{self.variant}" if self.variant else self.name

    def with_variant(self, variant: str, **changes) -> Family:
        """Another published size or layout of the family (its own configs, defaults, window or pipeline class),
        named as a preset `SIZE-FAMILY-VARIANT`; `components` reads `self.variant`."""
        return replace(self, variant=variant, **changes)

    def claims(self, index: dict) -> bool:
        """Whether a checkpoint whose model_index.json is `index` belongs to this family when no family is named
        (the first family in the registry that claims it loads it)."""
        return index.get("_class_name") == self.pipeline_class

    def for_checkpoint(self, index: dict, read_config) -> Family:
        """The variant of the family that a checkpoint is (`read_config(subfolder)` returns a config dict)."""
        return self

    def allowed_params(self) -> dict[str, Param]:
        """Every key a row's `params` may hold: the family's pipeline arguments plus the renderer options it
        supports."""
        allowed = {**self.arguments, **self.options}
        if self.schedulers:
            allowed["scheduler"] = Param(str, "denoising scheduler", choices=self.schedulers)
        if self.flow_shift:
            allowed["flow_shift"] = Param(float, "shift of the flow-matching sigmas towards high noise (the "
                                          "published: larger for larger frames)", minimum=0.0)
        allowed.update({k: v for k, v in MEMORY_PARAMS.items() if k in self.memory_options})
        if self.step_cache:
            allowed["step_cache"] = STEP_CACHE
        if self.caches:
            allowed["cache"] = cache_param(self.caches)
        allowed.update(chunk_params(self.chunk_modes))
        return allowed

    def call_arguments(self, request) -> dict:
        """The pipeline's own keyword arguments of a request: the row's, where a recovery has not set a lighter
        value as an option of the same name (a smaller decode_chunk_size after running out of memory)."""
        recovered = {k: v for k, v in request.options.items() if k in self.arguments}
        return {**request.arguments, **recovered}

    # a hook: most families have no such rule
    def check_request(self, request) -> None:  # noqa: B027
        """Rules that tie several fields together, checked on the driver (and by `render validate`):
        raise RowRejected naming the column. Single values are checked by their Param already."""

    def guidance_passes(self, request) -> int:
        """Denoiser passes per step (the estimate's CFG factor, renderer/estimate.py): two with classifier-free
        guidance, which the pipelines run when guidance_scale > 1 (SVD when its max_guidance_scale, the same column,
        is), one without."""
        return 2 if request.guidance_scale > 1 else 1

    def single_call(self, options: dict) -> bool:
        """Whether a row longer than the window still renders in one pipeline call (a long-video mode of its own)."""
        return False

    def call_windows(self, request) -> tuple[Chunk, ...]:
        """The chunks (video and latent spans) of the windows one call renders in turn where a long row renders in a
        single call (`single_call`), for the row's seam metrics; the row's one chunk otherwise."""
        return request.plan

    def model_defaults(self, request) -> Defaults:
        """The defaults of the model a request names: a tiny preset's, or the published model's."""
        from ..catalog import resolve_model

        return resolve_model(request.model).defaults

    def window_from_checkpoint(self, read_config) -> int:
        """The native window of a real checkpoint; `read_config(subfolder)` returns its config dict."""
        return self.window

    @abstractmethod
    def components(self, size: str) -> dict:
        """The pipeline's components with random weights: 'tiny' (CPU tests) or 'random' (published architecture),
        of the family's `variant`."""

    def build(self, size: str, device: str, dtype) -> Any:
        """The pipeline with seeded random weights, built directly on `device` in `dtype` (fast for full-size
        models, and never held in float32 when half precision is asked for)."""
        import diffusers
        import torch

        from .components import place, seeded_build

        with seeded_build(device, dtype):
            parts = self.components(size)
        # inference mode, as from_pretrained leaves a loaded checkpoint
        for part in parts.values():
            if isinstance(part, torch.nn.Module):
                part.eval()
        return place(getattr(diffusers, self.pipeline_class)(**parts), device, dtype)

    def prepare_pipeline(self, pipeline) -> None:
        """Adjust a freshly built or loaded pipeline once (attention processors, compatibility shims)."""
        from .components import expose_text_model

        for name in ("text_encoder", "text_encoder_2"):
            if getattr(pipeline, name, None) is not None:
                expose_text_model(getattr(pipeline, name))

    @abstractmethod
    def pipeline_kwargs(self, request, image, video) -> dict:
        """The diffusers call's keyword arguments for one request (without generator/output_type).

        `image` is a PIL image and `video` a list of PIL frames of the row's size, or None."""

    def generate(self, pipeline, request, image, video, generator, **overrides):
        """Float frames in [0, 1] for one request, a tensor (F, 3, H, W) where the pipeline gives one (else an
        array (F, H, W, 3)): the plain diffusers call by default.

        `overrides` replace call arguments (a chunk's latents, output_type="latent", prompt embeddings)."""
        kwargs = {**self.pipeline_kwargs(request, image, video), "output_type": "pt", **overrides}
        return self.pipeline_for(pipeline, request)(**kwargs, generator=generator).frames[0]

    def pipeline_for(self, pipeline, request):
        """The pipeline that renders a request: the loaded one, or a sibling class over the same components where
        the family's rows pick one (text-, image- or keyframe-conditioned)."""
        return pipeline

    # long rows: chunks rendered separately, then stitched (see renderer/chunks.py)

    def stitches_latents(self, request) -> bool:
        """Whether the chunks come back as latents, blended and then decoded across the seams."""
        return self.layout.frame_axis is not None and request.chunk_mode == ANCHORED

    def generate_chunk(self, pipeline, request, chunk, image, video, generator):
        """One chunk of a long row: its float frames (as `generate` returns them), or its latents with frames first.

        `image` is the row's own image when anchored, the previous chunk's frame when chained; `video`
        holds the row's frames up to the chunk's end. By default the chunk is the plain call on its share
        of the frames, starting from the row's noise bank (see `frame_noise`)."""
        import numpy as np

        part = replace(request, num_frames=chunk.frames)
        clip = None if video is None else video[chunk.start:chunk.end]
        out = self.generate(pipeline, part, image, clip, generator, **self.chunk_overrides(pipeline, request, chunk))
        if not self.stitches_latents(request):
            return out
        return np.moveaxis(out.float().cpu().numpy(), self.layout.frame_axis, 0)

    # rows rendered between keyframes (chunk mode "keyframes"): only families that offer the mode implement these

    def generate_keyframe(self, pipeline, request, keyframe, anchor, generator):
        """One keyframe (`keyframe` is its one-frame Chunk: its frame and latent frame) as float frames: from the
        prompt alone, or conditioned on the row's first keyframe `anchor` (a PIL image; None for the first)."""
        raise NotImplementedError(f"family {self.name!r} renders no keyframes")

    def generate_between(self, pipeline, request, chunk, first, last, generator):
        """The frames of a window `chunk` that begins on keyframe `first` and ends on keyframe `last` (PIL images)."""
        raise NotImplementedError(f"family {self.name!r} renders no windows between keyframes")

    def chunk_overrides(self, pipeline, request, chunk) -> dict:
        """Call arguments of a chunk: its slice of the noise bank, latent output when stitched as latents, and
        the row's prompt embeddings where the family encodes them once per row (`prompt_encoder`)."""
        overrides = {"latents": self.chunk_noise(pipeline, request, chunk)}
        if self.stitches_latents(request):
            overrides["output_type"] = "latent"
        if self.prompt_encoder is not None and request.prompt is not None:
            overrides.update(prompt_embeds_once(pipeline, request, self.prompt_encoder))
        return overrides

    def chunk_noise(self, pipeline, request, chunk):
        """The initial latents of a chunk, laid out as the pipeline's prepare_latents lays them out: one draw
        of the row's noise bank per latent frame of the chunk."""
        noise = frame_noise(request.seed, range(chunk.latent_start, chunk.latent_end),
                            self.latent_frame_shape(pipeline, request))
        axis = self.layout.frame_axis if self.layout.frame_axis is not None else 1
        return noise.movedim(0, axis).unsqueeze(0).to(pipeline._execution_device, pipeline.dtype)

    def latent_frame_shape(self, pipeline, request) -> tuple[int, int, int]:
        """(channels, height, width) of one latent frame of the row, from the loaded VAE (a tiny preset's VAE
        scales less than the published one), as Stable Diffusion's pipelines name them; a family whose pipeline
        names them otherwise (Wan's `vae_scale_factor_spatial`, `z_dim`) says so."""
        scale = pipeline.vae_scale_factor
        return pipeline.vae.config.latent_channels, request.height // scale, request.width // scale

    def decode(self, pipeline, request, latents):
        """Stitched latents (frames first) to float frames (a tensor (f, 3, H, W)), yielded a window of frames at
        a time so a long video never holds its whole decode on the GPU."""
        import numpy as np
        import torch

        step = self.decode_window(request, len(latents))
        for start in range(0, len(latents), step):
            piece = torch.from_numpy(np.moveaxis(latents[start:start + step], 0, self.layout.frame_axis))
            piece = piece.unsqueeze(0).to(pipeline._execution_device, pipeline.vae.dtype)
            with torch.no_grad():
                video = self.decode_latents(pipeline, piece)
            yield pipeline.video_processor.postprocess_video(video=video, output_type="pt")[0]

    def decode_window(self, request, latent_frames: int) -> int:
        """Latent frames decoded at once: the row's decode_chunk_size, else a chunk's worth."""
        return self.call_arguments(request).get("decode_chunk_size", request.plan[0].in_latents().frames)

    def decode_latents(self, pipeline, latents):
        """The pipeline's own decode of one batch of latents, as its call does it after the last step."""
        return pipeline.decode_latents(latents)

    def configure(self, pipeline, request, base_scheduler) -> None:
        """Set every piece of per-row pipeline state, so nothing a row asks for leaks into the next row."""
        vae, options = getattr(pipeline, "vae", None), request.options
        name, shift = options.get("scheduler"), options.get("flow_shift")
        if name is None and shift is None:
            pipeline.scheduler = base_scheduler
        else:
            import diffusers

            cls = getattr(diffusers, SCHEDULERS[name]) if name else type(base_scheduler)
            shifted = {} if shift is None else {self.flow_shift: shift}
            pipeline.scheduler = cls.from_config(base_scheduler.config, **shifted)
        if "vae_slicing" in self.memory_options:
            vae.enable_slicing() if options.get("vae_slicing") else vae.disable_slicing()
        if "vae_tiling" in self.memory_options:
            vae.enable_tiling() if options.get("vae_tiling") else vae.disable_tiling()
        if "forward_chunking" in self.memory_options:
            denoiser.set_forward_chunking(pipeline, options.get("forward_chunking"))
        if "vae_float32" in self.memory_options:
            set_vae_float32(vae, denoiser.dtype(pipeline), bool(options.get("vae_float32")))
        if self.step_cache:
            denoiser.set_step_cache(pipeline, options.get("step_cache"))
        if self.caches:
            # the pipeline that runs the call: the cache's timestep callbacks read its current timestep
            denoiser.set_cache(self.pipeline_for(pipeline, request), self.row_cache(request),
                               request.num_inference_steps, self.layout.frame_axis)

    def row_cache(self, request) -> dict | None:
        """The row's `params.cache` over the family's defaults for its kind (None: uncached)."""
        cache = request.options.get("cache")
        return None if cache is None else {**self.cache_defaults.get(cache["kind"], {}), **cache}


