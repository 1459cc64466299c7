"""How far off a scaled figure of `render validate`'s estimate may be: linear scaling against the denoiser's FLOPs.

    python bench/calibration_error.py OUT.json [--calibration renderer/assets/calibration.json] [--update]

The estimate (renderer/estimate.py) scales each entry of the calibration table linearly: seconds per step per
frame-pixel per guidance pass, times the row's frames x pixels x steps x passes. For every entry this script counts
the denoiser's FLOPs of one step (both guidance passes) with torch's FlopCounterMode on the meta device (shapes only,
no weights computed with, no GPU), at the measured shape and at 0.25x to 4x its frames (no more than the denoiser
takes) and its pixels (the width scaled: a step's work follows the latent tokens, height x width). At each point it
reports how far the linear figure is from the FLOP ratio: frames factor x pixels factor / (FLOPs / measured FLOPs) - 1.
Attention grows with the square of the tokens it sees, so linear scaling comes out low for larger shapes and high for
smaller ones. The estimate bounds a row's error by the errors at the corners of the grid cell its frames and pixels
fall in (the error changes monotonically between them); the summary gives two bands: frames and pixels each within
0.5-2x of the measured, and within 0.25-4x.

Steps and guidance passes scale only the denoising share of a video: the VAE decode and the encoders run once per
video. The per-video share comes from the measured run: 1 - steps x one step's seconds (`step_s`, both passes) / the
video's seconds.

FLOPs are not seconds: a GPU runs small shapes below its rate, and the VAE decode follows frames and pixels at a rate
of its own. The bound says how far linear scaling departs from the denoiser's work; it is not a guarantee.

It prints a table and writes OUT.json; --update writes into the calibration file each entry's s_per_video (read from
its results file), seconds_per_step_frame_pixel_pass and bound.
"""
import argparse
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
# bench/ scripts beside this one: the shapes measured (speed.py) and how the project counts a denoiser's FLOPs
from speed import TRANSFORMER_WORKLOADS, WORKLOADS  # noqa: E402
from step_cache_flops import count, meta_unet, unet_inputs  # noqa: E402
from transformer_cache_flops import PASSES, meta_transformer, module_flops, transformer_inputs  # noqa: E402

FACTORS = (0.25, 0.5, 1, 2, 4)
# a band: frames and pixels each within 1/SPAN..SPAN of the measured (nominal factors)
SPANS = (2, 4)
# an indented JSON list of numbers or strings without commas
FLAT_LIST = re.compile(r'\[\s*((?:(?:-?[\d.e+-]+|"[^",\n]*"),\s*)*(?:-?[\d.e+-]+|"[^",\n]*"))\s*\]')


def step_tflop(workload: str):
    """The workload's denoiser (random weights of the published architecture, on the meta device) as a function
    (frames, height, width) -> TFLOP of one step with both guidance passes, and the most frames it takes."""
    import torch

    preset = f"random-{WORKLOADS[workload][0]}"
    if workload in TRANSFORMER_WORKLOADS:
        transformer, _ = meta_transformer(preset)

        def transformer_step(frames, height, width):
            with torch.device("meta"):
                kwargs = transformer_inputs(workload, transformer, frames, height, width)
            return PASSES * module_flops(transformer, kwargs)[0] / 1e12

        return transformer_step, None
    unet = meta_unet(preset)

    def unet_step(frames, height, width):
        with torch.device("meta"):
            args, kwargs = unet_inputs(workload, unet, frames, height, width)
        return count(unet, args, kwargs)

    # AnimateDiff's motion modules hold positions for this many frames
    return unet_step, unet.config.get("motion_max_seq_length")


def grid(entry: dict, max_frames: int | None) -> list[tuple[float, float, int, int]]:
    """(nominal frames factor, nominal pixels factor, frames, width) around the measured shape: frame counts valid
    for the family's latents, widths multiples of its size multiple."""
    from renderer.catalog import resolve_model

    layout = resolve_model(f"random-{entry['preset']}").family.layout
    measured, multiple = entry["measured"], layout.size_multiple
    points = []
    for frame_factor in FACTORS:
        wanted = max(1, round(frame_factor * measured["frames"]))
        frames = min(layout.nearest_frames(wanted), key=lambda n: abs(n - wanted))
        if max_frames is not None and frames > max_frames:
            continue
        for pixel_factor in FACTORS:
            width = max(multiple, round(pixel_factor * measured["width"] / multiple) * multiple)
            points.append((frame_factor, pixel_factor, frames, width))
    return points


def measure(entry: dict) -> dict:
    """FLOPs at every point of the grid, and the linear figure's error there."""
    measured = entry["measured"]
    frames0, height, width0 = measured["frames"], measured["height"], measured["width"]
    step, max_frames = step_tflop(entry["source"]["workload"])
    base = step(frames0, height, width0)
    points = []
    for frame_factor, pixel_factor, frames, width in grid(entry, max_frames):
        tflop = step(frames, height, width)
        linear = (frames / frames0) * (width / width0)
        points.append(dict(nominal=[frame_factor, pixel_factor], frames=frames, height=height, width=width,
                           frames_factor=round(frames / frames0, 4), pixels_factor=round(width / width0, 4),
                           tflop=round(tflop, 3), flop_ratio=round(tflop / base, 4),
                           error=round(linear / (tflop / base) - 1, 4)))
    return dict(preset=entry["preset"], workload=entry["source"]["workload"], measured_tflop=round(base, 3),
                points=points, grid=error_grid(points), bands=[band(points, span) for span in SPANS],
                per_video_share=per_video_share(entry))


