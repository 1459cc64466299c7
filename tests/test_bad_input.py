"""Bad and hostile input: tables, ids, images, prompts, references, checkpoints and planted links. Each case
is decided where the renderer decides it: on the driver without Ray (`render validate`, to_request), or on a
real local Ray with the tiny presets where only the actor can tell (decoding, tokenizing, loading weights)."""
from __future__ import annotations

import io
import json
import socket
import struct
import threading
import zlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from click.testing import CliRunner
from PIL import Image

from conftest import read_metadata, write_table
from jobs.cli import main
from renderer import load
from renderer.errors import RowRejected
from renderer.inputs import MAX_IMAGE_PIXELS, check_image, load_image
from renderer.options import LoadOptions
from renderer.paths import WINDOWS_RESERVED, video_relpath
from renderer.request import to_request
from renderer.run import RunConfig, run
from renderer.storage import resolve
from renderer.testing.videos import read_mp4

FAST = dict(num_frames=6, num_inference_steps=2)  # tiny-animatediff rows that render in about a second
FAST_SVD = dict(num_frames=4, num_inference_steps=2)


def cli(*args):
    return CliRunner().invoke(main, [*map(str, args)])


# ---------------------------------------------------------------- tables: exit 2, the file and the problem named

def two_tables(p: Path, first: dict, second: dict) -> list[Path]:
    return [write_table(p / "a.parquet", [{"id": "a", "prompt": "x", **first}]),
            write_table(p / "b.parquet", [{"id": "b", "prompt": "y", **second}])]


def _empty_table(path: Path) -> Path:
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"id": pa.array([], pa.string()), "prompt": pa.array([], pa.string())}), path)
    return path


# two ids whose video files differ only in case, their hashes equal in 8 hex digits (found by a birthday search)
CASE_TWINS = ("Fox\u5199\u4e14", "fox\u5008\u4e15")

TABLE_ERRORS = {  # (make the tables, words of the message)
    "num_frames int in one table, string in the other": (
        lambda p: two_tables(p, {"num_frames": 6}, {"num_frames": "6"}),
        "b.parquet: column 'num_frames' is string here but int64 in "),
    "guidance_scale float in one table, string in the other": (
        lambda p: two_tables(p, {"guidance_scale": 7.5}, {"guidance_scale": "7.5"}),
        "b.parquet: column 'guidance_scale' is string here but double in "),
    "an empty table": (lambda p: [_empty_table(p / "t.parquet")], "t.parquet: no rows; nothing to render"),
    "ids whose video files collide on a case-insensitive filesystem": (
        lambda p: [write_table(p / "t.parquet", [{"id": i, "prompt": "x"} for i in CASE_TWINS])],
        f"ids {CASE_TWINS[0]!r} and {CASE_TWINS[1]!r} map to the same video file"),
}


@pytest.mark.parametrize("case", TABLE_ERRORS)
def test_table_errors_exit_2_naming_file_and_problem(case, tmp_path):
    make, words = TABLE_ERRORS[case]
    tables = make(tmp_path)
    out = tmp_path / "out"
    result = cli("run", *tables, "--out", out, "--model", "tiny-animatediff")
    assert result.exit_code == 2 and words in result.output, result.output
    assert not out.exists()  # nothing rendered, nothing written
    assert cli("validate", *tables, "--model", "tiny-animatediff").exit_code == 2


def test_the_case_twins_really_share_a_video_file_ignoring_case():
    a, b = (video_relpath(i) for i in CASE_TWINS)
    assert a != b and a.lower() == b.lower()


def test_tables_may_differ_in_width_and_image_form_not_in_kind(tmp_path, image_file):
    first = write_table(tmp_path / "a.parquet", [{"id": "a", "image": image_file.name, "fps": 6, "seed": 1}],
                        {"fps": pa.int32()})
    second = write_table(tmp_path / "b.parquet", [{"id": "b", "image": image_file.read_bytes(), "fps": 7.0,
                                                  "seed": None}], {"seed": pa.null()})
    empty_shard = _empty_table(tmp_path / "c.parquet")  # an empty table beside others is no mistake
    result = cli("validate", first, second, empty_shard, "--model", "tiny-svd", "--ignore-extra")
    assert result.exit_code == 0 and "2 rows: 2 ok, 0 rejected" in result.output, result.output


