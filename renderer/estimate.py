"""The GPU time a table will take, known before anything starts: the estimate `render validate` prints.

renderer/assets/calibration.json holds, per family preset, one run measured on an H100 with default options
(BENCHMARKS.md) as seconds per denoising step per frame-pixel per guidance pass. A row's time is that figure times
the frames it renders (its chunk plan, overlaps included) x its pixels x its steps x its guidance passes
(`Family.guidance_passes`). A row of the measured preset at the measured shape, steps and passes is `measured`;
another row of that preset, or of a preset with the same denoiser, is `scaled`, with the range it may be off by:
linear scaling against the denoiser's FLOPs at the checked frames and pixels around the row's, and the measured
share of a video that neither steps nor passes scale (both written by bench/calibration_error.py). A family without
an entry is `not calibrated`, and nothing is guessed for it. Pure: no torch, no Ray.
"""
from __future__ import annotations

import json
from bisect import bisect_left
from collections import Counter
from dataclasses import dataclass, field
from importlib import resources

from .catalog import resolve_model
from .chunks import CHAIN

MEASURED, SCALED, NOT_CALIBRATED, NOT_ESTIMATED = "measured", "scaled", "not calibrated", "not estimated"
CALIBRATION_FILE = "calibration.json"
# renderer options that change the denoiser's work in a way no calibration run measured
UNMEASURED_OPTIONS = {
    "step_cache": "the step cache skips part of the UNet on most steps",
    "cache": "the transformer cache skips part of most steps",
    "free_init": "FreeInit runs the denoising loop again per round",
}
# a factor this close to a checked one counts as checked (factors are stored rounded)
FACTOR_TOLERANCE = 1e-3


@dataclass(frozen=True)
class Calibration:
    """One measured run: the preset measured, the presets with the same denoiser, its shape and its figure."""

    preset: str
    same_architecture: tuple[str, ...]
    frames: int
    height: int
    width: int
    steps: int
    passes: int
    gpu: str
    dtype: str
    s_per_video: float
    # seconds per denoising step per frame-pixel per guidance pass
    rate: float
    # the checked factors of the measured frames and pixels, and linear scaling's error against the denoiser's FLOPs
    # at each pair (a row per frames factor)
    frames_factors: tuple[float, ...]
    pixels_factors: tuple[float, ...]
    errors: tuple[tuple[float, ...], ...]
    # the share of the measured video that scales with neither steps nor passes (VAE decode, encoders)
    per_video_share: float
    source: str

    @classmethod
    def from_entry(cls, entry: dict) -> Calibration:
        measured, bound, source = entry["measured"], entry["bound"], entry["source"]
        return cls(preset=entry["preset"], same_architecture=tuple(entry["same_architecture"]),
                   frames=measured["frames"], height=measured["height"], width=measured["width"],
                   steps=measured["steps"], passes=measured["guidance_passes"], gpu=measured["gpu"],
                   dtype=measured["dtype"], s_per_video=measured["s_per_video"],
                   rate=entry["seconds_per_step_frame_pixel_pass"], frames_factors=tuple(bound["frames"]),
                   pixels_factors=tuple(bound["pixels"]), errors=tuple(map(tuple, bound["error"])),
                   per_video_share=bound["per_video_share"],
                   source=f"{source['section']}; {source['results']}, {source['workload']}, mode {source['mode']}")

    def seconds(self, request, passes: int, frames: int) -> float:
        """The GPU seconds of `frames` frames of the request."""
        return self.rate * request.num_inference_steps * passes * frames * request.height * request.width

    def measures(self, preset: str, request, passes: int) -> bool:
        """Whether the request is the measured run itself: its preset, shape, steps and passes, in one call."""
        return (preset == self.preset and [chunk.frames for chunk in request.plan] == [self.frames]
                and (request.height, request.width, request.num_inference_steps, passes)
                == (self.height, self.width, self.steps, self.passes))

    def error_range(self, request, passes: int) -> tuple[float, float] | None:
        """How far off (low, high, as fractions) the scaled figure of a request may be; None beyond the factors
        checked."""
        pixels = request.height * request.width / (self.height * self.width)
        columns = _cell(self.pixels_factors, pixels)
        rows = [_cell(self.frames_factors, chunk.frames / self.frames) for chunk in request.plan]
        if columns is None or None in rows:
            return None
        corners = [self.errors[i][j] for cells in rows for i in cells for j in columns]
        steps = self.steps_error(request.num_inference_steps * passes / (self.steps * self.passes))
        return (1 + min(corners)) * (1 + steps) - 1, (1 + max(corners)) * (1 + steps) - 1

    def steps_error(self, work: float) -> float:
        """The error of scaling a whole video by `work` (steps x passes over the measured) where only the denoising
        share of it scales."""
        share = self.per_video_share
        return work / ((1 - share) * work + share) - 1

    def describe(self) -> str:
        """The measured run, as the estimate's footnote names it."""
        return (f"{self.preset}: {self.s_per_video:g} s a video measured at {self.frames} frames, "
                f"{self.width}x{self.height}, {self.steps} steps, {self.passes} passes, {self.dtype} on an {self.gpu} "
                f"({self.source})")

    def checked(self) -> str:
        """The factors checked, as a message names them."""
        return (f"frames {self.frames_factors[0]:g}-{self.frames_factors[-1]:g}x and pixels {self.pixels_factors[0]:g}-"
                f"{self.pixels_factors[-1]:g}x of the measured {self.frames} frames at {self.width}x{self.height}")


