"""The run's gallery: posters beside the videos, and OUT/index.html opened in a real headless Chromium (Debian's
chromium and chromedriver, driven by Selenium) straight from the output folder, and from an S3 test server's own
HTTP endpoint. One local run with ok, failed and rejected rows, two models and hostile prompts serves the module."""
from __future__ import annotations

import io
import json
import re
import shutil
import time
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import unquote, urlsplit

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from conftest import BUCKET, objects, read_metadata, upload, write_table
from jobs.cli import main
from renderer.paths import GALLERY_DIR, output_lock, poster_relpath
from renderer.testing.browser import headless_chromium
from renderer.testing.videos import read_mp4
from renderer.video import write_poster

# tiny-animatediff and tiny-modelscope rows that render in a fraction of a second
FAST = dict(num_frames=6, num_inference_steps=2)
HOSTILE_PROMPTS = {"script": "<script>alert(1)</script>", "img": '"><img src=x onerror=alert(1)>'}
HOSTILE_ID = "<b>id</b>\"'><img src=x onerror=alert(2)>&amp;"
ROWS = [
    dict(id="fox", prompt="A red fox trotting through fresh snow", model="tiny-animatediff", **FAST),
    dict(id="script", prompt=HOSTILE_PROMPTS["script"], model="tiny-animatediff", **FAST),
    dict(id="img", prompt=HOSTILE_PROMPTS["img"], model="tiny-animatediff", **FAST),
    dict(id=HOSTILE_ID, prompt="a hostile id", model="tiny-animatediff", **FAST),
    # two chunks: the record has seam metrics
    dict(id="long", prompt="a slow pan over green hills", model="tiny-animatediff", num_frames=20,
         num_inference_steps=2),
    dict(id="waves", prompt="waves on black sand", model="tiny-modelscope", **FAST),
    # the injected fault makes its render raise: recorded `failed`
    dict(id="fails", prompt="this row raises", model="tiny-animatediff", **FAST),
    dict(id="rejected", prompt="a knob no family has", model="tiny-animatediff", params='{"no_such_knob": 1}', **FAST),
]
IDS = [row["id"] for row in ROWS]
OK = [i for i in IDS if i not in ("fails", "rejected")]
DATA_FILE = re.compile(r"rows-00000-[0-9a-f]{12}\.js")
# a one-frame tolerance on a video's duration, and the most a poster may differ from the first frame on average
# (a JPEG of an H.264 frame of noise; a poster of the second frame differs by about 35)
POSTER_TOLERANCE = 12


def render(*args):
    return CliRunner().invoke(main, [str(arg) for arg in args])


@pytest.fixture(scope="module")
def rendered(ray_session, tmp_path_factory):
    """ROWS rendered once into a local folder: ok rows of two models, a failed and a rejected row."""
    folder = tmp_path_factory.mktemp("gallery")
    table = write_table(folder / "rows.parquet", ROWS)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RENDER_FAULTS", json.dumps([{"point": "render", "fault": "raise", "id": "fails"}]))
        patch.setenv("RENDER_FAULTS_LOG", str(folder / "faults.jsonl"))
        result = render("run", table, "--out", folder / "out", "--max-attempts", 1)
    assert result.exit_code == 1, result.output
    records = read_metadata(folder / "out")
    assert {i: r["status"] for i, r in records.items()} == {**dict.fromkeys(OK, "ok"), "fails": "failed",
                                                           "rejected": "rejected"}
    return SimpleNamespace(out=folder / "out", table=table, records=records)


@pytest.fixture(scope="module")
def browser():
    driver = headless_chromium()
    yield driver
    driver.quit()


def open_gallery(browser, url: str) -> None:
    browser.get(url)
    wait_for(browser, "return document.body.dataset.loaded === 'true' && document.querySelectorAll('.card').length")


