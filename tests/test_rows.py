"""Row-level rules, seeds and output paths: pure, table-driven, no Ray and no weights."""

import numpy as np
import pytest

from renderer.errors import RowRejected
from renderer.paths import slug, video_relpath
from renderer.request import derive_seed, to_request
from renderer.video import write_mp4


def request(row, **kw):
    return to_request({"id": "r", **row}, default_model=kw.pop("model", None), **kw)


def test_defaults_come_from_the_model():
    req = request({"prompt": "a cat"}, model="tiny-animatediff")
    assert (req.num_frames, req.height, req.width, req.num_inference_steps, req.fps, req.guidance_scale) == \
        (16, 64, 64, 4, 8, 7.5)
    assert req.seed == derive_seed(0, "r") and req.family == "animatediff"


def test_typed_columns_and_params_are_kept(image_file):
    req = request({"image": image_file.name, "model": "tiny-svd", "num_frames": 10, "fps": 5, "seed": 9,
                   "guidance_scale": 2, "params": '{"motion_bucket_id": 30, "noise_aug_strength": 0}'},
                  table_dir=image_file.parent)
    assert (req.num_frames, req.fps, req.seed, req.guidance_scale) == (10, 5, 9, 2.0)
    assert req.params == {"motion_bucket_id": 30, "noise_aug_strength": 0.0}
    assert req.image == str(image_file.resolve())


BAD_ROWS = [  # (row, column named in the error, words of the rule)
    ({"model": "tiny-animatediff"}, "prompt", "required by family"),
    ({"model": "tiny-animatediff", "prompt": "   "}, "prompt", "must not be empty"),
    ({"model": "tiny-animatediff", "prompt": "a\x00b"}, "prompt", "NUL"),
    ({"model": "tiny-svd"}, "image", "required by family"),
    ({"model": "tiny-svd", "image": "missing.png"}, "image", "no such file"),
    ({"model": "tiny-svd", "image": "not-an-image.png"}, "image", "not a readable image"),
    ({"model": "tiny-svd", "image": "http://example.com/cat.png"}, "image", "URLs/URIs are not fetched"),
    ({"model": "tiny-svd", "image": "s3://bucket/cat.png"}, "image", "URLs/URIs are not fetched"),
    ({"model": "tiny-svd", "image": "file:///etc/passwd"}, "image", "URLs/URIs are not fetched"),
    ({"model": "tiny-svd", "image": b""}, "image", "not a readable image (empty)"),
    ({"model": "tiny-svd", "image": b"\x89PNG broken"}, "image", "not a readable image"),
    ({"model": "tiny-svd", "image": "cond.png", "prompt": "x"}, "prompt", "takes no text"),
    ({"model": "tiny-animatediff", "prompt": "x", "image": "cond.png"}, "image", "takes no image"),
    ({"model": "tiny-animatediff", "prompt": "x", "video": "a.mp4"}, "video", "takes no video"),
    ({"model": "tiny-animatediff", "prompt": "x", "num_frames": 16.5}, "num_frames", "must be an integer"),
    ({"model": "tiny-animatediff", "prompt": "x", "num_frames": "16"}, "num_frames", "must be an integer"),
    ({"model": "tiny-animatediff", "prompt": "x", "num_frames": 0}, "num_frames", "must be >= 1"),
    ({"model": "tiny-animatediff", "prompt": "x", "num_frames": 2049}, "num_frames", "exceeds the cap of 2048 frames"),
    ({"model": "tiny-animatediff", "prompt": "x", "num_frames": 40, "params": '{"chunk_overlap": 16}'},
     "params.chunk_overlap", "smaller than the chunk window (16 frames)"),
    ({"model": "tiny-svd", "image": "cond.png", "params": '{"chunk_mode": "chain", "chunk_overlap": 0}'},
     "params.chunk_overlap", "must be >= 1 when chained"),
    ({"model": "tiny-animatediff", "prompt": "x", "params": '{"chunk_mode": "chain"}'}, "params.chunk_mode",
     "must be one of anchored"),
    ({"model": "tiny-animatediff", "prompt": "x", "params": '{"chunk_window": 1}'}, "params.chunk_window", ">= 2"),
    ({"model": "tiny-animatediff", "prompt": "x", "height": 60}, "height", "divisible by 8"),
    ({"model": "tiny-animatediff", "prompt": "x", "width": -64}, "width", "must be >= 1"),
    ({"model": "tiny-animatediff", "prompt": "x", "fps": -3}, "fps", "must be >= 1"),
    ({"model": "tiny-animatediff", "prompt": "x", "guidance_scale": float("nan")}, "guidance_scale", "finite"),
    ({"model": "tiny-animatediff", "prompt": "x", "seed": -1}, "seed", "must be in"),
    ({"model": "tiny-animatediff", "prompt": "x", "params": "{oops"}, "params", "not valid JSON"),
    ({"model": "tiny-animatediff", "prompt": "x", "params": "[1, 2]"}, "params", "JSON object"),
    ({"model": "tiny-animatediff", "prompt": "x", "params": '{"strength": 0.5}'}, "params.strength", "not a parameter"),
    ({"model": "tiny-animatediff", "prompt": "x", "params": '{"generator": 1}'}, "params.generator", "not a parameter"),
    ({"model": "tiny-animatediff", "prompt": "x", "params": '{"num_frames": 8}'}, "params.num_frames", "duplicates"),
    ({"model": "tiny-svd", "image": "cond.png", "params": '{"max_guidance_scale": 2}'}, "params.max_guidance_scale",
     "duplicates the typed column 'guidance_scale'"),
    ({"model": "tiny-svd", "image": "cond.png", "params": '{"motion_bucket_id": "high"}'}, "params.motion_bucket_id",
     "must be int"),
    ({"model": "tiny-animatediff", "prompt": "x", "params": '{"scheduler": "magic"}'}, "params.scheduler", "one of"),
    # family rules over several fields, checked on the driver before any weights load
    ({"model": "tiny-t2v-zero", "prompt": "x", "params": '{"t1": 9}'}, "params.t1", "must be < num_inference_steps"),
    ({"model": "tiny-t2v-zero", "prompt": "x", "guidance_scale": 1.0}, "guidance_scale", "must be > 1"),
    ({"model": "tiny-svd", "image": "cond.png", "guidance_scale": 1.0, "params": '{"min_guidance_scale": 2.0}'},
     "params.min_guidance_scale", "must be <= 1 when guidance_scale"),
    ({"model": "tiny-controlnet-video", "prompt": "x", "video": "clip.mp4",
      "params": '{"control_guidance_start": 0.8, "control_guidance_end": 0.2}'}, "params.control_guidance_start",
     "must be below"),
    ({"model": "tiny-pia", "prompt": "x", "image": "cond.png", "params": '{"strength": 0.1}'}, "params.strength",
     "leaves no denoising step"),
    ({"model": "tiny-modelscope", "prompt": "x", "params": '{"strength": 0.5}'}, "params.strength",
     "applies only to a row that gives a `video`"),
    ({"model": "tiny-animatediff", "prompt": "x", "video": "missing.mp4"}, "video", "takes no video"),
    ({"model": "tiny-controlnet-video", "prompt": "x", "video": "not-an-image.png"}, "video", "not a readable video"),
    ({"model": "tiny-controlnet-video", "prompt": "x", "video": "https://x/y.mp4"}, "video", "URLs/URIs"),
    ({"prompt": "x"}, "model", "no model"),
    ({"prompt": "x", "model": "no-such-model"}, "model", "not a preset"),
    ({"prompt": "x", "model": "/no/such/folder"}, "model", "not a preset"),
]


