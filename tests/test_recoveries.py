"""GPU-side faults, injected on the CPU through renderer/testing/faults.py: out of memory, NaN frames, a poisoned CUDA
context. Each test first proves that its fault fired (the fault log), then checks what the record says."""
from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image

from conftest import write_table
from invariants import check_invariants
from renderer import load
from renderer.model import memory_rungs
from renderer.request import to_request
from renderer.run import RunConfig, run
from renderer.testing import faults

FAST = dict(num_frames=6, num_inference_steps=2)


@pytest.fixture(scope="module")
def animatediff():
    return load("tiny-animatediff")


def request(row_id="r", **params):
    return to_request({"id": row_id, "prompt": "a fox", "params": json.dumps(params) if params else None, **FAST},
                      default_model="tiny-animatediff")


def test_memory_ladder_shrinks_decodes_then_tiles_then_offloads():
    from renderer.families.registry import FAMILIES

    rungs = memory_rungs(FAMILIES["animatediff"], request(), "cuda")
    assert rungs == [{"decode_chunk_size": 3, "vae_slicing": True},
                     {"decode_chunk_size": 1, "vae_tiling": True, "forward_chunking": 1}, {"cpu_offload": True}]
    assert memory_rungs(FAMILIES["animatediff"], request(), "cuda", offloaded=True)[-1] != {"cpu_offload": True}
    png = io.BytesIO()
    Image.new("RGB", (64, 64)).save(png, "PNG")
    svd_request = to_request({"id": "s", "image": png.getvalue()}, default_model="tiny-svd")
    svd = memory_rungs(FAMILIES["svd"], svd_request, "cpu")
    assert svd == [{"decode_chunk_size": 7}, {"decode_chunk_size": 1, "forward_chunking": 1}]  # SVD has no slicing


def test_out_of_memory_climbs_the_ladder_and_the_next_row_renders_plainly(animatediff, inject):
    inject({"point": "render", "fault": "oom", "id": "r", "times": 2})
    plain = animatediff.render(request("other"))
    frames = animatediff.render(request("r"))
    assert len(faults.fired("render", "r", "oom")) == 2
    assert animatediff.recoveries == ["out_of_memory: decode_chunk_size=3, vae_slicing=True",
                                      "out_of_memory: decode_chunk_size=1, vae_tiling=True, forward_chunking=1"]
    assert frames.shape == plain.shape == (6, 64, 64, 3)
    again = animatediff.render(request("other"))
    assert animatediff.recoveries == [] and np.array_equal(again, plain)  # no option leaked into the next row
    assert not animatediff.pipeline.vae.use_slicing and not animatediff.pipeline.vae.use_tiling


def test_out_of_memory_past_the_last_rung_raises(animatediff, inject):
    import torch

    inject({"point": "render", "fault": "oom", "id": "r"})
    with pytest.raises(torch.OutOfMemoryError):
        animatediff.render(request("r"))
    assert len(faults.fired("render", "r", "oom")) == 3  # the first try and two rungs (no offload on the CPU)


def test_nan_frames_are_retried_once_with_a_float32_vae(animatediff, inject):
    from renderer.errors import BadOutput

    inject({"point": "output", "fault": "nan", "id": "once", "times": 1},
           {"point": "output", "fault": "nan", "id": "always"},
           {"point": "output", "fault": "black", "id": "dark", "times": 1})
    assert animatediff.render(request("once")).shape == (6, 64, 64, 3)
    assert animatediff.recoveries == ["nan_output: vae_float32=True"]
    animatediff.render(request("dark"))
    assert animatediff.recoveries == ["black_output: vae_float32=True"]
    with pytest.raises(BadOutput, match="nan_output.*again with the VAE in float32"):
        animatediff.render(request("always"))
    assert len(faults.fired("output", "always", "nan")) == 2


def test_run_records_recoveries_fails_bad_output_for_good_and_replaces_a_poisoned_actor(ray_session, tmp_path, inject):
    inject({"point": "render", "fault": "oom", "id": "oom", "times": 1},
           {"point": "output", "fault": "nan", "id": "nan"},
           {"point": "render", "fault": "cuda_error", "id": "poisoned", "times": 1})
    rows = [dict(id=i, prompt=f"scene {i}", **FAST) for i in ("oom", "nan", "poisoned", "plain")]
    out = tmp_path / "out"
    summary = run(RunConfig(tables=(str(write_table(tmp_path / "t.parquet", rows)),), out=out, model="tiny-animatediff",
                            actors=1))
    fired = [len(faults.fired(p, i)) for p, i in (("render", "oom"), ("output", "nan"), ("render", "poisoned"))]
    assert fired == [1, 2, 1]
    records = check_invariants(out, [row["id"] for row in rows], summary.exit_code)
    assert records["oom"]["status"] == "ok"
    assert records["oom"]["recoveries"] == ["out_of_memory: decode_chunk_size=3, vae_slicing=True"]
    nan = records["nan"]
    assert (nan["status"], nan["attempts"], nan["video_path"]) == ("failed", 1, None)  # not retried by the dispatcher
    assert nan["error"].startswith("nan_output")
    poisoned = records["poisoned"]  # the actor process exited and came back as a new process
    assert poisoned["status"] == "ok" and poisoned["actor"] != records["oom"]["actor"]
    assert poisoned["attempts"] == 2  # charged for the death it caused
    plain = records["plain"]  # queued behind it on the same actor: requeued without charge
    assert plain["status"] == "ok" and plain["recoveries"] is None and plain["attempts"] == 1
    assert summary.exit_code == 1 and summary.counts == {"ok": 3, "failed": 1}


def test_a_transformer_offloads_its_blocks_before_the_whole_pipeline_and_renders_the_same():
    from renderer import denoiser
    from renderer.families.registry import FAMILIES

    wan_request = to_request({"id": "w", "prompt": "a fox", "num_inference_steps": 2}, default_model="tiny-wan")
    assert memory_rungs(FAMILIES["wan"], wan_request, "cuda", transformer=True)[-2:] == [{"group_offload": True},
                                                                                      {"cpu_offload": True}]
    assert {"group_offload": True} not in memory_rungs(FAMILIES["animatediff"], request(), "cuda")
    wan = load("tiny-wan")
    plain = wan.render(wan_request)
    # the CPU stands in for the GPU: the blocks move between two copies on one device, through the same hooks
    denoiser.offload_groups(wan.pipeline, "cpu")
    assert wan.pipeline.transformer.blocks[0]._diffusers_hook.get_hook("group_offloading") is not None
    assert np.array_equal(wan.render(wan_request), plain)
    denoiser.restore_groups(wan.pipeline, "cpu")
    assert wan.pipeline.transformer.blocks[0]._diffusers_hook.get_hook("group_offloading") is None
    assert np.array_equal(wan.render(wan_request), plain)
