"""The gallery at scale: a run's page with 100,000 records, written and then opened in headless Chromium.

    python bench/gallery_scale.py OUT.json [--rows 10000,100000] [--loads 3] [--chromium /usr/bin/chromium]

For each size, in a scratch folder: a metadata table in the real schema (renderer.metadata) of synthetic records
(90% ok, 7% failed, 3% rejected; four models; prompts of 100-400 characters; a tenth of the rows long, with seams
and drift; errors for the rows that did not render), and one real poster JPEG linked for every ok row. Then:
`write_s`, `gallery.write` into the empty folder; `rewrite_s`, the same write again (every data file already there:
the page alone is written). In headless Chromium (a 1400x1000 window), from file://, median of `--loads` page
loads: `first_cards_ms` (the first cards painted) and `all_loaded_ms` (every data file in), both from the page's
own performance.now() markers, counted from the start of navigation; `cards_in_dom` after loading (the grid
keeps only what is in view); `scroll_bottom_ms`, a jump to the end of the page until the next frame is painted
with the last cards made; `filter_ms` (status "failed"), `search_ms` (a word in a tenth of the prompts) and
`sort_ms` (worst seams first), each from the change to the next painted frame; `heap_mb`, the page's JavaScript
heap. Prints a table and writes JSON.
"""
import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from renderer import gallery  # noqa: E402
from renderer.metadata import schema  # noqa: E402
from renderer.paths import poster_relpath, video_relpath  # noqa: E402
from renderer.testing.browser import CHROMIUM, headless_chromium  # noqa: E402
from renderer.video import write_poster  # noqa: E402

MODELS = ["tiny-animatediff", "stabilityai/stable-video-diffusion-img2vid-xt", "Wan-AI/Wan2.1-T2V-1.3B-Diffusers",
          "Lightricks/LTX-Video"]
WORDS = ("a red fox trotting through fresh snow at golden hour slow waves rolling onto a black sand beach city "
         "lights at dusk seen from a hill drone shot over a misty pine forest macro of a dew drop on a leaf a "
         "lantern festival on a river old tram crossing a bridge in the rain cinematic soft light 35mm film grain "
         "wide angle tracking shot").split()
# the word the search looks for: in about a tenth of the prompts
NEEDLE = "zephyr"
# a change's time: from the change to the next frame painted (a frame, then a task after it)
TO_NEXT_PAINT = """
    const done = arguments[arguments.length - 1];
    const start = performance.now();
    %s
    requestAnimationFrame(() => setTimeout(() => done(performance.now() - start), 0));"""


def records(rows: int) -> pa.Table:
    rng = np.random.default_rng(0)
    ids = [f"row-{i:06d}" for i in range(rows)]
    status = rng.choice(["ok", "failed", "rejected"], rows, p=[0.9, 0.07, 0.03])
    lengths = rng.integers(15, 60, rows)
    prompts = [" ".join(rng.choice(WORDS, n)) + (f" {NEEDLE}" if i % 10 == 3 else "") for i, n in enumerate(lengths)]
    long = rng.random(rows) < 0.1
    chunks = np.where(long, rng.integers(2, 7, rows), 1)
    columns = {
        "id": ids, "status": status.tolist(), "prompt": prompts,
        "model": [MODELS[m] for m in rng.integers(0, len(MODELS), rows)],
        "error": [None if s == "ok" else "RuntimeError: CUDA out of memory after 3 attempts" if s == "failed"
                  else "num_frames=0: must be at least 1" for s in status],
        "video_path": [video_relpath(i) if s == "ok" else None for i, s in zip(ids, status, strict=True)],
        "seed": rng.integers(0, 2**63 - 1, rows).tolist(), "num_frames": (chunks * 16).tolist(),
        "fps": [8] * rows, "width": [512] * rows, "height": [320] * rows, "chunks": chunks.tolist(),
        "attempts": [0 if s == "rejected" else 1 for s in status],
        "seconds": [None if s == "rejected" else float(x) for s, x in zip(status, rng.gamma(2, 20, rows), strict=True)],
        "seams": [rng.gamma(4, 0.3, c - 1).tolist() if c > 1 else None for c in chunks],
        "drift": [[0.0, *rng.random(c - 1).tolist()] if c > 1 else None for c in chunks],
    }
    return pa.Table.from_pydict({f.name: columns.get(f.name, [None] * rows) for f in schema()}, schema=schema())


def place_posters(out: Path, table: pa.Table) -> None:
    """One real poster, linked (symbolically: a file takes only so many hard links) at every ok row's poster path."""
    ramp = np.linspace(0, 255, 320, dtype=np.uint8)
    frame = np.stack([np.tile(ramp, (180, 1)), np.tile(ramp[::-1], (180, 1)), np.full((180, 320), 120, np.uint8)], -1)
    (out / "videos").mkdir(parents=True)
    write_poster(frame, out / "poster.jpg")
    for path in table.column("video_path").to_pylist():
        if path:
            (out / poster_relpath(path)).symlink_to(out / "poster.jpg")


def browser(chromium: str):
    driver = headless_chromium(Path(chromium), "--enable-precise-memory-info")
    driver.set_script_timeout(120)
    return driver


