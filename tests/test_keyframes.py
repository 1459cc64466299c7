"""Long rows rendered between keyframes (chunk_mode "keyframes": tiny-ltx, tiny-wan2.2-i2v): the first keyframe,
then the others conditioned on it, then every window between two keyframes, each exactly the plain diffusers call
it stands for; the row's own image and last_image as its end keyframes; the same frames in process and over two
Ray actors."""
import numpy as np
import pytest
import torch
from diffusers.pipelines.ltx.pipeline_ltx_condition import LTXVideoCondition
from PIL import Image

import renderer
from conftest import plain_uint8, write_table
from invariants import check_invariants
from renderer.errors import RowRejected
from renderer.families.ltx import LTX
from renderer.families.pipeline_state import keyed_seed
from renderer.request import to_request
from renderer.run import RunConfig, run
from renderer.testing.videos import read_mp4
from renderer.video import write_mp4

# 33 frames in windows of 17: keyframes on frames 0, 16 and 32, windows [0, 17) and [16, 33)
ROW = {"id": "k", "prompt": "a lighthouse at dusk", "negative_prompt": "blurry", "seed": 5, "num_frames": 33,
       "num_inference_steps": 2, "params": '{"chunk_mode": "keyframes", "chunk_window": 17}'}


@pytest.fixture(scope="module")
def model():
    return renderer.load("tiny-ltx")


def plain(pipeline, key: str, **call) -> np.ndarray:
    """uint8 frames of the plain diffusers call, seeded as the renderer seeds that part of the row."""
    arguments = dict(prompt=ROW["prompt"], negative_prompt="blurry", height=32, width=32, num_inference_steps=2)
    generator = torch.Generator("cpu").manual_seed(keyed_seed(ROW["seed"], key))
    return plain_uint8(pipeline(**{**arguments, **call}, generator=generator, output_type="np").frames[0])


def pinned(*images) -> list:
    """LTXConditionPipeline's conditions: uint8 frames at the given frame indices, held fully."""
    return [LTXVideoCondition(image=Image.fromarray(frame), frame_index=index, strength=1.0)
            for frame, index in images]


def test_a_row_between_keyframes_is_the_plain_calls_it_stands_for_joined_on_their_keyframes(model):
    request = to_request(ROW, default_model="tiny-ltx")
    assert [(c.start, c.end) for c in request.plan] == [(0, 17), (16, 33)]
    text, condition = model.pipeline, LTX.sibling(model.pipeline, "LTXConditionPipeline")
    ltx = dict(guidance_scale=3.0, frame_rate=25)
    first = plain(text, "keyframe 0", num_frames=1, **ltx)[0]
    # every later keyframe: the last frame of the shortest window (9 frames) pinned to the first keyframe
    later = [plain(condition, f"keyframe {k}", num_frames=9, conditions=pinned((first, 0)), **ltx)[-1]
             for k in (1, 2)]
    keys = [first, *later]
    windows = [plain(condition, f"window {i}", num_frames=17, conditions=pinned((keys[i], 0), (keys[i + 1], 16)),
                     **ltx) for i in (0, 1)]
    frames = model.render(request)
    assert frames.shape == (33, 32, 32, 3)
    assert np.array_equal(frames, np.concatenate([windows[0], windows[1][1:]]))
    # the keyframes differ from one another: each has noise of its own
    assert not np.array_equal(later[0], later[1])


def test_the_rows_image_and_last_image_are_its_first_and_last_keyframes(model, tmp_path):
    noise = np.random.default_rng(1)
    paths = []
    for name in ("first", "last"):
        paths.append(tmp_path / f"{name}.png")
        Image.fromarray(noise.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(paths[-1])
    request = to_request({**ROW, "image": str(paths[0]), "last_image": str(paths[1])}, default_model="tiny-ltx")
    assert np.array_equal(model.render_keyframe(request, 0)[0], np.asarray(Image.open(paths[0])))
    assert np.array_equal(model.render_keyframe(request, 2)[0], np.asarray(Image.open(paths[1])))
    assert model.render(request).shape == (33, 32, 32, 3)


def test_wan_2_2_renders_its_keyframes_and_windows_from_the_rows_image_with_one_model(tmp_path):
    wan = renderer.load("tiny-wan2.2-i2v")
    Image.fromarray(np.random.default_rng(2).integers(0, 256, (48, 40, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    row = {**ROW, "image": str(tmp_path / "a.png"), "num_frames": 17, "params": '{"chunk_mode": "keyframes", '
                                                                              '"chunk_window": 9}'}
    request = to_request(row, default_model="tiny-wan2.2-i2v")
    # keyframes on frames 0 (the row's image, at the row's size), 8 and 16; windows [0, 9) and [8, 17)
    first = np.asarray(Image.open(tmp_path / "a.png").resize((32, 32), Image.Resampling.LANCZOS))
    call = dict(guidance_scale=5.0)
    later = [plain(wan.pipeline, f"keyframe {k}", image=Image.fromarray(first), num_frames=5, **call)[-1]
             for k in (1, 2)]
    keys = [first, *later]
    windows = [plain(wan.pipeline, f"window {i}", image=Image.fromarray(keys[i]), num_frames=9,
                     last_image=Image.fromarray(keys[i + 1]), **call) for i in (0, 1)]
    assert np.array_equal(wan.render(request), np.concatenate([windows[0], windows[1][1:]]))


@pytest.mark.parametrize("model_name, params, message", [
    ("tiny-ltx", '{"chunk_mode": "keyframes", "chunk_overlap": 4}', "params.chunk_overlap=4: must be 1 (or left "
                                                                    "out) with keyframes"),
    ("tiny-wan", '{"chunk_mode": "keyframes"}', "params.chunk_mode='keyframes': must be one of anchored"),
])
def test_keyframes_where_they_cannot_be_are_rejected(model_name, params, message):
    row = {**ROW, "num_frames": 33 if model_name == "tiny-ltx" else 97, "params": params}
    with pytest.raises(RowRejected) as caught:
        to_request(row, default_model=model_name)
    assert str(caught.value).startswith(message)


def test_two_actors_render_the_same_frames_as_one_process(model, ray_session, tmp_path):
    # 128x128: x264 encodes frames this size the same every time (not 64x64), so the files can be compared
    row = {**ROW, "height": 128, "width": 128}
    out = tmp_path / "out"
    summary = run(RunConfig(tables=(str(write_table(tmp_path / "t.parquet", [row])),), out=out, model="tiny-ltx",
                            actors=2, threads_per_actor=1))
    record = check_invariants(out, ["k"], summary.exit_code)["k"]
    assert (record["num_frames"], record["chunks"], record["chunk_mode"]) == (33, 2, "keyframes")
    assert len(record["seams"]) == 1 and np.isfinite(record["seams"]).all()
    # as the actors ran: one thread (results may differ in the last bit between thread counts)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        write_mp4(model.render(row), tmp_path / "here.mp4", 25)
    finally:
        torch.set_num_threads(threads)
    assert np.array_equal(read_mp4(out / record["video_path"])[0], read_mp4(tmp_path / "here.mp4")[0])
