"""Speed options on the CPU: the step cache really skips the deep blocks and stays per row, the compiled
denoiser is one graph per kind of step and renders the eager frames, the options are checked, and the speed
benchmark's harness runs end to end on tiny presets (its numbers come from a GPU)."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT
from renderer import RowRejected, load
from renderer.request import to_request
from renderer.video import read_mp4

ROW = dict(prompt="a fox in the snow", num_frames=6, num_inference_steps=6, seed=11)


@pytest.fixture(scope="module")
def animatediff():
    return load("tiny-animatediff")


def calls_of(module) -> list:
    calls = []
    module.register_forward_hook(lambda *_: calls.append(1))
    return calls


def test_step_cache_runs_the_deep_blocks_on_one_step_in_n_and_stays_with_its_row(animatediff):
    unet = animatediff.pipeline.unet
    # modules inside the blocks: a cached block is still called, but hands back its output without running them
    deep, shallow = calls_of(unet.mid_block.resnets[0]), calls_of(unet.up_blocks[-1].resnets[0])
    plain = animatediff.render(ROW)
    assert (len(deep), len(shallow)) == (6, 6)
    cached = animatediff.render({**ROW, "params": json.dumps({"step_cache": 3})})
    assert (len(deep), len(shallow)) == (6 + 2, 6 + 6)  # steps 0 and 3 run the deep blocks, every step the shallow
    error = np.mean((plain.astype(float) - cached.astype(float)) ** 2)
    assert 0 < error and 10 * np.log10(255 ** 2 / error) > 20  # close to the uncached frames, not equal
    assert np.array_equal(animatediff.render(ROW), plain)  # the next row is not cached


def test_compile_runs_the_denoiser_as_one_graph_per_kind_of_step_and_renders_the_eager_frames(animatediff):
    from torch._dynamo.utils import counters

    compiled = load("tiny-animatediff", compile=True)
    counters.clear()
    for params in ({}, {"step_cache": 3}):
        row = {**ROW, "params": json.dumps(params)}
        difference = np.abs(compiled.render(row).astype(int) - animatediff.render(row).astype(int))
        assert difference.max() <= 2 and difference.mean() < 0.01  # fused kernels round a few values differently
    assert not counters["graph_break"]  # a break would split the graph and lose fusion silently
    # the plain step; with the cache, a full step that keeps the deep features and a step that reuses them
    assert counters["stats"]["unique_graphs"] == 3
    compiled.render({**ROW, "seed": 12})
    assert counters["stats"]["unique_graphs"] == 3  # a row of a shape seen before compiles nothing


def test_step_cache_is_checked_per_row():
    with pytest.raises(RowRejected, match="params.step_cache.*free_init"):
        to_request({"id": "a", **ROW, "params": json.dumps({"step_cache": 3, "free_init": True})},
                   default_model="tiny-animatediff")
    with pytest.raises(RowRejected, match="params.step_cache"):
        to_request({"id": "a", **ROW, "params": json.dumps({"step_cache": 1})}, default_model="tiny-animatediff")
    with pytest.raises(RowRejected, match="params.step_cache"):  # cross-frame attention families have no cache
        to_request({"id": "a", **ROW, "params": json.dumps({"step_cache": 3})}, default_model="tiny-t2v-zero")


def test_dtype_needs_cuda(ray_session, tmp_path):
    from renderer.errors import ConfigError
    from renderer.run import RunConfig, run

    from conftest import write_table

    table = write_table(tmp_path / "t.parquet", [dict(id="a", **ROW)])
    with pytest.raises(ConfigError, match="--dtype bfloat16 needs CUDA"):
        run(RunConfig((str(table),), tmp_path / "out", model="tiny-animatediff", dtype="bfloat16"))


def test_speed_benchmark_harness_measures_every_mode_on_tiny_presets(tmp_path):
    out = tmp_path / "bench"
    subprocess.run([sys.executable, str(ROOT / "bench" / "speed.py"), str(out), "--preset", "tiny", "--size", "64x64",
                    "--steps", "2", "--rows", "2", "--workloads", "animatediff", "--modes", "bare,default,cache4"],
                   check=True, timeout=900)
    report = json.loads((out / "speed.json").read_text())
    results = {r["mode"]: r for r in report["results"]}
    assert set(results) == {"bare", "default", "cache4"}
    for mode, r in results.items():
        assert r["videos"] == 2 and r["s_per_video"] > 0 and r["vs_bare"] > 0 and r["denoiser_tflops"] > 0
        for path in r["videos_paths"].values():
            assert read_mp4(path)[0].shape == (16, 64, 64, 3)
    assert results["bare"]["vs_bare"] == 1.0 and report["unet_flops_per_step"]["animatediff"] > 0
    assert results["cache4"]["psnr_reference"] == "default" and results["cache4"]["psnr_db_vs_uncached"] > 10