@pytest.mark.parametrize("row, column, rule", BAD_ROWS, ids=[f"{c}:{r}" for _, c, r in BAD_ROWS])
def test_bad_rows_are_rejected_naming_column_value_and_rule(row, column, rule, image_file):
    (image_file.parent / "not-an-image.png").write_text("this is text")
    write_mp4(np.zeros((4, 64, 64, 3), np.uint8) + 128, image_file.parent / "clip.mp4", 4)
    with pytest.raises(RowRejected) as info:
        request(row, table_dir=image_file.parent)
    message = str(info.value)
    assert info.value.column == column and message.startswith(f"{column}=")
    assert rule in message


def test_seed_depends_only_on_base_seed_and_id():
    assert derive_seed(0, "a") == derive_seed(0, "a")
    assert len({derive_seed(0, "a"), derive_seed(1, "a"), derive_seed(0, "b")}) == 3
    assert 0 <= derive_seed(7, "x") < 2**63


@pytest.mark.parametrize("row_id", ["../../x", "/abs/path", "a/b", "CON", "x" * 300, ".hidden", "", "名前 🎬"])
def test_ids_never_leave_the_videos_folder(row_id, tmp_path):
    rel = video_relpath(row_id)
    assert rel.startswith("videos/") and rel.count("/") == 1 and rel.endswith(".mp4")
    name = rel.split("/")[1]
    assert not name.startswith(".") and len(slug(row_id)) <= 60
    assert (tmp_path / rel).resolve().parent == (tmp_path / "videos").resolve()


def test_ids_that_slug_alike_do_not_collide():
    assert video_relpath("a/b") != video_relpath("a_b") != video_relpath("A_b")
