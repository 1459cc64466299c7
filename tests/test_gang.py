"""Gangs: two Ray actors render one video together (diffusers' context parallelism over gloo on the CPU), each
with half of the transformer's tokens, and the leader ends with the frames one process renders alone, bit for bit;
through `render run`, a gang that loses a member, stalls or meets a poison row breaks and forms again."""
import numpy as np
import pytest
import ray
import torch
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

import renderer
from conftest import own_ray_workers
from renderer.options import LoadOptions
from renderer.ray_replica import RenderActor
from renderer.request import to_request

# 9 frames at 32x32: 3 latent frames of 2x2 tokens, 12 tokens and 2 heads, which a gang of 2 divides
ROW = {"id": "a", "prompt": "a red kite over a beach", "negative_prompt": "blurry", "seed": 3, "num_frames": 9,
       "num_inference_steps": 2}


@pytest.fixture
def members(ray_session):
    """Two tiny-wan actors on one node, one thread each, as a gang's placement group places them."""
    group = placement_group([{"CPU": 1}] * 2, strategy="STRICT_PACK")
    ray.get(group.ready())
    actors = [RenderActor.options(num_cpus=1, scheduling_strategy=PlacementGroupSchedulingStrategy(
        placement_group=group, placement_group_bundle_index=rank)).remote("tiny-wan", "cpu", 1, LoadOptions())
        for rank in range(2)]
    ray.get([actor.ready.remote() for actor in actors])
    yield actors
    for actor in actors:
        ray.kill(actor)
    remove_placement_group(group)


def gang_render(members, mode: str, request):
    """Both members joined as a gang in `mode` render `request`: (the degrees they enabled, their frames)."""
    port = ray.get(members[0].gang_port.remote())
    degrees = ray.get([actor.join_gang.remote(rank, 2, port, mode, 60.0) for rank, actor in enumerate(members)])
    # every member renders the same request; the transformer's collectives pair their calls up
    calls = [actor.render.remote(request) for actor in members]
    return degrees, [ray.get(call[0]) for call in calls]


def one_process(request):
    """The request's frames rendered here alone, on one thread as the members run."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return renderer.load("tiny-wan").render(request)
    finally:
        torch.set_num_threads(threads)


def test_a_gang_of_two_renders_the_frames_one_process_renders(members):
    request = to_request(ROW, default_model="tiny-wan")
    degrees, frames = gang_render(members, "ulysses", request)
    assert degrees == [{"transformer": (1, 2)}] * 2
    assert frames[0].shape == (9, 32, 32, 3) and np.array_equal(frames[0], one_process(request))
    # the follower's frames would be the same: it stops at the latents, and only the leader decodes
    assert frames[1] is None


def test_ulysses_anything_shards_a_token_count_the_gang_does_not_divide(members):
    # 16x48: 1x3 tokens a latent frame, 9 tokens over 2 members
    request = to_request({**ROW, "height": 16, "width": 48}, default_model="tiny-wan")
    _, frames = gang_render(members, "ulysses_anything", request)
    assert np.array_equal(frames[0], one_process(request))


def test_a_transformer_without_a_context_parallel_plan_is_refused_by_name():
    from renderer import gang

    with pytest.raises(ValueError, match="UNet3DConditionModel has no context-parallel plan"):
        gang.enable(renderer.load("tiny-modelscope").pipeline, 2)


# 128x128 (x264 encodes frames this size the same every time, so two runs' files compare): 192 tokens, 2 heads
SIZE = dict(height=128, width=128, num_inference_steps=2)


def rows(*ids):
    return [dict(id=row_id, prompt=f"a lighthouse {row_id}", **SIZE) for row_id in ids]


def render(tmp_path, name, table_rows, **options):
    """A `render run` of tiny-wan; (summary, records, frames by id)."""
    from conftest import write_table
    from invariants import check_invariants
    from renderer.run import RunConfig, run
    from renderer.testing.videos import read_mp4

    out = tmp_path / name
    table = str(write_table(tmp_path / f"{name}.parquet", table_rows))
    summary = run(RunConfig(tables=(table,), out=out, model="tiny-wan", threads_per_actor=1, **options))
    records = check_invariants(out, [r["id"] for r in table_rows], summary.exit_code)
    frames = {i: read_mp4(out / r["video_path"])[0] for i, r in records.items() if r["status"] == "ok"}
    return summary, records, frames


@pytest.fixture
def alone(ray_session, tmp_path_factory):
    """The frames one device per video renders of rows a, b, c."""
    return render(tmp_path_factory.mktemp("alone"), "alone", rows("a", "b", "c"))[2]


def live_render_actors(settle_s: float = 10.0) -> int:
    """This session's RenderActor processes still running, once those being killed had `settle_s` to exit."""
    import time

    deadline = time.monotonic() + settle_s
    while (running := len(own_ray_workers("ray::RenderActor"))) and time.monotonic() < deadline:
        time.sleep(0.5)
    return running