# ---------------------------------------------------------------- ids: inside --out, collision-free, kept exact

NFC, NFD = "caf\u00e9", "cafe\u0301"  # the same visible name, different bytes: two ids, two videos
HOSTILE_IDS = ["../../x", "/abs", "a/b", "CON", "nul.txt", "com1", "x" * 300, NFC, NFD, "Fox", "fox",
               "\U0001f3ac scene", "\u05e9\u05dc\u05d5\u05dd"]


def test_hostile_ids_get_distinct_safe_file_names(tmp_path):
    paths = [video_relpath(i) for i in HOSTILE_IDS]
    assert len({p.lower() for p in paths}) == len(HOSTILE_IDS)  # distinct on a case-insensitive filesystem too
    for path in paths:
        name = path.removeprefix("videos/")
        assert "/" not in name and (tmp_path / path).resolve().parent == (tmp_path / "videos").resolve()
        assert not WINDOWS_RESERVED.match(name), name  # CON.mp4, con.txt-... are devices on Windows
    assert video_relpath("CON").startswith("videos/_CON-") and video_relpath("console").startswith("videos/console-")


# ---------------------------------------------------------------- prompts

MARKERS = ("dollar", "backtick", "pipe", "and", "redirect")


def metachar_prompt(folder: Path) -> str:
    m = {k: folder / f"executed-{k}" for k in MARKERS}
    return (f"$(touch {m['dollar']}); `touch {m['backtick']}` | touch {m['pipe']} && touch {m['and']} "
            f"> {m['redirect']} ' \" \\ * ~")


def hostile_prompts(folder: Path) -> dict[str, str]:
    """id -> prompt for some of the hostile ids (the others get a plain one): each renders, stored as given."""
    return {
        "x" * 300: "a fox in the snow, " * 530,  # about 10,000 characters: far past CLIP's 77 tokens
        "\U0001f3ac scene": ("a \U0001f98a fox \U0001f3ac in \u2744\ufe0f snow "
                             "\U0001f468\u200d\U0001f469\u200d\U0001f467"),
        "\u05e9\u05dc\u05d5\u05dd": ("\u05e9\u05d5\u05e2\u05dc \u05d1\u05e9\u05dc\u05d2 "
                                     "\u062b\u0639\u0644\u0628 \u0641\u064a \u0627\u0644\u062b\u0644\u062c"),
        "a/b": metachar_prompt(folder),
    }


# ---------------------------------------------------------------- the text run: ids, prompts, planted links