def wait_for(browser, script: str, *args, timeout: float = 20.0):
    """The first truthy value of `script` in the page, polled."""
    deadline = time.monotonic() + timeout
    while not (value := browser.execute_script(script, *args)):
        assert time.monotonic() < deadline, f"timed out waiting for: {script}"
        time.sleep(0.05)
    return value


def cards(browser) -> list[dict]:
    """The cards in the DOM in the order the grid shows them (top to bottom, left to right), as plain values."""
    return browser.execute_script("""
        const text = (card, selector) => card.querySelector(selector)?.textContent ?? null;
        return [...document.querySelectorAll('#grid .card')].map((card) => {
          const box = card.getBoundingClientRect();
          const poster = card.querySelector('img.poster');
          return {top: Math.round(box.top), left: Math.round(box.left), status: card.dataset.status,
                  id: text(card, '.id'), prompt: text(card, '.prompt'), error: text(card, '.error'),
                  model: text(card, '.model'), seed: text(card, '.seed'), badge: text(card, '.badge'),
                  seconds: text(card, '.seconds'), seams: text(card, '.seams'),
                  placeholder: text(card, '.placeholder .label'),
                  poster: poster && poster.getAttribute('src'), posterWidth: poster && poster.naturalWidth};
        }).sort((a, b) => a.top - b.top || a.left - b.left);""")


def shown_ids(browser) -> list[str]:
    return [card["id"] for card in cards(browser)]


def settled(read, expected, timeout: float = 5.0):
    """What `read()` gives once it equals `expected` (the page may answer a change in its next frame), or its last
    value when it never does."""
    deadline = time.monotonic() + timeout
    while (value := read()) != expected and time.monotonic() < deadline:
        time.sleep(0.05)
    return value


def shown_number(text: str, unit: str) -> float:
    """A number the page shows with its unit ("2.31 s"): at most three significant decimals."""
    assert re.fullmatch(rf"\d+(\.\d+)?{unit}", text), text
    return float(text.removesuffix(unit))


def shown_count(browser) -> int:
    return int(browser.find_element("id", "shown").get_attribute("data-count"))


def card_element(browser, row_id: str):
    return browser.execute_script(
        "return [...document.querySelectorAll('#grid .card')].find((c) => c.querySelector('.id').textContent === "
        "arguments[0])", row_id)


def hover_video(browser, row_id: str) -> dict:
    """Put the pointer over a row's card: its preview video, once it has its metadata."""
    from selenium.webdriver.common.action_chains import ActionChains

    card = card_element(browser, row_id)
    ActionChains(browser).move_to_element(card).perform()
    return wait_for(browser, """
        const video = arguments[0].querySelector('video');
        return video && video.readyState >= 1 && {duration: video.duration, src: video.getAttribute('src'),
                                                  muted: video.muted, loop: video.loop};""", card)


def dialog_text(browser) -> str | None:
    """The text of a dialog (alert) the page opened, or None."""
    from selenium.common.exceptions import NoAlertPresentException

    try:
        return browser.switch_to.alert.text
    except NoAlertPresentException:
        return None


# ---------------------------------------------------------------- posters

def test_every_ok_video_has_its_first_frame_as_a_poster_and_no_other_row_has_one(rendered):
    for row_id in OK:
        record = rendered.records[row_id]
        poster = Image.open(rendered.out / poster_relpath(record["video_path"]))
        assert poster.format == "JPEG" and poster.size == (record["width"], record["height"]), row_id
        frames, _ = read_mp4(rendered.out / record["video_path"])
        differences = [np.abs(np.asarray(poster.convert("RGB"), float) - frame).mean() for frame in frames]
        assert differences[0] < POSTER_TOLERANCE and int(np.argmin(differences)) == 0, (row_id, differences[:3])
    files = sorted(p.name for p in (rendered.out / "videos").iterdir())
    expected = [Path(path).name for i in OK for path in (rendered.records[i]["video_path"],
                                                         poster_relpath(rendered.records[i]["video_path"]))]
    assert files == sorted(expected)


