"""AnimateDiff extras: FreeInit, FreeNoise, schedulers and memory options reach the pipeline."""
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from diffusers import DPMSolverMultistepScheduler

import renderer
from conftest import plain_uint8, write_table
from jobs.cli import main
from renderer.errors import RowRejected
from renderer.request import to_request

ROW = {"id": "a", "prompt": "a paper boat on a pond", "seed": 21, "num_frames": 8, "num_inference_steps": 3}


@pytest.fixture(scope="module")
def model():
    return renderer.load("tiny-animatediff")


def plain(model, **extra):
    frames = model.pipeline(prompt=ROW["prompt"], num_frames=extra.pop("num_frames", 8), height=64, width=64,
                            num_inference_steps=3, generator=torch.Generator("cpu").manual_seed(21),
                            output_type="np", **extra).frames[0]
    return plain_uint8(frames)


def test_free_init_equals_the_plain_call_and_does_not_leak(model):
    before = model.render(ROW)
    with_free_init = model.render({**ROW, "params": '{"free_init": {"num_iters": 2, "method": "gaussian"}}'})
    model.pipeline.enable_free_init(num_iters=2, method="gaussian")
    try:
        assert np.array_equal(with_free_init, plain(model))
    finally:
        model.pipeline.disable_free_init()
    assert not np.array_equal(before, with_free_init)
    assert np.array_equal(before, model.render(ROW))


def test_free_noise_renders_a_long_row_in_one_call_instead_of_chunks(model):
    free_noise = '{"free_noise": {"context_length": 8, "context_stride": 4}}'
    assert len(to_request({"id": "r", **ROW, "num_frames": 24}, default_model="tiny-animatediff").plan) == 2
    assert len(to_request({"id": "r", **ROW, "num_frames": 24, "params": free_noise},
                          default_model="tiny-animatediff").plan) == 1
    frames = model.render({**ROW, "num_frames": 24, "params": free_noise})
    model.pipeline.enable_free_noise(context_length=8, context_stride=4)
    try:
        assert np.array_equal(frames, plain(model, num_frames=24))
    finally:
        model.pipeline.disable_free_noise()
    assert frames.shape == (24, 64, 64, 3)
    assert np.array_equal(model.render(ROW), plain(model))  # FreeNoise is off again for the next row


def test_dpm_solver_row_equals_the_plain_call_with_that_scheduler(model):
    frames = model.render({**ROW, "params": '{"scheduler": "dpm++"}'})
    original = model.pipeline.scheduler
    model.pipeline.scheduler = DPMSolverMultistepScheduler.from_config(original.config)
    try:
        assert np.array_equal(frames, plain(model))
    finally:
        model.pipeline.scheduler = original


def test_memory_options_reach_the_pipeline(model):
    base = model.render(ROW)
    light = model.render({**ROW, "params": '{"vae_slicing": true, "forward_chunking": 2}'})
    assert np.abs(base.astype(int) - light).max() <= 1  # same maths, another float summation order
    # tiling decodes overlapping tiles and blends their seams: an approximation, visible on 64 px frames
    assert not np.array_equal(base, model.render({**ROW, "params": '{"vae_tiling": true}'}))
    assert np.array_equal(base, model.render(ROW))


@pytest.mark.parametrize("params, key", [
    ('{"free_init": {"iterations": 2}}', "params.free_init.iterations"),
    ('{"free_init": {"num_iters": "two"}}', "params.free_init.num_iters"),
    ('{"free_noise": 16}', "params.free_noise"),
    ('{"forward_chunking": 0}', "params.forward_chunking"),
    ('{"vae_slicing": "yes"}', "params.vae_slicing"),
])
def test_bad_options_are_rejected_naming_the_key(model, params, key):
    with pytest.raises(RowRejected) as info:
        model.render({**ROW, "params": params})
    assert str(info.value).startswith(f"{key}=")


def test_cpu_offload_without_cuda_is_a_usage_error(ray_session, tmp_path):
    table = write_table(tmp_path / "t.parquet", [{"id": "a", "prompt": "x"}])
    result = CliRunner().invoke(main, ["run", str(table), "--out", str(tmp_path / "out"), "--model",
                                       "tiny-animatediff", "--cpu-offload", "--device", "cpu"])
    assert result.exit_code == 2 and "--cpu-offload needs CUDA" in result.output