def _cell(factors: tuple[float, ...], factor: float) -> tuple[int, ...] | None:
    """The indices of the checked factors around `factor` (one where it is checked itself); None outside them."""
    if not factors[0] * (1 - FACTOR_TOLERANCE) <= factor <= factors[-1] * (1 + FACTOR_TOLERANCE):
        return None
    i = bisect_left(factors, factor * (1 - FACTOR_TOLERANCE))
    return (i,) if abs(factors[i] - factor) <= 2 * FACTOR_TOLERANCE * factor else (i - 1, i)


def load_calibrations(text: str | None = None) -> dict[str, Calibration]:
    """The calibration table (the package's, or `text`) by every preset it covers: the one measured and those with
    the same denoiser."""
    if text is None:
        text = (resources.files("renderer") / "assets" / CALIBRATION_FILE).read_text()
    by_preset = {}
    for entry in json.loads(text)["entries"]:
        calibration = Calibration.from_entry(entry)
        for preset in (calibration.preset, *calibration.same_architecture):
            by_preset[preset] = calibration
    return by_preset


@dataclass(frozen=True)
class RowEstimate:
    model: str
    family: str
    figure: str
    # why the row has no figure, or no bound
    reason: str = ""
    seconds: float = 0.0
    # what one GPU renders alone: the whole row when its chunks run in order, else its longest chunk
    serial_seconds: float = 0.0
    # how far off a scaled figure may be (low, high); None when measured or beyond the factors checked
    error: tuple[float, float] | None = None
    # the measured run the figure comes from
    calibration: Calibration | None = None


def estimate_row(request, calibrations: dict[str, Calibration]) -> RowEstimate:
    """The GPU time of one checked request, or why it has none."""
    spec = resolve_model(request.model)
    family, preset = spec.family, spec.family.preset
    if spec.source == "tiny":
        return RowEstimate(request.model, preset, NOT_ESTIMATED, "a tiny preset: a CPU test model, not a GPU workload")
    calibration = calibrations.get(preset)
    if calibration is None:
        return RowEstimate(request.model, preset, NOT_CALIBRATED, f"no H100 figure for {preset}, so none is guessed "
                           f"(to add one: bench/speed.py on an H100, then renderer/assets/{CALIBRATION_FILE}; README)")
    if reason := unmeasured_work(request, family, spec.window):
        return RowEstimate(request.model, preset, NOT_ESTIMATED, reason)
    passes = family.guidance_passes(request)
    chunks = [calibration.seconds(request, passes, chunk.frames) for chunk in request.plan]
    serial = sum(chunks) if request.chunk_mode == CHAIN else max(chunks)
    if calibration.measures(preset, request, passes):
        return RowEstimate(request.model, preset, MEASURED, seconds=sum(chunks), serial_seconds=serial,
                           calibration=calibration)
    error = calibration.error_range(request, passes)
    reason = "" if error is not None else f"beyond the {calibration.checked()}: no bound"
    return RowEstimate(request.model, preset, SCALED, reason, sum(chunks), serial, error, calibration)


def unmeasured_work(request, family, window: int) -> str:
    """Why the denoiser's work of a request is not what the calibration measured ('' when it is)."""
    for option, why in UNMEASURED_OPTIONS.items():
        if request.options.get(option) is not None:
            return f"params.{option}: {why}, and the calibration measured default options"
    if request.num_frames > window and family.single_call(request.options):
        return "a long row in one call: its windows overlap inside the pipeline, and the calibration measured one"
    return ""


@dataclass
class ModelEstimate:
    model: str
    family: str
    rows: int = 0
    seconds: float = 0.0
    # rows by figure, and rows by (figure, why they have no figure or no bound)
    figures: Counter = field(default_factory=Counter)
    reasons: Counter = field(default_factory=Counter)
    # the range over the scaled rows that have one
    error: tuple[float, float] | None = None

    def add(self, row: RowEstimate) -> None:
        self.rows += 1
        self.seconds += row.seconds
        self.figures[row.figure] += 1
        if row.reason:
            self.reasons[row.figure, row.reason] += 1
        if row.error is not None:
            low, high = row.error if self.error is None else (min(self.error[0], row.error[0]),
                                                               max(self.error[1], row.error[1]))
            self.error = low, high

    @property
    def estimated(self) -> int:
        return self.figures[MEASURED] + self.figures[SCALED]