def test_a_poster_keeps_the_aspect_with_its_long_side_at_most_320(tmp_path):
    frame = np.zeros((360, 640, 3), np.uint8)
    frame[:, 320:] = 255
    write_poster(frame, tmp_path / "wide.jpg")
    poster = Image.open(tmp_path / "wide.jpg")
    assert poster.size == (320, 180)
    pixels = np.asarray(poster.convert("L"), float)
    assert pixels[:, :150].mean() < 5 and pixels[:, 170:].mean() > 250


def test_a_resume_keeps_the_posters_and_cleans_only_temporary_files(rendered, tmp_path):
    out = shutil.copytree(rendered.out, tmp_path / "out")
    posters = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in (out / "videos").glob("*.jpg")}
    leftovers = [out / "videos" / ".tmp-0123456789ab-x.jpg", out / GALLERY_DIR / ".tmp-0123456789ab-rows.js"]
    for leftover in leftovers:
        leftover.write_bytes(b"partial")
    old_data = {p.name for p in (out / GALLERY_DIR).iterdir()} - {leftover.name for leftover in leftovers}
    # the ok rows again: all carried over, nothing renders
    table = write_table(tmp_path / "ok.parquet", [row for row in ROWS if row["id"] in OK])
    result = render("run", table, "--out", out)
    assert result.exit_code == 0 and f"({len(OK)} already rendered, skipped)" in result.output, result.output
    assert {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in (out / "videos").glob("*.jpg")} == posters
    assert not any(leftover.exists() for leftover in leftovers)
    # the gallery now shows only these rows: a new data file, the old one gone
    data = [p.name for p in (out / GALLERY_DIR).iterdir()]
    assert len(data) == 1 and DATA_FILE.fullmatch(data[0]) and data[0] not in old_data
    assert f'"{GALLERY_DIR}/{data[0]}"' in (out / "index.html").read_text() and f'"total":{len(OK)}' in data_config(out)


def test_a_gallery_that_cannot_be_written_is_a_warning_not_a_failed_run(rendered, tmp_path):
    out = shutil.copytree(rendered.out, tmp_path / "out")
    (out / "index.html").unlink()
    # a folder where the page goes
    (out / "index.html").mkdir()
    table = write_table(tmp_path / "ok.parquet", [row for row in ROWS if row["id"] in OK])
    result = render("run", table, "--out", out)
    assert result.exit_code == 0, result.output
    assert "warning: the gallery could not be written (WriteFailed: write_failed:" in result.stderr
    assert f"render preview {out}` writes it again" in result.stderr
    assert sorted(read_metadata(out)) == sorted(OK)


def data_config(out: Path) -> str:
    return re.search(r'<script id="gallery-config" type="application/json">(.*?)</script>',
                     (out / "index.html").read_text()).group(1)


# ---------------------------------------------------------------- render preview

def test_preview_makes_missing_posters_and_the_page(rendered, tmp_path):
    out = shutil.copytree(rendered.out, tmp_path / "out")
    originals = {}
    for row_id in OK:
        poster = out / poster_relpath(rendered.records[row_id]["video_path"])
        originals[row_id] = np.asarray(Image.open(poster).convert("RGB"), float)
        poster.unlink()
    shutil.rmtree(out / GALLERY_DIR)
    (out / "index.html").unlink()
    result = render("preview", out)
    assert result.exit_code == 0, result.output
    assert result.output == f"wrote {len(OK)} missing posters\n{out / 'index.html'}\n"
    for row_id in OK:
        poster = Image.open(out / poster_relpath(rendered.records[row_id]["video_path"]))
        # the first frame decoded from the mp4 instead of the rendered one: nearly the same picture
        difference = np.abs(np.asarray(poster.convert("RGB"), float) - originals[row_id]).mean()
        assert poster.format == "JPEG" and difference < 6, (row_id, difference)
    assert [DATA_FILE.fullmatch(p.name) is not None for p in (out / GALLERY_DIR).iterdir()] == [True]
    # a second preview has nothing to make and rewrites the page alone
    again = render("preview", out)
    assert again.exit_code == 0 and again.output == f"{out / 'index.html'}\n", again.output


