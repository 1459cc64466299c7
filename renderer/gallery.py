"""The run's gallery: `OUT/index.html`, a static page that shows every record as a card (poster, the video on
hover, id, prompt, model, seed, status, error, seconds, recoveries, seam metrics) with filters, search and
sorting. No server: it opens from a local folder (file://), a shared filesystem or an object-store prefix, and
every link in it is relative to OUT.

Browsers refuse fetch() of local files, so the rows travel as scripts: `OUT/gallery/rows-NNNNN-HASH.js`, each a
call `galleryRows({...})` with a columnar chunk of ROWS_PER_FILE records, which the page inserts as <script>
elements, the first alone (the first cards paint from it) and the rest a few at a time. A file's name carries
the hash of its content, so a rewrite changes only the files whose rows changed, a browser never mixes a cached
old chunk with a new page, and the page switches from the old files to the new ones in one step: data files
first, the page last, then the old files are removed. The page keeps only the cards in view (and a screen
above and below) in the DOM, so it stays responsive at 100,000 rows.

Ids, prompts and errors are data: the page builds its elements with textContent and properties only.

What the page offers to tests and scripts (stable ids and classes):
- controls: `#search` (id and prompt, case-insensitive substring), `#status` and `#model` (selects; value ""
  for all, else the status, or the model's index in the page's model list: see the options' text), `#sort`
  (`input`, `slowest`, `fastest`, `seam`); `#counts` holds a `button.count` per status (`data-status`);
  `#shown` the number of rows that match (also as `data-count`), `#total` all rows.
- `#grid` holds one `article.card` per visible row (`data-index`: the row's position in the table, `data-status`),
  with `.media` (an `img.poster`, or a `.placeholder` naming the status; a `video.preview` while the pointer is
  over it), `.badge`, `.id`, `.prompt`, `.error`, `.model`, `.seed`, `.seconds`, `.attempts`, `.recoveries`,
  `.seams`. Clicking a card opens `dialog#viewer` (a `video` with controls, `a#viewer-link` to the mp4, the
  whole record).
- `document.body.dataset.loaded` is "true" once every data file is in; `window.galleryTimings` holds
  performance.now() markers: `firstCards` (the first cards painted), `allLoaded`, `lastView` (milliseconds the
  last filter, search or sort took).
"""
from __future__ import annotations

import hashlib
import json
import re
import time
from concurrent.futures import ThreadPoolExecutor
from importlib import resources
from pathlib import Path

from . import storage
from .paths import GALLERY_DIR, GALLERY_FILE, VIDEOS_DIR, poster_relpath
from .video import decode, write_poster

ROWS_PER_FILE = 2000
# the record's columns the page shows, as they are
PLAIN_COLUMNS = ("id", "prompt", "error", "video_path", "attempts", "num_frames", "fps", "width", "height",
                 "chunks", "recoveries")
# statuses in the order the page lists them; others (none today) follow
STATUS_ORDER = ("ok", "failed", "rejected")
DATA_FILE = re.compile(r"^rows-\d{5}-[0-9a-f]{12}\.js$")
# videos decoded at once for missing posters: the work is mostly waiting for a disk or an object store
POSTER_WORKERS = 8
PAGE_TYPE = "text/html; charset=utf-8"
SCRIPT_TYPE = "text/javascript; charset=utf-8"


def write(out, table) -> str:
    """Write the gallery of `table` (the run's records, metadata.parquet's schema) under `out`, a local folder
    or an object-store prefix; returns the page's location."""
    folder = storage.join(out, GALLERY_DIR)
    before = storage.file_names(folder)
    statuses = _ordered_statuses(table)
    models = sorted({m for m in _values(table, "model") if m is not None})
    files = []
    for number, chunk in enumerate(_chunks(table, statuses, models)):
        script = "galleryRows(" + _json(chunk) + ");\n"
        name = f"rows-{number:05d}-{hashlib.sha256(script.encode()).hexdigest()[:12]}.js"
        # the same name holds the same rows: a file already there needs no rewrite
        if name not in before:
            _write_text(storage.join(folder, name), script, SCRIPT_TYPE)
        files.append(name)
    page = storage.join(out, GALLERY_FILE)
    _write_text(page, _page(out, table, statuses, models, files), PAGE_TYPE)
    for name in before - set(files):
        if DATA_FILE.match(name):
            storage.delete(storage.join(folder, name))
    return page