def error_grid(points: list[dict]) -> dict:
    """The errors as a table the estimate reads: the frames and pixels factors checked, and the error at each pair
    (a row per frames factor)."""
    frames = sorted({p["frames_factor"] for p in points})
    pixels = sorted({p["pixels_factor"] for p in points})
    error = {(p["frames_factor"], p["pixels_factor"]): p["error"] for p in points}
    return dict(frames=frames, pixels=pixels, error=[[error[f, x] for x in pixels] for f in frames])


def band(points: list[dict], span: float) -> dict:
    """The errors' range over the points whose nominal factors lie within 1/span..span, and the factors they span."""
    inside = [p for p in points if all(1 / span <= f <= span for f in p["nominal"])]
    frames, pixels, errors = ([p[key] for p in inside] for key in ("frames_factor", "pixels_factor", "error"))
    return dict(frames=[min(frames), max(frames)], pixels=[min(pixels), max(pixels)], error=[min(errors), max(errors)])


def measured_seconds(entry: dict) -> float:
    """The entry's seconds per video, from the results file and mode its source names."""
    source = entry["source"]
    results = json.loads((ROOT / source["results"]).read_text())["results"]
    return next(r["s_per_video"] for r in results if (r["workload"], r["mode"]) == (source["workload"], source["mode"]))


def per_video_share(entry: dict) -> float:
    """The share of the measured video that is not the denoiser's steps (VAE decode, encoders, host work)."""
    measured = entry["measured"]
    return round(1 - measured["steps"] * measured["step_s"] / measured_seconds(entry), 4)


def check_shape(entry: dict) -> None:
    """The entry's measured shape must be the workload's of bench/speed.py, which the results file measured."""
    columns = WORKLOADS[entry["source"]["workload"]][1]
    shape = {key: entry["measured"][key] for key in ("height", "width")} | {"num_frames": entry["measured"]["frames"]}
    if any(columns[key] != value for key, value in shape.items()):
        raise SystemExit(f"calibration entry {entry['preset']!r}: measured {shape} is not bench/speed.py's workload "
                         f"{entry['source']['workload']!r} ({columns})")


def update(entry: dict, result: dict) -> None:
    """Write the derived figures into a calibration entry."""
    measured = entry["measured"]
    seconds = measured_seconds(entry)
    measured["s_per_video"] = round(seconds, 4)
    work = measured["steps"] * measured["frames"] * measured["height"] * measured["width"] * measured["guidance_passes"]
    entry["seconds_per_step_frame_pixel_pass"] = measured["s_per_video"] / work
    entry["bound"] = dict(**result["grid"], per_video_share=result["per_video_share"])


def readable_json(data: dict) -> str:
    """JSON indented by object, each list of numbers or plain strings on one line (the file is read by people too)."""
    text = json.dumps(data, indent=1)
    return FLAT_LIST.sub(lambda m: "[" + ", ".join(item.strip() for item in m[1].split(",")) + "]", text) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out")
    parser.add_argument("--calibration", default=str(ROOT / "renderer/assets/calibration.json"))
    parser.add_argument("--update", action="store_true", help="write the derived figures into --calibration")
    args = parser.parse_args()
    calibration = json.loads(Path(args.calibration).read_text())
    results = []
    for entry in calibration["entries"]:
        check_shape(entry)
        results.append(measure(entry))
        if args.update:
            update(entry, results[-1])
    print("linear scaling against the denoiser's FLOPs per step (error: linear figure / FLOP ratio - 1)")
    for result in results:
        print(f"\n{result['preset']} ({result['workload']}): {result['measured_tflop']:.1f} TFLOP per step measured; "
              f"per-video share {result['per_video_share']:.3f}")
        print(f"{'frames':>7} {'width':>6} {'frames x':>9} {'pixels x':>9} {'FLOP ratio':>11} {'error':>7}")
        for p in result["points"]:
            print(f"{p['frames']:>7} {p['width']:>6} {p['frames_factor']:>9.2f} {p['pixels_factor']:>9.2f} "
                  f"{p['flop_ratio']:>11.3f} {p['error']:>+7.1%}")
        for b in result["bands"]:
            print(f"frames {b['frames'][0]:.2f}-{b['frames'][1]:.2f}x, pixels {b['pixels'][0]:.2f}-"
                  f"{b['pixels'][1]:.2f}x: {b['error'][0]:+.1%} to {b['error'][1]:+.1%}")
    Path(args.out).write_text(json.dumps({"results": results}, indent=1))
    if args.update:
        Path(args.calibration).write_text(readable_json(calibration))


if __name__ == "__main__":
    main()