def test_preview_without_a_run_or_beside_one_exits_2_naming_why(rendered, tmp_path):
    result = render("preview", tmp_path / "empty")
    assert result.exit_code == 2
    assert f"error: {tmp_path / 'empty' / 'metadata.parquet'}: no metadata.parquet there" in result.output
    out = shutil.copytree(rendered.out, tmp_path / "out")
    with output_lock(out):
        busy = render("preview", out)
    assert busy.exit_code == 2 and f"error: {out} is in use by another run" in busy.output, busy.output


# ---------------------------------------------------------------- the page in a browser

def test_every_record_is_a_card_showing_its_record(rendered, browser):
    open_gallery(browser, (rendered.out / "index.html").as_uri())
    shown = cards(browser)
    assert [card["id"] for card in shown] == IDS
    assert shown_count(browser) == len(IDS) and browser.find_element("id", "total").text == str(len(IDS))
    counts = browser.execute_script("return [...document.querySelectorAll('#counts .count')].map((b) => b.textContent)")
    assert counts == [f"ok{len(OK)}", "failed1", "rejected1"]
    for card in shown:
        record = rendered.records[card["id"]]
        assert (card["prompt"], card["model"], card["seed"], card["badge"], card["status"]) == (
            record["prompt"], record["model"], f"seed {record['seed']}" if record["seed"] is not None else None,
            record["status"], record["status"])
        if record["status"] == "ok":
            assert card["poster"] == poster_relpath(record["video_path"]) and card["posterWidth"] == record["width"]
            assert card["error"] is None and shown_number(card["seconds"], " s") == pytest.approx(record["seconds"],
                                                                                                 abs=0.051)
        else:
            assert card["poster"] is None and card["placeholder"] == record["status"]
            assert card["error"] == record["error"]
    long = rendered.records["long"]
    seams = next(card["seams"] for card in shown if card["id"] == "long")
    assert re.fullmatch(r"seam \d+\.\d\d · drift \d+\.\d\d\d", seams), seams
    seam, drift = (float(value) for value in re.findall(r"\d+\.\d+", seams))
    assert seam == pytest.approx(max(long["seams"]), abs=0.0051)
    assert drift == pytest.approx(max(long["drift"]), abs=5.1e-4)
    assert [card["id"] for card in shown if card["seams"]] == ["long"]


def test_filters_and_search_narrow_the_cards_to_exactly_the_matching_rows(rendered, browser):
    from selenium.webdriver.support.select import Select

    open_gallery(browser, (rendered.out / "index.html").as_uri())
    status, model, sort = (Select(browser.find_element("id", name)) for name in ("status", "model", "sort"))
    search = browser.find_element("id", "search")
    cases = [
        (lambda: status.select_by_visible_text("failed (1)"), ["fails"]),
        (lambda: status.select_by_visible_text("rejected (1)"), ["rejected"]),
        (lambda: status.select_by_visible_text(f"ok ({len(OK)})"), OK),
        (lambda: model.select_by_visible_text("tiny-modelscope (1)"), ["waves"]),
        (lambda: status.select_by_value(""), ["waves"]),
        (lambda: model.select_by_visible_text("tiny-animatediff (7)"), [i for i in IDS if i != "waves"]),
        (lambda: search.send_keys("ALERT("), ["script", "img", HOSTILE_ID]),
        (lambda: search.send_keys("1)</"), ["script"]),
        (lambda: (model.select_by_value(""), search.clear(), search.send_keys("sand")), ["waves"]),
        # an id matches as well as a prompt
        (lambda: (search.clear(), search.send_keys("rejec")), ["rejected"]),
        (lambda: (search.clear(), search.send_keys("no row has this")), []),
    ]
    for change, expected in cases:
        change()
        assert settled(lambda: shown_ids(browser), expected) == expected and shown_count(browser) == len(expected)
    assert browser.find_element("id", "empty").is_displayed()
    search.clear()
    # the status chips filter too
    browser.execute_script("document.querySelector('#counts .count[data-status=\"failed\"]').click()")
    assert settled(lambda: shown_ids(browser), ["fails"]) == ["fails"]
    assert status.first_selected_option.text == "failed (1)"
    status.select_by_value("")

    # the page sorts by the seconds it shows (rounded to 3 places); equal ones stay in input order either way
    seconds = {i: r["seconds"] for i, r in rendered.records.items()}
    timed = [i for i in IDS if seconds[i] is not None]
    untimed = [i for i in IDS if seconds[i] is None]

    def by_seconds(direction: int) -> list[str]:
        return sorted(timed, key=lambda i: (direction * round(seconds[i], 3), IDS.index(i))) + untimed

    orders = {"slowest": by_seconds(-1), "fastest": by_seconds(1),
              "seam": ["long"] + [i for i in IDS if i != "long"], "input": IDS}
    for value, expected in orders.items():
        sort.select_by_value(value)
        assert settled(lambda: shown_ids(browser), expected) == expected, value