@dataclass
class Estimate:
    models: dict[str, ModelEstimate] = field(default_factory=dict)
    # the longest part of one row that one GPU renders alone
    longest_serial: float = 0.0
    # the measured runs the figures come from, by preset measured
    calibrations: dict[str, Calibration] = field(default_factory=dict)

    @property
    def seconds(self) -> float:
        return sum(model.seconds for model in self.models.values())

    @property
    def rows(self) -> int:
        return sum(model.rows for model in self.models.values())

    @property
    def estimated(self) -> int:
        return sum(model.estimated for model in self.models.values())

    def wall_seconds(self, gpus: int) -> float:
        """A lower bound of the wall time on `gpus` GPUs: the GPU time spread evenly, and never less than the
        longest part one GPU renders alone."""
        return max(self.seconds / gpus, self.longest_serial)


def estimate(requests, calibrations: dict[str, Calibration] | None = None) -> Estimate:
    """The estimate of checked requests, per model in the order the models first appear."""
    calibrations = load_calibrations() if calibrations is None else calibrations
    result = Estimate()
    for request in requests:
        row = estimate_row(request, calibrations)
        result.models.setdefault(row.model, ModelEstimate(row.model, row.family)).add(row)
        result.longest_serial = max(result.longest_serial, row.serial_seconds)
        if row.calibration is not None:
            result.calibrations[row.calibration.preset] = row.calibration
    return result


def clock(seconds: float) -> str:
    """h:mm:ss (hours past 24 kept as hours)."""
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes // 60}:{minutes % 60:02d}:{secs:02d}"


def percent_range(error: tuple[float, float]) -> str:
    low, high = (round(100 * e) for e in error)
    return f"{low:+d}%" if low == high else f"{low:+d}% to {high:+d}%"


def report(result: Estimate, gpus: int) -> list[str]:
    """The estimate as `render validate` prints it."""
    if not result.rows:
        return []
    width = max(len("model"), *(len(name) for name in result.models))
    family_width = max(len("family"), *(len(m.family) for m in result.models.values()))
    lines = [f"GPU time on one H100 with default options (renderer/assets/{CALIBRATION_FILE}):",
             f"  {'model':<{width}}  {'family':<{family_width}}  {'rows':>6}  {'GPU time':>9}  {'figure':<16}  "
             "may be off by"]
    for model in result.models.values():
        lines += _model_lines(model, width, family_width)
    left_out = result.rows - result.estimated
    lines.append(f"total GPU time {clock(result.seconds)} for {result.estimated} of {result.rows} rows"
                 + (f" ({left_out} left out: not calibrated or not estimated)" if left_out else ""))
    lines.append(f"wall time on {gpus} GPU{'s' if gpus > 1 else ''}: at least {clock(result.wall_seconds(gpus))} "
                 f"(the GPU time spread evenly, never below the longest row or chunk one GPU renders alone, "
                 f"{clock(result.longest_serial)}); model loading and each actor's first, warming-up video not "
                 "counted")
    if any(model.figures[SCALED] for model in result.models.values()):
        lines.append("scaled: a measured run's seconds per step per frame-pixel per guidance pass, times the row's; "
                     "may be off by: that scaling against the denoiser's FLOPs and the measured share of decoding "
                     "and encoding (FLOPs are not seconds)")
    lines += [f"figure of {calibration.describe()}" for calibration in result.calibrations.values()]
    return lines


def _model_lines(model: ModelEstimate, width: int, family_width: int) -> list[str]:
    """A model's line, then one per kind of row it leaves out or cannot bound (on the line itself where that is the
    only kind and no row has a figure)."""
    reasons = dict(model.reasons)
    if model.estimated:
        label = ", ".join(f for f in (MEASURED, SCALED) if model.figures[f])
        time, last = clock(model.seconds), percent_range(model.error) if model.error else ""
    elif len(reasons) == 1:
        (label, last), time = reasons.popitem()[0], "-"
    else:
        label, time, last = "not estimated", "-", ""
    line = f"  {model.model:<{width}}  {model.family:<{family_width}}  {model.rows:>6}  {time:>9}  {label:<16}  {last}"
    lines = [line.rstrip()]
    for (figure, reason), rows in reasons.items():
        lines.append(f"    {rows} row{'s' if rows > 1 else ''} {figure}: {reason}")
    return lines