def page_load(driver, page: Path) -> dict:
    driver.get(page.as_uri())
    deadline = time.monotonic() + 300
    while driver.execute_script("return document.body.dataset.loaded") != "true":
        assert time.monotonic() < deadline, "the page did not finish loading"
        time.sleep(0.05)
    # the first-cards marker is set just after a paint
    time.sleep(0.2)
    loaded = driver.execute_script("""return {first: galleryTimings.firstCards, all: galleryTimings.allLoaded,
        cards: document.querySelectorAll('#grid .card').length, shown: document.getElementById('shown').dataset.count,
        heap: performance.memory ? performance.memory.usedJSHeapSize / 2 ** 20 : null};""")
    scroll = driver.execute_async_script(TO_NEXT_PAINT % "window.scrollTo(0, document.documentElement.scrollHeight);")
    last_made = driver.execute_script(
        "return Math.max(...[...document.querySelectorAll('#grid .card')].map((c) => +c.dataset.index))")
    failed_option = "[...document.getElementById('status').options].find((o) => o.text.startsWith('failed')).value"
    filtered = driver.execute_async_script(TO_NEXT_PAINT % change("status", failed_option))
    failed = int(driver.execute_script("return document.getElementById('shown').dataset.count"))
    searched = driver.execute_async_script(TO_NEXT_PAINT % (change("status", "''", "change")
                                                           + change("search", f"'{NEEDLE}'", "input")))
    found = int(driver.execute_script("return document.getElementById('shown').dataset.count"))
    sorted_ = driver.execute_async_script(TO_NEXT_PAINT % (change("search", "''", "input")
                                                          + change("sort", "'seam'", "change")))
    return {"first_cards_ms": loaded["first"], "all_loaded_ms": loaded["all"], "cards_in_dom": loaded["cards"],
            "shown": int(loaded["shown"]), "heap_mb": loaded["heap"], "scroll_bottom_ms": scroll,
            "last_card_made": last_made, "filter_ms": filtered, "filtered_rows": failed, "search_ms": searched,
            "found_rows": found, "sort_ms": sorted_}


def change(control: str, value: str, event: str = "change") -> str:
    return (f"document.getElementById('{control}').value = {value};"
            f"document.getElementById('{control}').dispatchEvent(new Event('{event}'));")


def measure(rows: int, loads: int, chromium: str, scratch: Path) -> dict:
    table = records(rows)
    out = scratch / "out"
    place_posters(out, table)
    start = time.perf_counter()
    gallery.write(out, table)
    write_s = time.perf_counter() - start
    start = time.perf_counter()
    gallery.write(out, table)
    rewrite_s = time.perf_counter() - start
    data = list((out / "gallery").iterdir())
    driver = browser(chromium)
    try:
        runs = [page_load(driver, out / "index.html") for _ in range(loads)]
    finally:
        driver.quit()
    result = {key: statistics.median(run[key] for run in runs) for key in runs[0] if key != "heap_mb"}
    result["heap_mb"] = max(run["heap_mb"] for run in runs) if runs[0]["heap_mb"] is not None else None
    expected = {"shown": rows, "last_card_made": rows - 1,
                "filtered_rows": table.column("status").to_pylist().count("failed"),
                "found_rows": sum(NEEDLE in p for p in table.column("prompt").to_pylist())}
    assert {key: result[key] for key in expected} == expected, (result, expected)
    return {"rows": rows, "write_s": write_s, "rewrite_s": rewrite_s, "data_files": len(data),
            "data_mb": sum(p.stat().st_size for p in data) / 2**20,
            "page_kb": (out / "index.html").stat().st_size / 1024, **result, "loads": loads}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    parser.add_argument("--rows", default="10000,100000")
    parser.add_argument("--loads", type=int, default=3)
    parser.add_argument("--chromium", default=str(CHROMIUM))
    args = parser.parse_args()
    results = []
    for rows in map(int, args.rows.split(",")):
        with tempfile.TemporaryDirectory() as scratch:
            results.append(measure(rows, args.loads, args.chromium, Path(scratch)))
    report = {"measures": "gallery.write, then the page in headless Chromium from file:// (1400x1000)",
              "command": " ".join([os.path.basename(sys.executable), *sys.argv]), "cpu_cores": os.cpu_count(),
              "results": results}
    print(f"{'rows':>7} {'write s':>7} {'rewrite s':>9} {'files':>5} {'data MB':>7} {'first cards ms':>14} "
          f"{'all loaded ms':>13} {'cards in DOM':>12} {'scroll ms':>9} {'filter ms':>9} {'search ms':>9} "
          f"{'sort ms':>7} {'heap MB':>7}")
    for r in results:
        print(f"{r['rows']:>7} {r['write_s']:>7.2f} {r['rewrite_s']:>9.2f} {r['data_files']:>5} {r['data_mb']:>7.1f} "
              f"{r['first_cards_ms']:>14.0f} {r['all_loaded_ms']:>13.0f} {r['cards_in_dom']:>12.0f} "
              f"{r['scroll_bottom_ms']:>9.0f} {r['filter_ms']:>9.0f} {r['search_ms']:>9.0f} {r['sort_ms']:>7.0f} "
              f"{r['heap_mb'] or 0:>7.0f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
