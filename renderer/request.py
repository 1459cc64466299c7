"""One typed unit of work, converted from a table row in exactly one place.

`to_request` applies every row-level rule; a broken rule raises RowRejected naming the column, the
value and the rule, and costs no other row.
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field, fields
from functools import cached_property
from pathlib import Path

from .catalog import ModelSpec, resolve_model
from .chunks import CHAIN, KEYFRAMES, Chunk, plan_chunks, plan_keyframe_windows
from .errors import RowRejected
from .inputs import check_image, check_video, input_identity, input_ref
from .paths import video_relpath

COLUMNS = ("id", "prompt", "negative_prompt", "image", "last_image", "video", "model", "num_frames", "height", "width",
           "num_inference_steps", "fps", "guidance_scale", "seed", "params")
INT_COLUMNS = ("num_frames", "height", "width", "num_inference_steps", "fps")
# pipeline arguments the renderer owns; a row can never set them through `params`
RESERVED_PARAMS = {"generator", "latents", "output_type", "return_dict", "callback_on_step_end",
                   "callback_on_step_end_tensor_inputs", "prompt_embeds", "negative_prompt_embeds"}
MAX_SEED = 2**63 - 1
# default cap on a row's num_frames (`--max-frames`)
MAX_FRAMES = 2048


@dataclass(frozen=True)
class RenderRequest:
    id: str
    model: str
    family: str
    num_frames: int
    height: int
    width: int
    num_inference_steps: int
    fps: int
    guidance_scale: float
    seed: int
    prompt: str | None = None
    negative_prompt: str | None = None
    # absolute path, object URI or encoded bytes
    image: str | bytes | None = None
    # the video's last frame, for first-and-last-frame families; as `image`
    last_image: str | bytes | None = None
    # absolute path or object URI
    video: str | None = None
    # the row's `params`, checked and held apart: the pipeline call's own keyword arguments, as the row gave them,
    # and the renderer's options (chunking, memory, caches, the family's pipeline state), which a recovery on the
    # actor may change
    arguments: dict = field(default_factory=dict)
    options: dict = field(default_factory=dict)
    # "anchored" or "chain" for a row of several chunks
    chunk_mode: str | None = None
    # the chunks; default: the whole row in one call
    plan: tuple[Chunk, ...] = ()

    def __post_init__(self):
        if not self.plan:
            object.__setattr__(self, "plan", plan_chunks(self.num_frames, self.num_frames, 0))

    @property
    def params(self) -> dict:
        """The row's `params` as checked: its arguments and options together (options of an argument's name, set
        by a recovery, win)."""
        return {**self.arguments, **self.options}

    @property
    def video_path(self) -> str:
        return video_relpath(self.id)

    # once per request: the resume check and the record both need it, a million times a run
    @cached_property
    def fingerprint(self) -> str:
        """Digest of everything the frames depend on; resume re-renders a row whose fingerprint changed."""
        data = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("arguments", "options")}
        data["params"] = self.params
        data["plan"] = [{"index": c.index, "start": c.start, "end": c.end} for c in self.plan]
        for column in ("image", "last_image", "video"):
            value = getattr(self, column)
            data[column] = input_identity(value) if value is not None else None
        # a column added later stays out of the digest while unset: rows committed before it still resume
        if self.last_image is None:
            del data["last_image"]
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def derive_seed(base_seed: int, row_id: str) -> int:
    """A row's default seed: stable whatever the actor count, the row order or the other rows."""
    digest = hashlib.sha256(f"{base_seed}\x00{row_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") & MAX_SEED


