"""A gang of two Ray actors renders one video together (diffusers' context parallelism over gloo on the CPU): each
member shards the transformer's tokens, and both end with the frames one process renders alone, bit for bit."""
import numpy as np
import pytest
import ray
import torch
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

import renderer
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


def test_a_gang_of_two_renders_the_frames_one_process_renders(members):
    port = ray.get(members[0].gang_port.remote())
    degrees = ray.get([actor.join_gang.remote(rank, 2, port, "ulysses", 60.0) for rank, actor in enumerate(members)])
    assert degrees == [{"transformer": (1, 2)}] * 2
    request = to_request(ROW, default_model="tiny-wan")
    # every member renders the same request; the transformer's collectives pair their calls up
    calls = [actor.render.remote(request) for actor in members]
    frames = [ray.get(call[0]) for call in calls]
    # one process on one thread, as the members run
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        alone = renderer.load("tiny-wan").render(request)
    finally:
        torch.set_num_threads(threads)
    assert frames[0].shape == (9, 32, 32, 3)
    assert np.array_equal(frames[0], alone) and np.array_equal(frames[1], alone)


def test_a_transformer_without_a_context_parallel_plan_is_refused_by_name():
    from renderer import gang

    with pytest.raises(ValueError, match="UNet3DConditionModel has no context-parallel plan"):
        gang.enable(renderer.load("tiny-modelscope").pipeline, 2)