def test_a_card_plays_its_video_on_hover_with_the_records_duration(rendered, browser):
    open_gallery(browser, (rendered.out / "index.html").as_uri())
    for row_id in ("long", "waves"):
        record = rendered.records[row_id]
        video = hover_video(browser, row_id)
        assert video["src"] == record["video_path"] and video["muted"] and video["loop"]
        assert abs(video["duration"] - record["num_frames"] / record["fps"]) <= 1 / record["fps"], (row_id, video)
    # the pointer leaves for the header: no video is left in the grid
    from selenium.webdriver.common.action_chains import ActionChains

    ActionChains(browser).move_to_element(browser.find_element("id", "search")).perform()
    assert wait_for(browser, "return document.querySelectorAll('#grid video').length === 0")
    # a click opens the record whole, its video with controls and a link to the mp4
    card_element(browser, "long").click()
    viewer = wait_for(browser, """
        const video = document.querySelector('#viewer[open] video');
        return video && video.readyState >= 1 && {controls: video.controls, duration: video.duration,
               link: document.getElementById('viewer-link').getAttribute('href'),
               id: document.querySelector('#viewer .viewer-id').textContent};""")
    long = rendered.records["long"]
    duration = pytest.approx(long["num_frames"] / long["fps"], abs=1 / long["fps"])
    assert viewer == {"controls": True, "duration": duration, "link": long["video_path"], "id": "long"}
    browser.find_element("id", "viewer-close").click()
    assert wait_for(browser, "return !document.querySelector('#viewer[open], #viewer video')")


def test_hostile_prompts_and_ids_show_as_text_and_run_nothing(rendered, browser):
    open_gallery(browser, (rendered.out / "index.html").as_uri())
    # every poster has loaded or failed: an injected <img src=x> would have fired its onerror by now
    wait_for(browser, "return [...document.images].every((image) => image.complete)")
    shown = {card["id"]: card for card in cards(browser)}
    for row_id, prompt in HOSTILE_PROMPTS.items():
        assert shown[row_id]["prompt"] == prompt
    assert shown[HOSTILE_ID]["prompt"] == "a hostile id"
    card_element(browser, HOSTILE_ID).click()
    assert wait_for(browser, "return document.querySelector('#viewer[open] .viewer-id').textContent") == HOSTILE_ID
    browser.find_element("id", "viewer-close").click()
    assert dialog_text(browser) is None
    injected = browser.execute_script("""
        return {images: [...document.images].filter((image) => !image.classList.contains('poster')).length,
                sources: [...document.querySelectorAll('[src="x"], [onerror], b')].length,
                scripts: [...document.scripts].map((script) => script.id || (script.src ? 'src' : 'inline'))};""")
    assert injected == {"images": 0, "sources": 0, "scripts": ["gallery-config", "inline"]}