def to_request(row: dict, *, default_model: str | None, base_seed: int = 0, table_dir: str | Path = Path("."),
               max_frames: int = MAX_FRAMES, checked: set | None = None) -> RenderRequest:
    """The row as a RenderRequest, or RowRejected naming the column, the value and the rule. `checked`: the
    (column, file) pairs that passed their check earlier in this table, not read again (many rows often
    share one image or source video); those passing here are added to it."""
    checked = set() if checked is None else checked
    row_id = row["id"]
    spec = _model_spec(row.get("model"), default_model)
    family = spec.family
    d = spec.defaults
    params = _params(row.get("params"), spec)
    arguments = {k: v for k, v in params.items() if k in family.arguments}
    options = {k: v for k, v in params.items() if k not in family.arguments}
    num_frames = _frame_count(row, spec, max_frames)
    chunk_mode, plan = _chunking(num_frames, spec, options)
    if "step_cache" in options and options.get("free_init") is not None:
        raise RowRejected("params.step_cache", options["step_cache"], "cannot be combined with free_init: every "
                          "FreeInit pass starts from new noise, so features of the last pass must not be reused")
    request = RenderRequest(
        id=row_id,
        model=spec.name,
        family=family.name,
        num_frames=num_frames,
        height=_size(row, "height", d.height, family.layout.size_multiple),
        width=_size(row, "width", d.width, family.layout.size_multiple),
        num_inference_steps=_positive_int(row, "num_inference_steps", d.num_inference_steps),
        fps=_positive_int(row, "fps", d.fps),
        guidance_scale=_guidance(row.get("guidance_scale"), d.guidance_scale),
        seed=_seed(row.get("seed"), base_seed, row_id),
        prompt=_text(row, "prompt", spec),
        negative_prompt=_text(row, "negative_prompt", spec),
        image=_conditioning(row, "image", spec, table_dir, checked),
        last_image=_conditioning(row, "last_image", spec, table_dir, checked),
        video=_conditioning(row, "video", spec, table_dir, checked),
        arguments=arguments,
        options=options,
        chunk_mode=chunk_mode,
        plan=plan,
    )
    family.check_request(request)
    return request