def write_missing_posters(out, table) -> tuple[int, list[str]]:
    """Posters for `ok` videos that have none (outputs of runs from before posters): the first frame of each
    video, decoded from its beginning only. Returns (posters written, one line per video that could not be read)."""
    videos = [path for path, status in zip(_values(table, "video_path"), _values(table, "status"), strict=True)
              if status == "ok" and path]
    present = {f"{VIDEOS_DIR}/{name}" for name in storage.file_names(storage.join(out, VIDEOS_DIR))}
    missing = [path for path in videos if path in present and poster_relpath(path) not in present]
    with ThreadPoolExecutor(POSTER_WORKERS) as pool:
        problems = [problem for problem in pool.map(lambda path: _poster_from_video(out, path), missing) if problem]
    return len(missing) - len(problems), problems


def _poster_from_video(out, video_path: str) -> str | None:
    """Write one video's poster; the problem (naming the video) when its first frame cannot be read."""
    import av

    source = storage.join(out, video_path)
    try:
        with storage.opened(source) as file:
            frames, _ = decode(file, limit=1)
        if not frames:
            raise ValueError("no frame")
        write_poster(frames[0], storage.join(out, poster_relpath(video_path)))
    except (OSError, ValueError, av.FFmpegError) as exc:
        return f"{source}: no poster ({exc})"
    return None


def _ordered_statuses(table) -> list[str]:
    present = {s for s in _values(table, "status") if s is not None}
    return [s for s in STATUS_ORDER if s in present] + sorted(present - set(STATUS_ORDER))


def _chunks(table, statuses: list[str], models: list[str]):
    """The page's rows, ROWS_PER_FILE at a time: columns of plain values; status and model as indexes into the
    page's lists (-1: none); seeds as text; seconds, seams and drift rounded to what the page shows."""
    columns = {name: _values(table, name) for name in PLAIN_COLUMNS}
    status_index = {s: i for i, s in enumerate(statuses)}
    model_index = {m: i for i, m in enumerate(models)}
    columns["status"] = [status_index.get(s, -1) for s in _values(table, "status")]
    columns["model"] = [model_index.get(m, -1) for m in _values(table, "model")]
    # as text: a JavaScript number holds integers exactly only up to 2**53
    columns["seed"] = [None if seed is None else str(seed) for seed in _values(table, "seed")]
    columns["seconds"] = [None if s is None else round(s, 3) for s in _values(table, "seconds")]
    for name in ("seams", "drift"):
        columns[name] = [None if v is None else [round(x, 4) for x in v] for v in _values(table, name)]
    for start in range(0, table.num_rows, ROWS_PER_FILE):
        yield {"start": start, **{name: values[start:start + ROWS_PER_FILE] for name, values in columns.items()}}


def _values(table, name: str) -> list:
    """A column as Python values; all None where the table (an older run's) lacks it."""
    return table.column(name).to_pylist() if name in table.column_names else [None] * table.num_rows


def _page(out, table, statuses: list[str], models: list[str], files: list[str]) -> str:
    status_values = _values(table, "status")
    model_values = _values(table, "model")
    config = {
        "title": str(out).rstrip("/").rsplit("/", 1)[-1] if storage.is_uri(out) else Path(out).resolve().name,
        "written": time.strftime("%Y-%m-%d %H:%M %Z"),
        "total": table.num_rows, "files": [f"{GALLERY_DIR}/{name}" for name in files],
        "statuses": statuses, "statusCounts": [status_values.count(s) for s in statuses],
        "models": models, "modelCounts": [model_values.count(m) for m in models],
        "noModel": model_values.count(None),
    }
    parts = {"CONFIG": _json(config), "STYLE": _asset("gallery.css"), "SCRIPT": _asset("gallery.js")}
    # one pass: a value never has its own text substituted
    return re.sub(r"/\*\{\{(CONFIG|STYLE|SCRIPT)\}\}\*/", lambda m: parts[m.group(1)], _asset("gallery.html"))


def _json(value) -> str:
    """JSON that is also safe inside an HTML <script> element: no `<`, `>` or `&` that could close it."""
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _asset(name: str) -> str:
    return resources.files(__package__).joinpath("assets", name).read_text(encoding="utf-8")


def _write_text(location: str, text: str, content_type: str) -> None:
    with storage.writing(location, content_type=content_type) as temp:
        temp.write_text(text, encoding="utf-8")