def test_render_run_with_two_gpus_per_video_renders_the_frames_of_one(alone, tmp_path):
    summary, records, frames = render(tmp_path, "gang", rows("a", "b", "c"), gpus_per_video=2)
    assert summary.counts == {"ok": 3}
    assert all((r["gpus"], r["parallel"], r["attempts"]) == (2, "ulysses", 1) for r in records.values())
    assert all(np.array_equal(frames[i], alone[i]) for i in "abc")
    # the gangs' members end with the run
    assert live_render_actors() == 0


def test_a_member_killed_mid_row_breaks_the_gang_which_forms_again(alone, tmp_path, inject):
    from renderer.testing import faults

    inject({"point": "render", "fault": "kill", "id": "b", "times": 1})
    summary, records, frames = render(tmp_path, "killed", rows("a", "b", "c"), gpus_per_video=2)
    assert len(faults.fired("render", "b", "kill")) == 1
    assert summary.counts == {"ok": 3}
    # charged once, on the row the member died in; the rows queued behind it went again free
    assert records["b"]["attempts"] == 2 and records["a"]["attempts"] == records["c"]["attempts"] == 1
    assert all(np.array_equal(frames[i], alone[i]) for i in "abc")
    assert live_render_actors() == 0


def test_a_stalled_member_times_the_collective_out_and_the_gang_forms_again(alone, tmp_path, inject):
    from renderer.testing import faults

    inject({"point": "render", "fault": "hang", "id": "b", "times": 1})
    summary, records, frames = render(tmp_path, "stalled", rows("a", "b", "c"), gpus_per_video=2,
                                      collective_timeout=5.0)
    assert len(faults.fired("render", "b", "hang")) == 1
    assert summary.counts == {"ok": 3} and records["b"]["attempts"] == 2
    assert np.array_equal(frames["b"], alone["b"])


def test_a_row_that_breaks_the_gang_every_time_fails_and_the_others_render(ray_session, tmp_path, inject):
    inject({"point": "render", "fault": "kill", "id": "poison"})
    summary, records, _ = render(tmp_path, "poison", rows("poison", "a"), gpus_per_video=2, max_attempts=2)
    assert summary.counts == {"ok": 1, "failed": 1}
    assert records["poison"]["attempts"] == 2 and "a gang member failed" in records["poison"]["error"]
    assert records["a"]["status"] == "ok"


def test_a_gang_model_and_a_one_device_model_share_a_run_and_a_long_row_renders_over_the_gang(ray_session, tmp_path):
    table_rows = [dict(id="long", model="tiny-wan", prompt="a kite", num_frames=97, num_inference_steps=2),
                  dict(id="unet", model="tiny-animatediff", prompt="a fox", num_frames=4, num_inference_steps=2)]
    summary, records, frames = render(tmp_path, "mixed", table_rows, gpus_per_video=2)
    assert summary.counts == {"ok": 2}
    long, unet = records["long"], records["unet"]
    # AnimateDiff's UNet has no context-parallel plan: one device per video
    assert (long["gpus"], long["parallel"], unet["gpus"], unet["parallel"]) == (2, "ulysses", 1, None)
    assert (long["chunks"], frames["long"].shape[0]) == (2, 97) and np.isfinite(long["seams"]).all()


def test_the_gang_benchmark_times_one_device_and_a_gang_of_two_on_the_same_rows(tmp_path):
    import json
    import subprocess
    import sys

    from conftest import ROOT

    out = tmp_path / "gang.json"
    subprocess.run([sys.executable, str(ROOT / "bench" / "gang.py"), str(out), "--rows", "3", "--steps", "2"],
                   check=True, timeout=600)
    report = json.loads(out.read_text())
    assert [r["gpus_per_video"] for r in report["results"]] == [1, 2] and report["frames_equal"]
    assert all(r["first_video_s"] > 0 and r["s_per_video"] > 0 for r in report["results"])