def _chunking(num_frames: int, spec: ModelSpec, options: dict) -> tuple[str | None, tuple[Chunk, ...]]:
    """(mode, plan) of a row: one chunk when it fits the window, else chunks of the window (see chunks.py)."""
    layout = spec.family.layout
    window = options.get("chunk_window", spec.window)
    if not layout.valid_frames(window):
        raise RowRejected("params.chunk_window", window, f"must be {layout.frame_rule()} for family "
                          f"{spec.family.name!r}{_nearest(layout.nearest_frames(window))}")
    mode = options.get("chunk_mode", spec.family.chunk_modes[0])
    if mode == KEYFRAMES and options.get("chunk_overlap", 1) != 1:
        raise RowRejected("params.chunk_overlap", options["chunk_overlap"], "must be 1 (or left out) with keyframes: "
                          "neighbouring windows share exactly their keyframe")
    overlap = options.get("chunk_overlap", 1 if mode in (CHAIN, KEYFRAMES) else window // 4)
    if overlap >= window:
        raise RowRejected("params.chunk_overlap", overlap, f"must be smaller than the chunk window ({window} frames)")
    if mode == CHAIN and overlap < 1:
        raise RowRejected("params.chunk_overlap", overlap, "must be >= 1 when chained: a chunk starts on a frame "
                          "of the previous one")
    if num_frames <= window or spec.family.single_call(options):
        return None, plan_chunks(num_frames, num_frames, 0, layout)
    if mode == KEYFRAMES:
        return mode, plan_keyframe_windows(num_frames, window, layout)
    return mode, plan_chunks(num_frames, window, overlap, layout)


def _model_spec(value, default_model) -> ModelSpec:
    name = value if value is not None else default_model
    if name is None:
        raise RowRejected("model", None, "no model: set the row's `model` or pass --model")
    if not isinstance(name, str) or not name.strip():
        raise RowRejected("model", name, "must be a preset name, a local folder or a hub id")
    return resolve_model(name)


def _int(column: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise RowRejected(column, value, "must be an integer")
    if isinstance(value, float) and not (math.isfinite(value) and value.is_integer()):
        raise RowRejected(column, value, "must be an integer")
    return int(value)


def _positive_int(row: dict, column: str, default: int) -> int:
    value = row.get(column)
    if value is None:
        return default
    number = _int(column, value)
    if number < 1:
        raise RowRejected(column, value, "must be >= 1")
    return number


def _frame_count(row: dict, spec: ModelSpec, max_frames: int) -> int:
    number = _positive_int(row, "num_frames", spec.defaults.num_frames)
    if number > max_frames:
        raise RowRejected("num_frames", number, f"exceeds the cap of {max_frames} frames per row (--max-frames)")
    layout = spec.family.layout
    if not layout.valid_frames(number):
        raise RowRejected("num_frames", number, f"must be {layout.frame_rule()} for family {spec.family.name!r}: "
                          f"its latents hold {layout.temporal} frames each{_nearest(layout.nearest_frames(number))}")
    return number


def _size(row: dict, column: str, default: int, multiple: int) -> int:
    number = _positive_int(row, column, default)
    if number % multiple:
        lower = number - number % multiple
        nearest = (lower, lower + multiple) if lower else (multiple,)
        raise RowRejected(column, number, f"must be divisible by {multiple}{_nearest(nearest)}")
    return number


def _nearest(values: tuple[int, ...]) -> str:
    """The valid values nearest a rejected one, as the end of its message: never rounded silently."""
    return f" (nearest: {' or '.join(map(str, values))})"


def _guidance(value, default: float) -> float:
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise RowRejected("guidance_scale", value, "must be a finite number >= 0")
    return float(value)


def _seed(value, base_seed: int, row_id: str) -> int:
    if value is None:
        return derive_seed(base_seed, row_id)
    number = _int("seed", value)
    if not 0 <= number <= MAX_SEED:
        raise RowRejected("seed", value, f"must be in [0, {MAX_SEED}]")
    return number


def _text(row: dict, column: str, spec: ModelSpec) -> str | None:
    value = row.get(column)
    family = spec.family
    if value is None:
        if column in family.required:
            raise RowRejected(column, value, f"required by family {family.name!r}")
        return None
    if not isinstance(value, str):
        raise RowRejected(column, value, "must be a string")
    if "prompt" not in family.inputs:
        raise RowRejected(column, value, f"family {family.name!r} takes no text (it is conditioned on the "
                          f"{' and '.join(family.inputs)})")
    # a text-conditioned row without text is a broken export
    if column == "prompt" and not value.strip():
        raise RowRejected(column, value, f"must not be empty or whitespace only (family {family.name!r} is "
                          "conditioned on it)")
    if "\x00" in value:
        raise RowRejected(column, value, "must not contain NUL characters")
    return value


def _conditioning(row: dict, column: str, spec: ModelSpec, table_dir: str | Path, checked: set) -> str | bytes | None:
    """The row's `image`, `last_image` or `video`: required, accepted or refused by the family; checked cheaply
    here, unless `checked` holds it already."""
    value = row.get(column)
    family = spec.family
    if value is None:
        if column in family.required:
            raise RowRejected(column, value, f"required by family {family.name!r}")
        return None
    if column not in family.inputs:
        raise RowRejected(column, value, f"family {family.name!r} takes no {column}")
    is_image = column != "video"
    ref = input_ref(column, value, table_dir, allow_bytes=is_image)
    # an image's bytes are not kept in `checked`: hashing them costs what checking does
    if isinstance(ref, bytes):
        check_image(ref, column)
    elif (column, ref) not in checked:
        check_image(ref, column) if is_image else check_video(ref)
        checked.add((column, ref))
    return ref


def _params(value, spec: ModelSpec) -> dict:
    if value is None or value == "":
        return {}
    try:
        params = json.loads(value) if isinstance(value, str) else None
    except json.JSONDecodeError as exc:
        raise RowRejected("params", value, f"not valid JSON ({exc.msg})") from None
    if not isinstance(params, dict):
        raise RowRejected("params", value, "must be a JSON object of pipeline arguments")
    allowed = spec.family.allowed_params()
    checked = {}
    for key, item in params.items():
        if key in COLUMNS or key in spec.family.column_aliases:
            column = key if key in COLUMNS else spec.family.column_aliases[key]
            raise RowRejected(f"params.{key}", item, f"duplicates the typed column {column!r}; set the column instead")
        if key in RESERVED_PARAMS or key not in allowed:
            raise RowRejected(f"params.{key}", item, f"not a parameter of family {spec.family.name!r} "
                              f"(allowed: {', '.join(sorted(allowed)) or 'none'})")
        checked[key] = allowed[key].check(key, item)
    return checked