def test_a_screenshot_of_the_gallery_is_not_blank(rendered, browser, tmp_path):
    open_gallery(browser, (rendered.out / "index.html").as_uri())
    wait_for(browser, "return [...document.images].every((image) => image.complete && image.naturalWidth)")
    shot = np.asarray(Image.open(io.BytesIO(browser.get_screenshot_as_png())).convert("RGB"))
    colours = len(np.unique(shot.reshape(-1, 3), axis=0))
    assert colours > 2000 and shot.std() > 20, (colours, shot.std())


# ---------------------------------------------------------------- on an object store

def test_the_gallery_of_a_run_on_s3_opens_from_the_bucket_with_every_link_resolving(rendered, s3, browser, tmp_path,
                                                                                    monkeypatch):
    """The local run's outputs and table in the bucket, and the same rows (but the failed one) run again with --out
    there: a resume that renders nothing and writes the gallery into the bucket. (test_object_store's run renders
    into the bucket, posters included.)"""
    folder = tmp_path / "bucket"
    shutil.copytree(rendered.out, folder / "out", ignore=shutil.ignore_patterns("index.html", GALLERY_DIR))
    write_table(folder / "in" / "rows.parquet", [row for row in ROWS if row["id"] != "fails"])
    upload(s3.client, folder, "gallery")
    # readable by anyone, as a gallery served straight from a bucket is (objects pyarrow writes are, on this server)
    for key in objects(s3.client, "gallery/"):
        s3.client.put_object_acl(Bucket=BUCKET, Key=key, ACL="public-read")
    for key, value in s3.env.items():
        monkeypatch.setenv(key, value)
    result = render("run", f"s3://{BUCKET}/gallery/in/rows.parquet", "--out", f"s3://{BUCKET}/gallery/out")
    assert result.exit_code == 1 and f"({len(OK)} already rendered, skipped)" in result.output, result.output
    page = s3.client.head_object(Bucket=BUCKET, Key="gallery/out/index.html")
    # served as a page, not a download
    assert page["ContentType"] == "text/html; charset=utf-8"
    # a poster lost: `render preview` makes it again from the video's first frame, read from the bucket
    fox_poster = f"gallery/out/{poster_relpath(rendered.records['fox']['video_path'])}"
    s3.client.delete_object(Bucket=BUCKET, Key=fox_poster)
    result = render("preview", f"s3://{BUCKET}/gallery/out")
    assert result.output == f"wrote 1 missing posters\ns3://{BUCKET}/gallery/out/index.html\n", result.output
    assert s3.client.head_object(Bucket=BUCKET, Key=fox_poster)["ContentType"] == "image/jpeg"
    keys = set(objects(s3.client, "gallery/out/"))

    base = f"{s3.env['AWS_ENDPOINT_URL']}/{BUCKET}/gallery/out/"
    open_gallery(browser, base + "index.html")
    wait_for(browser, "return [...document.images].every((image) => image.complete && image.naturalWidth)")
    hover_video(browser, "fox")
    card_element(browser, "fox").click()
    wait_for(browser, "return document.querySelector('#viewer[open] video')")
    references = browser.execute_script("""
        const urls = performance.getEntriesByType('resource').map((entry) => [entry.name, entry.responseStatus]);
        // a data: URL (the page's icon) is inside the page
        for (const node of document.querySelectorAll('[src], [href]:not([href^="data:"])')) {
          urls.push([node.src || node.href, null]);
        }
        return urls;""")
    browser.find_element("id", "viewer-close").click()
    assert {Path(urlsplit(url).path).suffix for url, _ in references} == {".js", ".jpg", ".mp4"}
    assert len({url for url, _ in references if url.endswith(".jpg")}) == len(OK)
    for url, status in references:
        assert url.startswith(base) and f"gallery/out/{unquote(url[len(base):])}" in keys, url
        assert status in (None, 200, 206), (url, status)