def test_hostile_ids_and_prompts_render_inside_out_and_links_are_replaced(ray_session, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    victim_video, victim_table = outside / "victim.mp4", outside / "victim.parquet"
    victim_video.write_bytes(b"not yours")
    victim_table.write_bytes(b"not yours either")
    out = tmp_path / "out"
    (out / "videos").mkdir(parents=True)
    (out / video_relpath("a/b")).symlink_to(victim_video)  # planted at a video's final path
    (out / "metadata.parquet").symlink_to(victim_table)
    prompts = hostile_prompts(tmp_path)
    rows = [{"id": i, "prompt": prompts.get(i, f"scene {n}"), **FAST} for n, i in enumerate(HOSTILE_IDS)]
    table = str(write_table(tmp_path / "t.parquet", rows))
    summary = run(RunConfig(tables=(table,), out=out, model="tiny-animatediff"))

    assert summary.counts == {"ok": len(rows)}
    records = read_metadata(out)
    assert [r["id"].encode() for r in records.values()] == [r["id"].encode() for r in rows]  # byte-exact, in order
    for row in rows:
        rec = records[row["id"]]
        assert rec["video_path"] == video_relpath(row["id"]) and rec["prompt"].encode() == row["prompt"].encode()
        assert read_mp4(out / rec["video_path"])[0].shape == (6, 64, 64, 3)
    assert records[NFC]["video_path"] != records[NFD]["video_path"]
    assert [records[i]["prompt_truncated"] for i in list(prompts)[:3]] == [True, False, False]  # 10k chars, emoji, RTL
    assert not list(tmp_path.glob("executed-*"))  # the prompt is data: no shell ever saw it
    # nothing landed elsewhere
    assert sorted(p.name for p in out.iterdir()) == ["gallery", "index.html", "metadata.parquet", "videos"]
    # the planted links were replaced by the run's own files, never written through
    assert victim_video.read_bytes() == b"not yours" and victim_table.read_bytes() == b"not yours either"
    for final in (out / video_relpath("a/b"), out / "metadata.parquet"):
        assert final.is_file() and not final.is_symlink()


def test_a_linked_videos_folder_is_refused_before_anything_runs(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / ".tmp-keep.mp4").write_bytes(b"someone's")  # what the clean-up of temporary files would delete
    out = tmp_path / "out"
    out.mkdir()
    (out / "videos").symlink_to(outside)
    table = write_table(tmp_path / "t.parquet", [{"id": "a", "prompt": "x", **FAST}])
    result = cli("run", table, "--out", out, "--model", "tiny-animatediff")
    assert result.exit_code == 2 and f"{out / 'videos'} is a symbolic link (to {outside})" in result.output
    assert [p.name for p in outside.iterdir()] == [".tmp-keep.mp4"] and not (out / "metadata.parquet").exists()


# ---------------------------------------------------------------- images: decoded as a viewer shows them

def encode(img: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, fmt, **options)
    return buffer.getvalue()


def png_header(width: int, height: int) -> bytes:
    """A PNG that claims a size and holds no pixels: what a decompression bomb looks like to a header reader."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
    return b"\x89PNG\r\n\x1a\n" + header + chunk(b"IEND", b"")


def exif_rotated() -> bytes:
    """48 wide, 32 high as stored, red in the stored top-left corner; orientation 6: shown turned 90 degrees
    clockwise, 32 wide and 48 high with red top-right."""
    pixels = np.zeros((32, 48, 3), np.uint8)
    pixels[:8, :8] = (255, 0, 0)
    img = Image.fromarray(pixels)
    exif = img.getexif()
    exif[0x0112] = 6
    return encode(img, "JPEG", exif=exif.tobytes(), quality=95)


def gray16() -> bytes:
    values = np.tile(np.array([0, 257 * 64, 32768, 65535], np.uint16), (4, 1))
    return encode(Image.fromarray(values), "PNG")


def rgba() -> bytes:
    pixels = np.zeros((2, 2, 4), np.uint8)
    pixels[0, 0] = (200, 30, 60, 255)  # opaque; the rest is transparent (and black underneath)
    return encode(Image.fromarray(pixels), "PNG")


def palette() -> bytes:
    img = Image.new("P", (2, 2))
    img.putpalette([20, 40, 250] + [0] * 765)
    return encode(img, "PNG")


def cmyk() -> bytes:
    return encode(Image.new("RGB", (8, 8), (200, 30, 60)).convert("CMYK"), "JPEG", quality=95)


def noise(fmt: str) -> bytes:
    return encode(Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)), fmt)


GOOD_IMAGES = {  # name -> (bytes, PIL's mode, what the decoded RGB must show)
    "exif-rotated.jpg": (exif_rotated(), "RGB", lambda rgb: rgb.shape == (48, 32, 3) and rgb[:8, -8:, 0].mean() > 200
                         and rgb[:8, :8].max() < 30),
    "gray16.png": (gray16(), "I;16", lambda rgb: rgb[0, :, 0].tolist() == [0, 64, 128, 255]),  # scaled, not clipped
    "rgba.png": (rgba(), "RGBA",
                 lambda rgb: rgb[0, 0].tolist() == [200, 30, 60] and rgb[1, 1].tolist() == [255, 255, 255]),
    "palette.png": (palette(), "P", lambda rgb: rgb[0, 0].tolist() == [20, 40, 250]),
    "cmyk.jpg": (cmyk(), "CMYK", lambda rgb: np.abs(rgb[0, 0].astype(int) - [200, 30, 60]).max() <= 3),
}


@pytest.mark.parametrize("name", GOOD_IMAGES)
def test_images_decode_to_rgb_as_shown(name):
    data, mode, shows = GOOD_IMAGES[name]
    assert Image.open(io.BytesIO(data)).mode == mode
    check_image(data)
    rgb = np.asarray(load_image(data))
    assert rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3 and shows(rgb), rgb


BAD_IMAGES = {  # name -> (bytes, words of the rule, whether the driver's cheap check already sees it)
    "empty.png": (b"", "not a readable image (empty)", True),
    "text.png": (b"just some words, not pixels", "not a readable image (no image format recognised)", True),
    "truncated.png": (noise("PNG")[:6000], "not a readable image (OSError:", True),
    "truncated.jpg": (noise("JPEG")[:2000], "not a readable image (OSError: image file is truncated", False),
    "bomb.png": (png_header(50000, 50000), f"2500000000 pixels is over the limit of {MAX_IMAGE_PIXELS} pixels", True),
    "large.png": (png_header(9000, 9000), f"9000x9000 = 81000000 pixels is over the limit of {MAX_IMAGE_PIXELS}", True),
}


@pytest.mark.parametrize("name", BAD_IMAGES)
@pytest.mark.parametrize("form", ["path", "bytes"])
def test_bad_images_are_rejected_naming_the_value(name, form, tmp_path):
    data, words, on_driver = BAD_IMAGES[name]
    path = tmp_path / name
    path.write_bytes(data)
    ref, cell, shown = (str(path), name, repr(str(path))) if form == "path" else (data, data, f"<{len(data)} bytes>")
    decisions = [lambda: load_image(ref)]  # the actor's full decode
    if on_driver:
        decisions.append(lambda: to_request({"id": "r", "image": cell}, default_model="tiny-svd", table_dir=tmp_path))
    else:
        check_image(ref)  # its header looks fine: the actor rejects it (see the image run)
    for decide in decisions:
        with pytest.raises(RowRejected) as info:
            decide()
        assert str(info.value).startswith(f"image={shown}: ") and words in str(info.value), str(info.value)


def test_images_render_from_paths_and_bytes_and_bad_ones_are_rejected(ray_session, tmp_path):
    paths, cells = [], []  # one table of paths, one of bytes: a Parquet column holds one of the two forms
    for name, (data, _, _) in GOOD_IMAGES.items():
        (tmp_path / name).write_bytes(data)
        paths.append({"id": f"path {name}", "image": name, **FAST_SVD})
        cells.append({"id": f"bytes {name}", "image": data, **FAST_SVD})
    cells.append({"id": "truncated jpeg", "image": BAD_IMAGES["truncated.jpg"][0], **FAST_SVD})  # the actor decides
    cells.append({"id": "bomb", "image": BAD_IMAGES["bomb.png"][0], **FAST_SVD})  # the driver decides
    rows = paths + cells
    tables = (str(write_table(tmp_path / "paths.parquet", paths)), str(write_table(tmp_path / "bytes.parquet", cells)))
    out = tmp_path / "out"
    summary = run(RunConfig(tables=tables, out=out, model="tiny-svd"))

    assert summary.counts == {"ok": 2 * len(GOOD_IMAGES), "rejected": 2}
    records = read_metadata(out)
    for row in rows[:-2]:
        rec = records[row["id"]]
        assert rec["status"] == "ok" and read_mp4(out / rec["video_path"])[0].shape == (4, 64, 64, 3)
    truncated, bomb = records["truncated jpeg"], records["bomb"]
    assert truncated["attempts"] == 1 and "image=<2000 bytes>: not a readable image (OSError: image file is " \
        "truncated" in truncated["error"]  # rejected on the actor, never retried
    assert bomb["attempts"] == 0 and "2500000000 pixels is over the limit" in bomb["error"]


# ---------------------------------------------------------------- rows refused on the driver

BAD_ROWS = [  # (row, column, words of the rule)
    ({"model": "tiny-animatediff", "prompt": ""}, "prompt", "must not be empty or whitespace only"),
    ({"model": "tiny-animatediff", "prompt": " \t\n "}, "prompt", "must not be empty or whitespace only"),
    ({"model": "tiny-t2v-zero", "prompt": "\u3000"}, "prompt", "must not be empty or whitespace only"),
    ({"model": "tiny-animatediff", "prompt": "a fox\x00; rm -rf /"}, "prompt", "must not contain NUL characters"),
    ({"model": "tiny-animatediff", "prompt": "x", "params": '{"trust_remote_code": true}'},
     "params.trust_remote_code", "not a parameter of family 'animatediff'"),
    ({"model": "tiny-svd", "image": "cond.png", "params": '{"custom_pipeline": "evil"}'},
     "params.custom_pipeline", "not a parameter of family 'svd'"),
    ({"model": "tiny-animatediff", "prompt": "x", "params": '{"use_safetensors": false}'},
     "params.use_safetensors", "not a parameter"),
]


@pytest.mark.parametrize("row, column, rule", BAD_ROWS, ids=[f"{c}:{r[:20]}" for _, c, r in BAD_ROWS])
def test_bad_rows_are_rejected_on_the_driver(row, column, rule, image_file):
    with pytest.raises(RowRejected) as info:
        to_request({"id": "r", **row}, default_model=None, table_dir=image_file.parent)
    assert info.value.column == column and rule in str(info.value)


# ---------------------------------------------------------------- references: nothing is fetched

@pytest.fixture
def listener():
    """A TCP server on 127.0.0.1 that counts the connections it accepts."""
    server = socket.create_server(("127.0.0.1", 0))
    accepted, arrived = [], threading.Event()

    def serve():
        while True:
            try:
                conn, _ = server.accept()
            except OSError:  # closed: the test is over
                return
            accepted.append(conn)
            arrived.set()
    threading.Thread(target=serve, daemon=True).start()
    yield server.getsockname()[1], accepted, arrived
    server.close()


def test_urls_and_uris_are_rejected_without_a_connection(listener, tmp_path, image_file, monkeypatch):
    port, accepted, arrived = listener
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")  # an S3 read would come here
    refs = {"http": f"http://127.0.0.1:{port}/cat.png", "https": f"https://127.0.0.1:{port}/cat.png",
            "upper": f"HTTP://127.0.0.1:{port}/cat.png", "file": f"file://{image_file}",
            "s3": "s3://bucket/cat.png", "gs": "gs://bucket/cat.png"}
    rows = [{"id": k, "image": v, "model": "tiny-svd"} for k, v in refs.items()]
    rows += [{"id": "video", "prompt": "x", "video": refs["http"], "model": "tiny-controlnet-video"}]
    result = cli("validate", write_table(tmp_path / "t.parquet", rows))
    assert result.exit_code == 1 and "7 rows: 0 ok, 7 rejected" in result.output
    assert result.output.count("absolute URLs/URIs are not fetched") == 7
    assert accepted == []
    socket.create_connection(("127.0.0.1", port)).close()  # the listener does count a connection
    assert arrived.wait(10) and len(accepted) == 1


def test_local_paths_resolve_beside_the_table_and_may_climb(tmp_path, image_file):
    tables = tmp_path / "tables"
    rows = [{"id": "beside", "image": "../" + image_file.name}, {"id": "absolute", "image": str(image_file)}]
    plan_table = write_table(tables / "t.parquet", rows)
    result = cli("validate", plan_table, "--model", "tiny-svd")
    assert result.exit_code == 0 and "2 rows: 2 ok" in result.output, result.output
    # in a bucket `..` stops at the bucket's root: a row never names another bucket
    assert resolve("s3://bucket/in/deep", "../../../../other-bucket/x.png") == "s3://bucket/other-bucket/x.png"


# ---------------------------------------------------------------- checkpoints: data, never code

@pytest.fixture(scope="module")
def pickled_checkpoint(tmp_path_factory):
    """tiny-animatediff with pickle weights only (.bin) in its diffusers components, as old checkpoints are
    (transformers writes its text encoder as safetensors whatever it is told)."""
    folder = tmp_path_factory.mktemp("ckpt") / "pickled"
    load("tiny-animatediff").pipeline.save_pretrained(folder, safe_serialization=False)
    for component in ("unet", "vae", "motion_adapter"):
        assert list((folder / component).glob("*.bin")) and not list((folder / component).glob("*.safetensors"))
    return folder


def test_pickle_weights_fail_every_row_of_the_model_unless_allowed(ray_session, pickled_checkpoint, tmp_path):
    # a checkpoint's defaults are the family's full size: the rows ask for the tiny one
    rows = [{"id": f"p{i}", "prompt": "a fox", "model": str(pickled_checkpoint), "height": 64, "width": 64, **FAST}
            for i in range(2)]
    rows.append({"id": "preset", "prompt": "a fox", "model": "tiny-animatediff", **FAST})
    table, out = write_table(tmp_path / "t.parquet", rows), tmp_path / "out"
    refused = run(RunConfig(tables=(str(table),), out=out))
    assert refused.counts == {"failed": 2, "ok": 1}  # the run goes on: only that model's rows fail
    for row_id in ("p0", "p1"):
        error = read_metadata(out)[row_id]["error"]
        assert "safetensors only, and motion_adapter, unet, vae hold(s) only pickle weights (.bin/.pt), which can " \
            "run code" in error and "--allow-pickle" in error

    allowed = run(RunConfig(tables=(str(table),), out=out, load=LoadOptions(allow_pickle=True)))
    assert allowed.counts == {"ok": 3} and allowed.skipped == 1
    for row_id in ("p0", "p1"):
        assert read_mp4(out / read_metadata(out)[row_id]["video_path"])[0].shape == (6, 64, 64, 3)


def test_allow_pickle_is_a_run_option_handed_on_by_submit():
    from jobs.cli import _run_args, submit

    ctx = submit.make_context("submit", ["t.parquet", "--out", "o", "--address", "http://x:8265", "--allow-pickle"])
    assert "--allow-pickle" in _run_args(ctx, ctx.params)
    assert "--allow-pickle" in cli("run", "--help").output


CUSTOM_CODE = {  # model_index.json entries -> words of the refusal
    "custom pipeline class": ({"_class_name": ["pipeline_evil", "EvilPipeline"]}, "names a custom pipeline"),
    "component from a module file": ({"unet": ["evil", "EvilUNet"]}, "component 'unet' comes from 'evil'"),
    "component from an installed package": ({"scheduler": ["json", "JSONDecoder"]},
                                            "component 'scheduler' comes from 'json'"),
}


@pytest.mark.parametrize("case", CUSTOM_CODE)
def test_checkpoints_bringing_code_are_refused_before_any_import(case, tmp_path):
    entries, words = CUSTOM_CODE[case]
    folder = tmp_path / "ckpt"
    folder.mkdir()
    index = {"_class_name": "AnimateDiffPipeline", "_diffusers_version": "0.42.1",
             "vae": ["diffusers", "AutoencoderKL"], "tokenizer": ["transformers", "CLIPTokenizer"],
             "text_encoder": [None, None], **entries}
    (folder / "model_index.json").write_text(json.dumps(index))
    marker = tmp_path / "imported"
    for module in ("pipeline_evil.py", "evil.py", "unet/evil.py"):  # what diffusers would import by name
        (folder / module).parent.mkdir(exist_ok=True)
        (folder / module).write_text(f"open({str(marker)!r}, 'w').close()\n")
    table = write_table(tmp_path / "t.parquet", [{"id": "a", "prompt": "x", "model": str(folder)}])
    result = cli("validate", table)
    assert result.exit_code == 1 and words in result.output and "code from a checkpoint is never run" in result.output
    with pytest.raises(RowRejected, match="code from a checkpoint is never run"):
        load(str(folder))
    assert not marker.exists()
