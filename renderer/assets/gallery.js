"use strict";
// The gallery page (see renderer/gallery.py). Rows arrive as data scripts calling galleryRows(chunk); the grid keeps
// only the cards in view (and a screen above and below) in the DOM. Every value from the records is set with
// textContent or a property, never parsed as HTML.
(function () {
  const config = JSON.parse(document.getElementById("gallery-config").textContent);
  const CARD_MIN_WIDTH = 280;
  const CARD_HEIGHT = 368;
  const GAP = 16;
  // data files loading at once after the first
  const PARALLEL_LOADS = 4;
  const timings = (window.galleryTimings = { firstCards: null, allLoaded: null, lastView: null });

  const total = config.total;
  const rows = {
    id: new Array(total), prompt: new Array(total), error: new Array(total), video: new Array(total),
    seed: new Array(total), attempts: new Array(total), frames: new Array(total), fps: new Array(total),
    width: new Array(total), height: new Array(total), chunks: new Array(total), recoveries: new Array(total),
    seams: new Array(total), drift: new Array(total),
    status: new Int32Array(total), model: new Int32Array(total),
    seconds: new Float64Array(total).fill(NaN), seam: new Float64Array(total).fill(NaN),
    // id and prompt, lower case, for the search
    text: new Array(total), loaded: new Uint8Array(total),
  };

  const $ = (id) => document.getElementById(id);
  const grid = $("grid");
  const controls = { search: $("search"), status: $("status"), model: $("model"), sort: $("sort") };

  // ---- building elements from data: text only

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }

  function statusClass(status) {
    return ["ok", "failed", "rejected"].includes(status) ? "is-" + status : "is-other";
  }

  // a record's relative path as a URL: each segment escaped, so no value can become a scheme or a query
  function relativeUrl(path) {
    return path.split("/").map(encodeURIComponent).join("/");
  }

  function posterPath(video) {
    return video.replace(/\.mp4$/, ".jpg");
  }

  function number(value) {
    return value.toLocaleString("en-US");
  }

  function seconds(value) {
    return (value < 10 ? value.toFixed(2) : value < 100 ? value.toFixed(1) : Math.round(value)) + " s";
  }

  function list(values, digits) {
    return values.map((v) => v.toFixed(digits)).join(", ");
  }

  // ---- data

  window.galleryRows = function (chunk) {
    const start = chunk.start;
    const count = chunk.id.length;
    for (let k = 0; k < count; k++) {
      const i = start + k;
      if (rows.loaded[i]) continue;
      rows.id[i] = chunk.id[k];
      rows.prompt[i] = chunk.prompt[k];
      rows.error[i] = chunk.error[k];
      rows.video[i] = chunk.video_path[k];
      rows.seed[i] = chunk.seed[k];
      rows.attempts[i] = chunk.attempts[k];
      rows.frames[i] = chunk.num_frames[k];
      rows.fps[i] = chunk.fps[k];
      rows.width[i] = chunk.width[k];
      rows.height[i] = chunk.height[k];
      rows.chunks[i] = chunk.chunks[k];
      rows.recoveries[i] = chunk.recoveries[k];
      rows.seams[i] = chunk.seams[k];
      rows.drift[i] = chunk.drift[k];
      rows.status[i] = chunk.status[k];
      rows.model[i] = chunk.model[k];
      if (chunk.seconds[k] !== null) rows.seconds[i] = chunk.seconds[k];
      if (chunk.seams[k] && chunk.seams[k].length) rows.seam[i] = Math.max(...chunk.seams[k]);
      rows.text[i] = (String(chunk.id[k]) + "\n" + (chunk.prompt[k] || "")).toLowerCase();
      rows.loaded[i] = 1;
    }
    scheduleView();
  };

  function loadData() {
    let next = 0;
    let running = 0;
    let limit = 1;
    let finished = 0;
    const failed = [];
    function done() {
      $("progress-bar").style.width = (100 * finished / Math.max(1, config.files.length)) + "%";
      if (finished < config.files.length) return;
      timings.allLoaded = performance.now();
      document.body.dataset.loaded = "true";
      if (failed.length) {
        const notice = $("notice");
        notice.textContent = "Could not load " + failed.join(", ") + "; the rows in them are missing.";
        notice.hidden = false;
      }
      scheduleView();
    }
    function start() {
      while (running < limit && next < config.files.length) {
        const file = config.files[next++];
        const script = document.createElement("script");
        script.src = relativeUrl(file);
        running++;
        script.onload = script.onerror = (event) => {
          if (event.type === "error") failed.push(file);
          script.remove();
          running--;
          finished++;
          // the first file alone paints the first cards; the rest come a few at a time
          limit = PARALLEL_LOADS;
          start();
          done();
        };
        document.head.appendChild(script);
      }
    }
    start();
    done();
  }

  // ---- filters and sorting: the view is the list of row indexes shown, in order

  let view = [];

  function computeView() {
    const began = performance.now();
    const status = controls.status.value === "" ? null : Number(controls.status.value);
    const model = controls.model.value === "" ? null : Number(controls.model.value);
    const query = controls.search.value.trim().toLowerCase();
    const matches = [];
    for (let i = 0; i < total; i++) {
      if (!rows.loaded[i]) continue;
      if (status !== null && rows.status[i] !== status) continue;
      if (model !== null && rows.model[i] !== model) continue;
      if (query && !rows.text[i].includes(query)) continue;
      matches.push(i);
    }
    sortView(matches, controls.sort.value);
    view = matches;
    $("shown").textContent = number(view.length);
    $("shown").dataset.count = String(view.length);
    $("empty").hidden = view.length > 0 || document.body.dataset.loaded !== "true";
    layout();
    render();
    timings.lastView = performance.now() - began;
  }

  // rows without the sort key (no seconds, no seams) go last, in input order
  function sortView(indexes, sort) {
    if (sort === "input") return;
    const key = sort === "seam" ? rows.seam : rows.seconds;
    const direction = sort === "fastest" ? 1 : -1;
    indexes.sort((a, b) => {
      const x = key[a];
      const y = key[b];
      const missing = Number.isNaN(x) - Number.isNaN(y);
      if (missing || Number.isNaN(x)) return missing || a - b;
      return direction * (x - y) || a - b;
    });
  }

  // `work` once before the next frame, however often it is asked for until then
  function oncePerFrame(work) {
    let pending = false;
    return () => {
      if (pending) return;
      pending = true;
      requestAnimationFrame(() => {
        pending = false;
        work();
      });
    };
  }

  const scheduleView = oncePerFrame(() => {
    computeView();
    if (timings.firstCards === null && live.size) {
      // after this frame is painted
      setTimeout(() => { timings.firstCards = timings.firstCards || performance.now(); }, 0);
    }
  });

  // ---- the virtual grid

  let columns = 1;
  let cardWidth = CARD_MIN_WIDTH;
  // row index -> its card, for the cards in the DOM
  let live = new Map();

  function layout() {
    const width = grid.clientWidth;
    columns = Math.max(1, Math.floor((width + GAP) / (CARD_MIN_WIDTH + GAP)));
    cardWidth = (width - GAP * (columns - 1)) / columns;
    const lines = Math.ceil(view.length / columns);
    grid.style.height = (lines ? lines * (CARD_HEIGHT + GAP) - GAP : 0) + "px";
  }

  function render() {
    const pitch = CARD_HEIGHT + GAP;
    // how far the grid's top has scrolled above the window's
    const top = -grid.getBoundingClientRect().top;
    const margin = window.innerHeight;
    const first = Math.max(0, Math.floor((top - margin) / pitch)) * columns;
    const last = Math.min(view.length, Math.ceil((top + window.innerHeight + margin) / pitch) * columns);
    const kept = new Map();
    const added = document.createDocumentFragment();
    for (let position = first; position < last; position++) {
      const index = view[position];
      let card = live.get(index);
      if (card) {
        live.delete(index);
      } else {
        card = makeCard(index);
        added.appendChild(card);
      }
      place(card, position);
      kept.set(index, card);
    }
    for (const card of live.values()) dropCard(card);
    live = kept;
    grid.appendChild(added);
  }

  function place(card, position) {
    const x = (position % columns) * (cardWidth + GAP);
    const y = Math.floor(position / columns) * (CARD_HEIGHT + GAP);
    const transform = "translate(" + x + "px," + y + "px)";
    if (card.style.transform !== transform) card.style.transform = transform;
    const width = cardWidth + "px";
    if (card.style.width !== width) card.style.width = width;
  }

  const scheduleRender = oncePerFrame(() => render());

  // ---- cards

  function makeCard(i) {
    const status = config.statuses[rows.status[i]];
    const card = el("article", "card " + statusClass(status));
    card.dataset.index = String(i);
    card.dataset.status = status;
    card.tabIndex = 0;
    card.setAttribute("aria-label", rows.id[i]);

    const media = el("div", "media");
    if (rows.video[i]) {
      const poster = el("img", "poster");
      poster.loading = "lazy";
      poster.decoding = "async";
      poster.alt = "";
      poster.onerror = () => poster.replaceWith(placeholder("no poster", "\u25B6"));
      poster.src = relativeUrl(posterPath(rows.video[i]));
      media.appendChild(poster);
      media.appendChild(el("span", "play-hint"));
      if (rows.frames[i] !== null) {
        media.appendChild(el("span", "frames", rows.frames[i] + " frames \u00B7 " + rows.fps[i] + " fps"));
      }
    } else {
      media.appendChild(placeholder(status, status === "failed" ? "\u2715" : status === "rejected" ? "\u2298" : "?"));
    }
    media.appendChild(el("span", "badge", status));
    card.appendChild(media);

    const body = el("div", "body");
    const id = el("h3", "id", rows.id[i]);
    id.title = rows.id[i];
    body.appendChild(id);
    const prompt = el("p", "prompt", rows.prompt[i] || "");
    if (rows.prompt[i]) prompt.title = rows.prompt[i];
    body.appendChild(prompt);
    if (rows.error[i]) {
      // the prompt gives the error room
      card.classList.add("has-error");
      const error = el("p", "error", rows.error[i]);
      error.title = rows.error[i];
      body.appendChild(error);
    }
    const meta = el("div", "meta");
    const model = el("span", "model", modelName(i));
    model.title = modelName(i);
    meta.appendChild(model);
    if (rows.seed[i] !== null && rows.seed[i] !== undefined) meta.appendChild(el("span", "seed", "seed " + rows.seed[i]));
    body.appendChild(meta);
    body.appendChild(stats(i));
    card.appendChild(body);

    if (rows.video[i]) {
      card.addEventListener("mouseenter", () => startPreview(card, i));
      card.addEventListener("mouseleave", () => stopPreview(card));
    }
    card.addEventListener("click", () => openViewer(i));
    card.addEventListener("keydown", (event) => {
      if (event.key === "Enter" || event.key === " ") {
        event.preventDefault();
        openViewer(i);
      }
    });
    return card;
  }

  function stats(i) {
    const line = el("div", "stats");
    if (!Number.isNaN(rows.seconds[i])) line.appendChild(el("span", "seconds", seconds(rows.seconds[i])));
    if (rows.attempts[i] > 1) line.appendChild(el("span", "attempts", rows.attempts[i] + " attempts"));
    if (rows.recoveries[i] && rows.recoveries[i].length) {
      // what each recovery answered ("out_of_memory: decode_chunk_size=6, ..."); the whole of it in the title
      const kinds = rows.recoveries[i].map((recovery) => recovery.split(":")[0]);
      const recoveries = el("span", "recoveries", "recovered: " + kinds.join(", "));
      recoveries.title = rows.recoveries[i].join("\n");
      line.appendChild(recoveries);
    }
    if (!Number.isNaN(rows.seam[i])) {
      const drift = rows.drift[i] && rows.drift[i].length ? Math.max(...rows.drift[i]) : null;
      const text = "seam " + rows.seam[i].toFixed(2) + (drift === null ? "" : " \u00B7 drift " + drift.toFixed(3));
      const seams = el("span", "seams", text);
      seams.title = rows.chunks[i] + " chunks; seams " + list(rows.seams[i], 3) +
        (rows.drift[i] ? "; drift " + list(rows.drift[i], 4) : "");
      line.appendChild(seams);
    }
    return line;
  }

  function modelName(i) {
    return rows.model[i] >= 0 ? config.models[rows.model[i]] : "no model";
  }

  function placeholder(label, icon) {
    const box = el("div", "placeholder");
    const mark = el("span", "icon", icon);
    mark.setAttribute("aria-hidden", "true");
    box.appendChild(mark);
    box.appendChild(el("span", "label", label));
    return box;
  }

  // ---- video: made on demand, removed when the pointer leaves or the card scrolls away

  function makeVideo(i, controlsShown) {
    const video = document.createElement("video");
    video.muted = true;
    video.loop = true;
    video.playsInline = true;
    video.autoplay = true;
    video.preload = "auto";
    video.controls = controlsShown;
    video.src = relativeUrl(rows.video[i]);
    return video;
  }

  function startPreview(card, i) {
    if (card.querySelector("video")) return;
    const video = makeVideo(i, false);
    video.className = "preview";
    card.querySelector(".media").insertBefore(video, card.querySelector(".badge"));
    card.classList.add("playing");
    // play() rejects when the video is removed before it starts: nothing to report
    video.play().catch(() => {});
  }

  function releaseVideo(video) {
    video.pause();
    video.removeAttribute("src");
    video.load();
    video.remove();
  }

  function stopPreview(card) {
    const video = card.querySelector("video");
    if (video) releaseVideo(video);
    card.classList.remove("playing");
  }

  function dropCard(card) {
    stopPreview(card);
    card.remove();
  }

  // ---- the viewer: one record, whole

  const viewer = $("viewer");

  function openViewer(i) {
    const media = viewer.querySelector(".viewer-media");
    media.replaceChildren(rows.video[i] ? makeVideo(i, true) : placeholder(config.statuses[rows.status[i]], "?"));
    viewer.querySelector(".viewer-id").textContent = rows.id[i];
    const fields = viewer.querySelector(".viewer-fields");
    fields.replaceChildren();
    const status = config.statuses[rows.status[i]];
    const statusText = el("span", "viewer-status " + statusClass(status), status);
    field(fields, "status", statusText);
    field(fields, "prompt", rows.prompt[i]);
    field(fields, "error", rows.error[i], "error-text");
    field(fields, "model", modelName(i));
    field(fields, "seed", rows.seed[i]);
    if (rows.frames[i] !== null) field(fields, "frames", rows.frames[i] + " at " + rows.fps[i] + " fps");
    if (rows.width[i] !== null) field(fields, "size", rows.width[i] + " \u00D7 " + rows.height[i]);
    if (!Number.isNaN(rows.seconds[i])) field(fields, "seconds", seconds(rows.seconds[i]));
    field(fields, "attempts", rows.attempts[i]);
    if (rows.recoveries[i] && rows.recoveries[i].length) field(fields, "recoveries", rows.recoveries[i].join(", "));
    if (rows.chunks[i] > 1) field(fields, "chunks", rows.chunks[i]);
    if (rows.seams[i]) field(fields, "seams", list(rows.seams[i], 3));
    if (rows.drift[i]) field(fields, "drift", list(rows.drift[i], 4));
    const link = $("viewer-link");
    link.hidden = !rows.video[i];
    if (rows.video[i]) link.href = relativeUrl(rows.video[i]);
    else link.removeAttribute("href");
    viewer.showModal();
  }

  // one line of the viewer's record: a value (text) or an element; nothing when there is no value
  function field(list, name, value, className) {
    if (value === null || value === undefined || value === "") return;
    list.appendChild(el("dt", null, name));
    const dd = value instanceof Node ? el("dd", className) : el("dd", className, value);
    if (value instanceof Node) dd.appendChild(value);
    list.appendChild(dd);
  }

  viewer.addEventListener("close", () => {
    const video = viewer.querySelector("video");
    if (video) releaseVideo(video);
  });
  viewer.addEventListener("click", (event) => {
    // a click on the backdrop (the dialog itself, outside its content) closes it
    if (event.target === viewer) viewer.close();
  });
  $("viewer-close").addEventListener("click", () => viewer.close());

  // ---- header and controls

  function option(select, value, text) {
    const item = el("option", null, text);
    item.value = value;
    select.appendChild(item);
  }

  function setUpControls() {
    document.title = "Render gallery \u2013 " + config.title;
    $("run-name").textContent = config.title;
    $("run-name").title = "written " + config.written;
    $("total").textContent = number(total);
    const counts = $("counts");
    config.statuses.forEach((status, code) => {
      option(controls.status, String(code), status + " (" + number(config.statusCounts[code]) + ")");
      const button = el("button", "count");
      button.type = "button";
      button.dataset.status = status;
      button.setAttribute("aria-pressed", "false");
      button.appendChild(el("span", "dot"));
      button.appendChild(el("span", "name", status));
      button.appendChild(el("span", "number", number(config.statusCounts[code])));
      button.addEventListener("click", () => {
        controls.status.value = controls.status.value === String(code) ? "" : String(code);
        controlsChanged();
      });
      counts.appendChild(button);
    });
    config.models.forEach((model, code) => {
      option(controls.model, String(code), model + " (" + number(config.modelCounts[code]) + ")");
    });
    if (config.noModel) option(controls.model, "-1", "no model (" + number(config.noModel) + ")");
    for (const control of [controls.status, controls.model, controls.sort]) {
      control.addEventListener("change", controlsChanged);
    }
    // input: as the user types; change: a value set by other means (a script, a form reset)
    controls.search.addEventListener("input", controlsChanged);
    controls.search.addEventListener("change", controlsChanged);
  }

  function controlsChanged() {
    for (const button of document.querySelectorAll("button.count")) {
      const code = String(config.statuses.indexOf(button.dataset.status));
      button.setAttribute("aria-pressed", String(controls.status.value === code));
    }
    window.scrollTo(0, 0);
    computeView();
  }

  setUpControls();
  window.addEventListener("scroll", scheduleRender, { passive: true });
  window.addEventListener("resize", () => {
    layout();
    scheduleRender();
  });
  loadData();
})();
