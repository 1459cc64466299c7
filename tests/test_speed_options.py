"""Speed options on the CPU: the step cache really skips the deep layers of every family's UNet, keeps the
shallow skip connections fresh and stays per row, the compiled denoiser is one graph per kind of step and
renders the eager frames, the options are checked, and the speed benchmarks' harnesses run end to end on tiny
presets (their numbers come from a GPU, or count FLOPs)."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import ROOT
from renderer import RowRejected, load
from renderer.options import LoadOptions
from renderer.request import to_request
from renderer.testing.videos import read_mp4

ROW = dict(prompt="a fox in the snow", num_frames=6, num_inference_steps=6, seed=11)


@pytest.fixture(scope="module")
def animatediff():
    return load("tiny-animatediff")


def calls_of(module) -> list:
    calls = []
    module.register_forward_hook(lambda *_: calls.append(1))
    return calls


IMAGE = str(ROOT / "examples" / "images" / "dusk.png")
CACHED_FAMILIES = {  # a row of each family with a step cache
    "tiny-animatediff": ROW,
    "tiny-pia": {**ROW, "image": IMAGE},
    "tiny-i2vgenxl": {**ROW, "image": IMAGE},
    "tiny-modelscope": ROW,
    "tiny-svd": {"image": IMAGE, "num_frames": 6, "num_inference_steps": 6, "seed": 11},
}


def first_input(args, kwargs):
    return args[0] if args else next(iter(kwargs.values()))


@pytest.mark.parametrize("preset", CACHED_FAMILIES)
def test_step_cache_runs_the_deep_layers_on_one_step_in_n_and_keeps_the_shallow_skips_fresh(preset):
    model = load(preset)
    unet, row = model.pipeline.unet, CACHED_FAMILIES[preset]
    first, last = unet.down_blocks[0], unet.up_blocks[-1]
    # the first child of a cached resnet runs only on full steps (the resnet is still called, and hands back its
    # output); the last up block's last two resnets run on every step
    inner = lambda resnet: next(resnet.children())  # noqa: E731
    deep = [calls_of(inner(resnet)) for resnet in (unet.mid_block.resnets[0], *first.resnets[1:], *last.resnets[:-2])]
    shallow = [calls_of(inner(resnet)) for resnet in (first.resnets[0], *last.resnets[-2:])]
    # the tensors the fresh up layers must take as skip connections: the first down block's input (conv_in's
    # output) and its first layer's output
    skips, taken = [], []
    after_first_layer = first.resnets[1] if len(first.resnets) > 1 else first.downsamplers[0]
    for module in (first, after_first_layer):
        module.register_forward_pre_hook(lambda m, a, k: skips.append(first_input(a, k).clone()), with_kwargs=True)
    for resnet in last.resnets[-2:]:
        resnet.register_forward_pre_hook(lambda m, a, k: taken.append(first_input(a, k).clone()), with_kwargs=True)

    plain = model.render(row)
    assert [len(c) for c in deep + shallow] == [6] * (len(deep) + len(shallow))
    skips.clear(), taken.clear()
    cached = model.render({**row, "params": json.dumps({"step_cache": 3})})
    assert [len(c) for c in deep] == [6 + 2] * len(deep)  # steps 0 and 3 run the deep layers
    assert [len(c) for c in shallow] == [6 + 6] * len(shallow)
    for step in range(6):  # concatenated in reverse: the last resnet takes conv_in's output
        conv_in, first_layer = skips[2 * step:2 * step + 2]
        for skip, got in ((first_layer, taken[2 * step]), (conv_in, taken[2 * step + 1])):
            assert torch.equal(got[:, -skip.shape[1]:], skip)
    error = np.mean((plain.astype(float) - cached.astype(float)) ** 2)
    assert 0 < error and 10 * np.log10(255 ** 2 / error) > 20  # close to the uncached frames, not equal
    assert np.array_equal(model.render(row), plain)  # the next row is not cached


def test_compile_runs_the_denoiser_as_one_graph_per_kind_of_step_and_renders_the_eager_frames(animatediff):
    from torch._dynamo.utils import counters

    compiled = load("tiny-animatediff", options=LoadOptions(compile=True))
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
    from conftest import write_table
    from renderer.errors import ConfigError
    from renderer.run import RunConfig, run

    table = write_table(tmp_path / "t.parquet", [dict(id="a", **ROW)])
    with pytest.raises(ConfigError, match="--dtype bfloat16 needs CUDA"):
        run(RunConfig(tables=(str(table),), out=tmp_path / "out", model="tiny-animatediff",
                      load=LoadOptions(dtype="bfloat16")))


def test_attention_backends_are_diffusers_names_and_the_cuda_ones_need_cuda(ray_session, tmp_path):
    from click.testing import CliRunner

    from conftest import write_table
    from jobs.cli import main
    from renderer.errors import ConfigError
    from renderer.run import RunConfig, run

    table = write_table(tmp_path / "t.parquet", [dict(id="a", prompt="a fox", num_inference_steps=2)])
    result = CliRunner().invoke(main, ["run", str(table), "--out", str(tmp_path / "o"), "--attention", "fast"])
    assert result.exit_code == 2 and "'fast' is not a diffusers attention backend (flash, " in result.output
    with pytest.raises(ConfigError, match="--attention flash needs CUDA: on the CPU the backends are native, "):
        run(RunConfig(tables=(str(table),), out=tmp_path / "out", model="tiny-wan",
                      load=LoadOptions(attention_backend="flash")))


def test_speed_benchmark_harness_measures_every_mode_on_tiny_presets(tmp_path):
    out = tmp_path / "bench"
    subprocess.run([sys.executable, str(ROOT / "bench" / "speed.py"), str(out), "--preset", "tiny", "--size", "64x64",
                    "--steps", "4", "--rows", "2", "--workloads", "animatediff,wan", "--modes", "bare,default,cache2"],
                   check=True, timeout=1200)
    report = json.loads((out / "speed.json").read_text())
    for workload, frames in (("animatediff", 16), ("wan", 81)):
        results = {r["mode"]: r for r in report["results"] if r["workload"] == workload}
        assert set(results) == {"bare", "default", "cache2"}
        for r in results.values():
            assert r["videos"] == 2 and r["s_per_video"] > 0 and r["vs_bare"] > 0 and r["denoiser_tflops"] > 0
            for path in r["videos_paths"].values():
                assert read_mp4(path)[0].shape == (frames, 64, 64, 3)
        assert results["bare"]["vs_bare"] == 1.0 and report["denoiser_flops_per_step"][workload] > 0
        # DeepCache on the UNet, TaylorSeer on Wan's transformer: both reuse steps, so the frames differ a little
        assert results["cache2"]["psnr_reference"] == "default" and 10 < results["cache2"]["psnr_db_vs_uncached"]


def test_step_cache_flops_benchmark_counts_each_branch_on_tiny_presets(tmp_path):
    out = tmp_path / "flops.json"
    subprocess.run([sys.executable, str(ROOT / "bench" / "step_cache_flops.py"), str(out), "--preset", "tiny",
                    "--size", "64x64", "--frames", "4"], check=True, timeout=600)
    results = {(r["workload"], r["branch"]): r for r in json.loads(out.read_text())["results"]}
    for workload in ("svd-xt", "animatediff"):
        block, shallowest = results[workload, "block"], results[workload, "shallowest"]
        assert block["full_tflop"] == shallowest["full_tflop"] > 0  # the same UNet, uncached
        assert 0 < shallowest["reusing_tflop"] < block["reusing_tflop"] < block["full_tflop"]
        shares = list(shallowest["video_flops_share_by_interval"].values())
        assert shares == sorted(shares, reverse=True) and shares[0] < 1  # longer intervals reuse more steps


def test_transformer_cache_flops_benchmark_counts_what_each_cache_skips_on_tiny_presets(tmp_path):
    out = tmp_path / "flops.json"
    subprocess.run([sys.executable, str(ROOT / "bench" / "transformer_cache_flops.py"), str(out), "--preset", "tiny",
                    "--size", "64x64", "--frames", "9"], check=True, timeout=600)
    results = {(r["workload"], r["cache"]): r for r in json.loads(out.read_text())["results"]}
    for workload in ("wan", "ltx"):
        first_block, taylorseer = results[workload, "first_block"], results[workload, "taylorseer"]
        assert first_block["full_tflop_per_step"] == taylorseer["full_tflop_per_step"] > 0
        # a reusing step runs less than a full one; TaylorSeer's video share falls as its interval grows
        assert 0 < first_block["reusing_over_full"] < 1 and 0 <= taylorseer["reusing_over_full"] < 1
        shares = list(taylorseer["video_flops_share_by_interval"].values())
        assert shares == sorted(shares, reverse=True) and shares[0] < 1
