"""`render validate`'s estimate of GPU time: the arithmetic on rows of known shape against a calibration table of
known numbers, measured against scaled figures and their bounds, the guidance passes, long rows, wall time on
several GPUs, and the rows it refuses to guess (families without a calibration, tiny presets)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from conftest import write_table
from jobs.cli import main
from renderer.estimate import (
    MEASURED,
    NOT_CALIBRATED,
    NOT_ESTIMATED,
    SCALED,
    clock,
    estimate,
    estimate_row,
    load_calibrations,
    report,
)
from renderer.request import RenderRequest, to_request
from test_layering import _heavy_loaded

ROOT = Path(__file__).resolve().parents[1]
# a calibration table of round numbers: AnimateDiff measured at 16 frames, 512x512, 25 steps, 2 passes in 5 s
KNOWN = {"entries": [{
    "preset": "animatediff", "same_architecture": [], "architecture": "test",
    "measured": {"gpu": "H100", "dtype": "float16", "frames": 16, "height": 512, "width": 512, "steps": 25,
                 "guidance_passes": 2, "s_per_video": 5.0},
    "source": {"section": "test", "results": "none", "workload": "animatediff", "mode": "default"},
    "seconds_per_step_frame_pixel_pass": 5.0 / (25 * 16 * 512 * 512 * 2),
    "bound": {"frames": [0.5, 1.0, 2.0], "pixels": [0.5, 1.0, 2.0],
              "error": [[0.08, 0.02, -0.05], [0.06, 0.0, -0.1], [0.04, -0.01, -0.12]], "per_video_share": 0.2},
}]}


@pytest.fixture
def known():
    return load_calibrations(json.dumps(KNOWN))


def animatediff(**columns):
    return to_request({"id": "a", "model": "random-animatediff", "prompt": "a lighthouse", **columns},
                      default_model=None)


@pytest.mark.parametrize("columns, figure, seconds, error", [
    # the measured run itself
    ({}, MEASURED, 5.0, None),
    # half the frames, twice the steps: the error checked at 0.5x frames (+2%) and the steps' (0.2 of the video runs
    # once, whatever the steps: 2 / (0.8 * 2 + 0.2) - 1)
    ({"num_frames": 8, "num_inference_steps": 50}, SCALED, 5.0, (1.02 * 2 / 1.8 - 1, 1.02 * 2 / 1.8 - 1)),
    # no guidance: one pass instead of two
    ({"guidance_scale": 1.0}, SCALED, 2.5, (0.5 / 0.6 - 1, 0.5 / 0.6 - 1)),
    # 1.5x the pixels: between the checked 1x and 2x, bounded by the errors at both
    ({"width": 768}, SCALED, 7.5, (-0.1, 0.0)),
    # a quarter of the pixels: beyond the checked 0.5x, no bound
    ({"height": 256, "width": 256}, SCALED, 1.25, None),
])
def test_a_row_scales_the_measured_figure_by_frames_pixels_steps_and_passes(known, columns, figure, seconds, error):
    row = estimate_row(animatediff(**columns), known)
    assert (row.figure, row.family) == (figure, "animatediff")
    assert row.seconds == pytest.approx(seconds, rel=1e-12)
    assert row.error == (None if error is None else pytest.approx(error, rel=1e-12))


def test_a_row_beyond_the_checked_factors_says_so(known):
    row = estimate_row(animatediff(height=256, width=256), known)
    assert row.reason == "beyond the frames 0.5-2x and pixels 0.5-2x of the measured 16 frames at 512x512: no bound"


def test_a_long_row_counts_every_chunk_with_its_overlaps(known):
    # 40 frames in windows of 16 overlapping by 4: chunks [0,16), [12,28), [24,40), 48 frames rendered
    request = animatediff(num_frames=40)
    assert [chunk.frames for chunk in request.plan] == [16, 16, 16]
    row = estimate_row(request, known)
    assert (row.figure, row.seconds, row.error) == (SCALED, pytest.approx(15.0, rel=1e-12), (0.0, 0.0))
    # anchored chunks go to any GPU: one chunk is what a GPU renders alone
    assert row.serial_seconds == pytest.approx(5.0, rel=1e-12)


def test_a_chained_row_runs_its_chunks_on_one_gpu_in_order(image_file):
    calibrations = load_calibrations()
    svd_xt = calibrations["svd-xt"]
    request = to_request({"id": "c", "model": "random-svd-xt", "image": str(image_file), "num_frames": 49,
                          "params": '{"chunk_mode": "chain"}'}, default_model=None)
    # windows of 25 overlapping by 1 frame: [0,25), [24,49)
    assert [chunk.frames for chunk in request.plan] == [25, 25]
    row = estimate_row(request, calibrations)
    assert row.seconds == row.serial_seconds == pytest.approx(2 * svd_xt.s_per_video, rel=1e-12)


def test_a_checkpoint_of_a_calibrated_family_is_estimated(known, tmp_path):
    # what `render validate` reads of a checkpoint: its model_index.json names the pipeline, hence the family
    index = {"_class_name": "AnimateDiffPipeline", "_diffusers_version": "0.42.1",
             "unet": ["diffusers", "UNetMotionModel"], "vae": ["diffusers", "AutoencoderKL"]}
    (tmp_path / "model_index.json").write_text(json.dumps(index))
    row = estimate_row(animatediff(model=str(tmp_path)), known)
    assert (row.model, row.family, row.figure) == (str(tmp_path), "animatediff", MEASURED)
    assert row.seconds == pytest.approx(5.0, rel=1e-12)


def test_the_shipped_table_gives_the_benchmarks_seconds_for_their_own_rows(image_file):
    calibrations = load_calibrations()
    measured = [to_request({"id": "s", "model": "random-svd-xt", "image": str(image_file)}, default_model=None),
                animatediff()]
    results = json.loads((ROOT / "bench/results/speed_h100.json").read_text())["results"]
    benchmark = {r["workload"]: r["s_per_video"] for r in results if r["mode"] == "default"}
    for request, workload in zip(measured, ("svd-xt", "animatediff"), strict=True):
        row = estimate_row(request, calibrations)
        assert row.figure == MEASURED
        assert row.seconds == pytest.approx(benchmark[workload], abs=1e-4)


def test_every_entry_holds_its_figure_as_the_measured_seconds_over_the_measured_work():
    for entry in json.loads((ROOT / "renderer/assets/calibration.json").read_text())["entries"]:
        measured = entry["measured"]
        work = (measured["steps"] * measured["frames"] * measured["height"] * measured["width"]
                * measured["guidance_passes"])
        assert entry["seconds_per_step_frame_pixel_pass"] == pytest.approx(measured["s_per_video"] / work, rel=1e-12)
        assert entry["source"]["results"].startswith("bench/results/") and entry["source"]["mode"] == "default"


def test_svd_is_scaled_from_svd_xt_whose_unet_it_shares(image_file):
    """SVD's figure comes from SVD-XT's run: the same UNet, a shorter window; never from another architecture."""
    from renderer.catalog import resolve_model
    from renderer.families.components import seeded_build

    with seeded_build("meta"):
        svd, xt = (resolve_model(f"random-{p}").family.components("random")["unet"] for p in ("svd", "svd-xt"))
    assert {**svd.config, "num_frames": None} == {**xt.config, "num_frames": None}
    calibrations = load_calibrations()
    row = estimate_row(to_request({"id": "s", "model": "random-svd", "image": str(image_file)}, default_model=None),
                       calibrations)
    assert (row.figure, row.family) == (SCALED, "svd")
    assert row.seconds == pytest.approx(calibrations["svd-xt"].s_per_video * 14 / 25, rel=1e-12)
    assert row.error is not None and max(map(abs, row.error)) < 0.01


@pytest.mark.parametrize("model, family, columns, passes", [
    ("random-animatediff", "animatediff", dict(guidance_scale=7.5), 2),
    ("random-animatediff", "animatediff", dict(guidance_scale=1.0), 1),
    # SVD's guidance ramps from min_guidance_scale to guidance_scale (its max_guidance_scale): guided when that is > 1
    ("random-svd-xt", "svd-xt", dict(guidance_scale=3.0, arguments={"min_guidance_scale": 1.0}), 2),
    ("random-svd-xt", "svd-xt", dict(guidance_scale=1.0), 1),
    # InstructPix2Pix: text, image and unconditioned copies when both guidances are on
    ("random-pix2pix-video", "pix2pix-video", dict(guidance_scale=7.5), 3),
    ("random-pix2pix-video", "pix2pix-video", dict(guidance_scale=7.5, arguments={"image_guidance_scale": 0.5}), 1),
    # HunyuanVideo's guidance_scale is embedded in one pass; true CFG adds a second
    ("random-hunyuanvideo", "hunyuanvideo", dict(guidance_scale=6.0), 1),
    ("random-hunyuanvideo", "hunyuanvideo", dict(guidance_scale=6.0, arguments={"true_cfg_scale": 4.0}), 2),
    ("random-wan-1.3b", "wan", dict(guidance_scale=5.0), 2),
])
def test_guidance_passes_per_family(model, family, columns, passes):
    from renderer.catalog import resolve_model

    request = RenderRequest(id="g", model=model, family=family, num_frames=9, height=64, width=64,
                            num_inference_steps=4, fps=8, seed=0, **columns)
    assert resolve_model(model).family.guidance_passes(request) == passes


def test_pix2pix_passes_follow_the_pipelines_default_image_guidance():
    import inspect

    from diffusers import StableDiffusionInstructPix2PixPipeline

    from renderer.families.cross_frame import IMAGE_GUIDANCE_DEFAULT

    call = inspect.signature(StableDiffusionInstructPix2PixPipeline.__call__)
    assert call.parameters["image_guidance_scale"].default == IMAGE_GUIDANCE_DEFAULT


def test_rows_not_estimated_say_why(known):
    rows = {
        "tiny": to_request({"id": "t", "model": "tiny-animatediff", "prompt": "x"}, default_model=None),
        "free_init": animatediff(params='{"free_init": {"num_iters": 2}}'),
        "step_cache": animatediff(params='{"step_cache": 3}'),
        "free_noise": animatediff(num_frames=48, params='{"free_noise": {"context_length": 16}}'),
        "wan": to_request({"id": "w", "model": "random-wan-1.3b", "prompt": "x"}, default_model=None),
    }
    got = {name: estimate_row(request, known) for name, request in rows.items()}
    assert {name: (row.figure, row.seconds) for name, row in got.items()} == {
        "tiny": (NOT_ESTIMATED, 0.0), "free_init": (NOT_ESTIMATED, 0.0), "step_cache": (NOT_ESTIMATED, 0.0),
        "free_noise": (NOT_ESTIMATED, 0.0), "wan": (NOT_CALIBRATED, 0.0)}
    assert got["tiny"].reason == "a tiny preset: a CPU test model, not a GPU workload"
    assert got["free_init"].reason.startswith("params.free_init: FreeInit runs the denoising loop again per round")
    assert got["free_noise"].reason.startswith("a long row in one call")
    assert got["wan"].reason.startswith("no H100 figure for wan-1.3b, so none is guessed")


def test_a_family_missing_from_the_table_is_left_out_of_the_total(known, image_file):
    requests = [animatediff(), animatediff(guidance_scale=1.0),
                to_request({"id": "x", "model": "random-svd-xt", "image": str(image_file)}, default_model=None)]
    result = estimate(requests, known)
    assert (result.seconds, result.estimated, result.rows) == (pytest.approx(7.5, rel=1e-12), 2, 3)
    lines = report(result, gpus=1)
    assert lines[3].split() == ["random-svd-xt", "svd-xt", "1", "-", "not", "calibrated", "no", "H100", "figure",
                                "for", "svd-xt,", "so", "none", "is", "guessed", "(to", "add", "one:", "bench/speed.py",
                                "on", "an", "H100,", "then", "renderer/assets/calibration.json;", "README)"]
    assert lines[4] == "total GPU time 0:00:08 for 2 of 3 rows (1 left out: not calibrated or not estimated)"


@pytest.mark.parametrize("gpus, wall", [(1, 20.0), (2, 10.0), (8, 5.0)])
def test_wall_time_spreads_the_gpu_time_but_never_below_one_row(known, gpus, wall):
    # four measured rows of 5 s each: 20 s of GPU time; no GPU renders less than one whole row
    result = estimate([animatediff()] * 4, known)
    assert result.wall_seconds(gpus) == pytest.approx(wall, rel=1e-12)


@pytest.mark.parametrize("seconds, text", [(0, "0:00:00"), (59.6, "0:01:00"), (3661, "1:01:01"),
                                           (90061, "25:01:01")])
def test_clock(seconds, text):
    assert clock(seconds) == text


def test_validate_prints_the_estimate(tmp_path, image_file):
    svd_xt = load_calibrations()["svd-xt"].s_per_video
    rows = [{"id": f"x{i}", "model": "random-svd-xt", "image": str(image_file)} for i in range(4)]
    rows += [{"id": "svd", "model": "random-svd", "image": str(image_file), "num_inference_steps": 50},
             {"id": "wan", "model": "random-wan-1.3b", "prompt": "x"},
             {"id": "tiny", "model": "tiny-animatediff", "prompt": "x"},
             {"id": "bad", "model": "tiny-animatediff", "prompt": "x", "height": 60}]
    table = write_table(tmp_path / "t.parquet", rows)
    result = CliRunner().invoke(main, ["validate", str(table), "--gpus", "3"])
    assert result.exit_code == 1, result.output
    lines = result.output.splitlines()
    assert lines[:2] == ["rejected 'bad': height=60: must be divisible by 8 (nearest: 56 or 64)",
                         "8 rows: 7 ok, 1 rejected"]
    total = 4 * svd_xt + 2 * svd_xt * 14 / 25
    # SVD at twice the steps: 0.1604 of the measured video runs once, so the linear figure is 2 / 1.8396 - 1 high
    assert [line.split()[:6] for line in lines[4:6]] == [
        ["random-svd-xt", "svd-xt", "4", clock(4 * svd_xt), "measured"],
        ["random-svd", "svd", "1", clock(2 * svd_xt * 14 / 25), "scaled", "+9%"]]
    assert lines[8] == f"total GPU time {clock(total)} for 5 of 7 rows (2 left out: not calibrated or not estimated)"
    assert lines[9].startswith(f"wall time on 3 GPUs: at least {clock(total / 3)} (")
    assert lines[11] == ("figure of svd-xt: 19.7404 s a video measured at 25 frames, 1024x576, 25 steps, 2 passes, "
                         "float16 on an NVIDIA H100 80GB HBM3 (BENCHMARKS.md, Per-GPU speed; "
                         "bench/results/speed_h100.json, svd-xt, mode default)")


def test_validate_loads_no_torch(tmp_path):
    table = write_table(tmp_path / "t.parquet", [{"id": "a", "model": "random-animatediff", "prompt": "x"}])
    code = ("from jobs.cli import main\n"
            "try:\n"
            f"    main(['validate', {str(table)!r}], prog_name='render')\n"
            "except SystemExit as exc:\n"
            "    assert exc.code == 0, exc.code\n")
    assert _heavy_loaded(code) == ["pyarrow"]
