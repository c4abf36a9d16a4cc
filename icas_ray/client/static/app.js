// The icas label page: loads images and label maps from the server, paints in the browser
// (painting.js), and talks to /api/ for saving, GrabCut, SAM and template painting.
"use strict";

(() => {
  const TOKEN = new URLSearchParams(location.search).get("token");
  const PRESETS = [[204, 0, 0], [0, 170, 0], [0, 80, 220], [240, 200, 0], [200, 0, 200],
    [0, 200, 200], [255, 128, 0], [128, 0, 255], [255, 255, 255]];
  const DOUBLE_MS = 400;
  const BOUNDARY = [255, 255, 0];
  const MODE_KEYS = { g: "grabcut", s: "sam", e: "automatic", Escape: "escape", "?": "help" };

  const $ = (id) => document.getElementById(id);
  const view = $("view"), marks = $("marks");
  const ctx = view.getContext("2d");
  const mctx = marks.getContext("2d");

  // Everything tests and the benchmark read (window.icas).
  const app = {
    ready: false, busy: 0, pending: 0, state: null, index: -1, tried: null, meta: null, painting: null,
    palette: [], colour: 1, mode: "paint", continuous: null, debug: false, dirty: false,
    cutPoints: [], grabcut: null, sam: null, status: "", stopped: false,
    timing: { click: [], show: [] }, errors: [],
  };
  window.icas = app;
  // Open image i as the keys do (for the benchmark and tests).
  app.goTo = (i) => enqueue(() => go(i));

  // -- server --------------------------------------------------------------------------
  function headers(extra) {
    const h = Object.assign({ "X-Icas-Client": "1" }, extra || {});
    if (TOKEN) h["X-Icas-Token"] = TOKEN;
    return h;
  }

  async function request(path, options) {
    app.busy++;
    try {
      const opts = Object.assign({}, options || {});
      opts.headers = headers(opts.headers);
      const r = await fetch(path, opts);
      if (!r.ok) {
        let msg = r.statusText;
        try { msg = (await r.json()).error || msg; } catch (e) { /* not JSON */ }
        throw new Error(msg);
      }
      return r;
    } finally {
      app.busy--;
    }
  }

  const getJSON = async (path) => (await request(path)).json();
  const postJSON = async (path, body) => (await request(path, {
    method: "POST", body: JSON.stringify(body || {}),
    headers: { "Content-Type": "application/json" },
  })).json();

  async function decodePng(blob) {
    const bmp = await createImageBitmap(blob, { colorSpaceConversion: "none", premultiplyAlpha: "none" });
    const c = new OffscreenCanvas(bmp.width, bmp.height);
    const g = c.getContext("2d", { willReadFrequently: true });
    g.drawImage(bmp, 0, 0);
    bmp.close();
    return g.getImageData(0, 0, c.width, c.height);
  }

  // Label map / index map packed as R + 256 G + 65536 B.
  function unpack(imageData) {
    const d = imageData.data, n = imageData.width * imageData.height, out = new Int32Array(n);
    for (let i = 0, o = 0; i < n; i++, o += 4) out[i] = d[o] | (d[o + 1] << 8) | (d[o + 2] << 16);
    return out;
  }

  function b64Blob(b64) {
    const s = atob(b64), bytes = new Uint8Array(s.length);
    for (let i = 0; i < s.length; i++) bytes[i] = s.charCodeAt(i);
    return new Blob([bytes], { type: "image/png" });
  }
  const unpackB64 = async (b64) => unpack(await decodePng(b64Blob(b64)));

  function toB64(bytes) {
    let s = "";
    for (let i = 0; i < bytes.length; i += 0x8000) s += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
    return btoa(s);
  }

  async function gzip(bytes) {
    const stream = new Blob([bytes]).stream().pipeThrough(new CompressionStream("gzip"));
    return new Uint8Array(await new Response(stream).arrayBuffer());
  }

  // -- images, prefetched in the page too ----------------------------------------------
  const pixels = new Map();  // index -> Promise<{image: ImageData, labels: Int32Array}>

  function loadPixels(i) {
    let p = pixels.get(i);
    if (!p) {
      p = (async () => {
        const [img, lab] = await Promise.all([
          request(`/api/images/${i}/image`).then((r) => r.blob()).then(decodePng),
          request(`/api/images/${i}/labels`).then((r) => r.blob()).then(decodePng)]);
        return { image: img, labels: unpack(lab) };
      })();
      p.catch(() => pixels.delete(i));
      pixels.set(i, p);
      while (pixels.size > 4) pixels.delete(pixels.keys().next().value);
    }
    return p;
  }

  // -- palette -------------------------------------------------------------------------
  function colourId(rgb) {
    const key = rgb.join(",");
    let k = app.palette.findIndex((c) => c.join(",") === key);
    if (k < 0) { app.palette.push(rgb.slice(0, 3)); k = app.palette.length - 1; buildSwatches(); }
    return k + 1;
  }

  function buildSwatches() {
    const box = $("swatches");
    box.innerHTML = "";
    app.palette.forEach((c, k) => {
      const s = document.createElement("div");
      s.className = "swatch" + (k + 1 === app.colour ? " selected" : "");
      s.style.background = `rgb(${c[0]},${c[1]},${c[2]})`;
      s.title = `(R:${c[0]},G:${c[1]},B:${c[2]})`;
      s.dataset.colour = String(k + 1);
      if (k < 9) { const n = document.createElement("span"); n.textContent = String(k + 1); s.appendChild(n); }
      s.addEventListener("click", () => pick(k + 1));
      box.appendChild(s);
    });
    updateBar();
  }

  function pick(k) {
    if (k < 1 || k > app.palette.length) return;
    app.colour = k;
    if (app.painting && app.painting.stroke && app.painting.stroke.kind === "fill") {
      app.painting.endStroke();
      app.painting.beginStroke("fill", k);
    }
    buildSwatches();
  }

  // -- rendering -----------------------------------------------------------------------
  let base32 = null, shown32 = null, out = null, out32 = null, boundaryVersion = -1;
  let renderQueued = false;

  function setupCanvas(w, h) {
    for (const c of [view, marks]) { c.width = w; c.height = h; }
    out = ctx.createImageData(w, h);
    out32 = new Uint32Array(out.data.buffer);
    shown32 = new Uint32Array(w * h);
    fitCanvas();
  }

  function fitCanvas() {
    if (!app.painting) return;
    const stage = $("stage");
    const w = app.painting.w, h = app.painting.h;
    const s = Math.min((stage.clientWidth - 16) / w, (stage.clientHeight - 16) / h, 4);
    const scale = s >= 1 ? Math.floor(s * 100) / 100 : s;
    for (const c of [view, marks]) { c.style.width = `${w * scale}px`; c.style.height = `${h * scale}px`; }
  }
  window.addEventListener("resize", fitCanvas);

  const pack = (r, g, b) => (255 << 24) | (b << 16) | (g << 8) | r;  // little-endian RGBA

  function refreshBoundaries() {
    const p = app.painting, lab = p.labels, w = p.w, n = p.n, bc = pack(...BOUNDARY);
    for (let i = 0; i < n; i++) {
      const l = lab[i];
      const edge = l === 0 || (i % w < w - 1 && lab[i + 1] !== l) || (i + w < n && lab[i + w] !== l);
      shown32[i] = edge ? bc : base32[i];
    }
    boundaryVersion = p.labelsVersion;
  }

  function labelColour(l) {
    if (l === 0) return pack(0, 0, 0);
    const x = Math.imul(l, 2654435761) >>> 0;
    return pack(64 + (x & 127), 64 + ((x >>> 8) & 127), 64 + ((x >>> 16) & 127));
  }

  function render() {
    const p = app.painting;
    if (!p) return;
    if (boundaryVersion !== p.labelsVersion) refreshBoundaries();
    const paint = p.paint, n = p.n;
    if (app.debug) {
      // The seed's debug windows side by side in one: segments, painted pixels white.
      for (let i = 0; i < n; i++) out32[i] = paint[i] ? 0xffffffff : labelColour(p.labels[i]);
    } else {
      const a = Math.round(parseFloat($("opacity").value) * 256), b = 256 - a;
      const palR = [], palG = [], palB = [];
      app.palette.forEach((c, k) => { palR[k + 1] = c[0] * a; palG[k + 1] = c[1] * a; palB[k + 1] = c[2] * a; });
      const preview = app.mode !== "paint" ? modeResult() : null;
      for (let i = 0; i < n; i++) {
        const k = paint[i];
        let px = shown32[i];
        if (preview && preview.mask(i)) {
          const r = px & 255, g = (px >>> 8) & 255, bb = (px >>> 16) & 255;
          px = pack((r * 100 + 60 * 156) >> 8, (g * 100 + 220 * 156) >> 8, (bb * 100 + 90 * 156) >> 8);
        }
        if (k) {
          const r = px & 255, g = (px >>> 8) & 255, bb = (px >>> 16) & 255;
          px = pack((palR[k] + r * b) >> 8, (palG[k] + g * b) >> 8, (palB[k] + bb * b) >> 8);
        }
        out32[i] = px;
      }
    }
    ctx.putImageData(out, 0, 0);
    drawMarks();
  }

  function requestRender() {
    if (renderQueued) return;
    renderQueued = true;
    requestAnimationFrame(() => { renderQueued = false; render(); });
  }

  // Render now and time it from the input event to the frame that shows it.
  function renderTimed(ev, kind) {
    render();
    const t0 = ev.timeStamp;
    const handled = performance.now() - t0;
    requestAnimationFrame(() => {
      const list = app.timing[kind];
      list.push({ handled_ms: handled, frame_ms: performance.now() - t0 });
      if (list.length > 1000) list.shift();
    });
  }

  function drawMarks() {
    const p = app.painting;
    mctx.clearRect(0, 0, marks.width, marks.height);
    if (!p) return;
    const lw = Math.max(1, Math.round(p.w / 400));
    mctx.lineWidth = lw;
    if (app.cutPoints.length) {
      mctx.strokeStyle = "#ff3030";
      mctx.fillStyle = "#ff3030";
      const [x, y] = app.cutPoints[app.cutPoints.length - 1];
      mctx.beginPath(); mctx.arc(x + 0.5, y + 0.5, 2 * lw + 1, 0, 2 * Math.PI); mctx.fill();
    }
    if (app.mode === "grabcut" && app.grabcut) {
      const g = app.grabcut;
      const colours = { fg: "#00ff00", bg: "#ff0000", probable_fg: "#80ffff", probable_bg: "#ff80ff" };
      for (const a of g.annotations) {
        if (a.kind === "rect") {
          mctx.strokeStyle = "#4fa3ff";
          mctx.strokeRect(a.rect[0] + 0.5, a.rect[1] + 0.5, a.rect[2] - a.rect[0], a.rect[3] - a.rect[1]);
        } else {
          mctx.strokeStyle = colours[a.kind];
          mctx.lineWidth = 2 * g.brush;
          mctx.lineCap = "round";
          mctx.beginPath();
          a.points.forEach(([x, y], q) => (q ? mctx.lineTo(x, y) : mctx.moveTo(x, y)));
          if (a.points.length === 1) mctx.lineTo(a.points[0][0] + 0.1, a.points[0][1]);
          mctx.stroke();
          mctx.lineWidth = lw;
        }
      }
    }
    if (app.mode === "sam" && app.sam) {
      for (const a of app.sam.prompts) {
        if (a.kind === "box") {
          mctx.strokeStyle = "#4fa3ff";
          mctx.strokeRect(a.box[0] + 0.5, a.box[1] + 0.5, a.box[2] - a.box[0], a.box[3] - a.box[1]);
        } else {
          mctx.fillStyle = a.label ? "#00ff00" : "#ff0000";
          mctx.beginPath(); mctx.arc(a.point[0], a.point[1], 3 * lw + 1, 0, 2 * Math.PI); mctx.fill();
        }
      }
    }
    if (drag && drag.rect) {
      const [x0, y0, x1, y1] = normRect(drag.start, drag.last);
      mctx.strokeStyle = "#4fa3ff";
      mctx.setLineDash([4, 3]);
      mctx.strokeRect(x0 + 0.5, y0 + 0.5, x1 - x0, y1 - y0);
      mctx.setLineDash([]);
    }
  }

  // The GrabCut / SAM result shown (tinted) before f passes it to painting.
  function modeResult() {
    const r = app.mode === "grabcut" ? app.grabcut && app.grabcut.result
      : app.mode === "sam" ? app.sam && app.sam.result : null;
    if (!r) return null;
    return { mask: (i) => r.labels[i] >= 1 && r.labels[i] <= r.foreground };
  }

  // -- bar and status ------------------------------------------------------------------
  function updateBar() {
    const m = $("mode");
    let text = "fill", cls = "";
    if (app.debug) { text = "debug view"; cls = "debug"; }
    else if (app.mode === "grabcut") { text = `GrabCut (${app.grabcut ? app.grabcut.iterations : 0} it.)`; cls = "grabcut"; }
    else if (app.mode === "sam") { text = "SAM prompts"; cls = "sam"; }
    else if (app.continuous === "fill") { text = "continuous fill"; cls = "continuous-fill"; }
    else if (app.continuous === "unfill") { text = "continuous unfill"; cls = "continuous-unfill"; }
    m.textContent = text;
    m.className = cls;
    const c = app.palette[app.colour - 1];
    m.style.boxShadow = c ? `inset 0 -4px 0 rgb(${c[0]},${c[1]},${c[2]})` : "";
    if (app.state && app.meta) {
      const done = app.state.images.filter((im) => im.done).length;
      $("name").textContent = app.meta.name + (app.dirty ? " *" : "");
      $("progress").textContent = `${app.index + 1}/${app.state.images.length}, ${done} done`;
    }
  }

  function setStatus(text, cls) {
    app.status = text;
    app.statusClass = cls || "";
    const s = $("status");
    s.textContent = text;
    s.className = cls || "";
  }

  function fail(e) {
    app.errors.push(String(e.message || e));
    setStatus(String(e.message || e), "error");
  }

  function markDirty() { app.dirty = true; updateBar(); }

  // -- opening images ------------------------------------------------------------------
  async function go(i, ev) {
    if (!app.state || i < 0 || i >= app.state.images.length) return;
    const t0 = ev ? ev.timeStamp : performance.now();
    if (app.painting) app.painting.endStroke();
    // n and p go on from the image asked for, whether it opened or not: one that cannot be
    // opened (its error shown) is stepped over, not retried.
    app.tried = i;
    const [meta, px] = await Promise.all([postJSON("/api/open", { id: i }), loadPixels(i)]);
    app.index = i;
    app.meta = meta;
    const p = new Painting(px.image.width, px.image.height, px.labels.slice());
    base32 = new Uint32Array(px.image.data.buffer.slice(0));
    app.painting = p;
    app.dirty = false;
    app.continuous = null;
    app.cutPoints = [];
    app.grabcut = null;
    app.sam = null;
    app.mode = "paint";
    boundaryVersion = -1;
    setupCanvas(p.w, p.h);
    let status = `${meta.name}: ${meta.width}x${meta.height}, ${meta.segments} segments (${meta.source})`;
    let cls = "";
    if (meta.paint) {
      const values = await unpackB64(meta.paint.png);
      p.loadPaint(values, meta.paint.colors.map(colourId));
      status = `${meta.name} is done: its saved masks are shown; space saves again`;
      cls = "done";
    } else if (meta.proposal) {
      const values = await unpackB64(meta.proposal.png);
      p.applyPaint(values, meta.proposal.colors.map(colourId));
      app.dirty = true;
      status = `proposal from ${meta.proposal.source} (${meta.proposal.method}, score ${meta.proposal.score}): ` +
        "space accepts, paint to fix, z removes it, n skips";
      cls = "proposal";
    }
    if (meta.done && !meta.paint) { status = `${meta.name} is done (no masks)`; cls = "done"; }
    const start = app.state.start_mode;
    if (!meta.done && !meta.proposal && (start === "grabcut" || start === "sam")) enterMode(start);
    setStatus(status, cls);
    render();
    updateBar();
    requestAnimationFrame(() => {
      app.timing.show.push({ frame_ms: performance.now() - t0 });
    });
    if (i + 1 < app.state.images.length) loadPixels(i + 1).catch(() => {});
  }

  async function refreshState() {
    app.state = await getJSON("/api/state");
  }

  function next(ev) { const at = app.tried ?? app.index; if (at + 1 < app.state.images.length) return go(at + 1, ev); }
  function previous(ev) { const at = app.tried ?? app.index; if (at > 0) return go(at - 1, ev); }

  async function save(ev) {
    const p = app.painting, from = app.index;
    if (!p) return;
    p.endStroke();
    const paint = await gzip(new Uint8Array(p.paint.buffer));
    const ans = await postJSON(`/api/images/${app.index}/save`, {
      width: p.w, height: p.h, palette: app.palette, paint: toB64(paint),
    });
    app.dirty = false;
    app.state.images[app.index].done = true;
    await refreshState();
    const names = ans.files.map((f) => f.split(/[\\/]/).pop());
    const saved = `saved ${names.length ? names.join(", ") : "(nothing painted)"}`;
    if (ans.next !== from) {
      await go(ans.next, ev);
      // What the next image says (a proposal) matters more: it comes first.
      setStatus(`${app.status} (${saved})`, app.statusClass);
    } else {
      updateBar();
      setStatus(`${saved}; every image is done`, "done");
    }
  }

  async function quit() {
    if (app.dirty && !window.confirm("This image has unsaved paint. Quit and drop it?")) return;
    await postJSON("/api/quit", {});
    app.stopped = true;
    setStatus("icas label stopped: you can close this tab", "done");
  }

  // -- modes: GrabCut and SAM ----------------------------------------------------------
  function enterMode(mode) {
    if (mode === "sam" && !app.state.sam) { setStatus("SAM mode needs icas label --sam-url URL", "error"); return; }
    app.painting.endStroke();
    app.continuous = null;
    app.mode = mode;
    if (mode === "grabcut") app.grabcut = { annotations: [], iterations: 0, brush: 3, result: null };
    if (mode === "sam") {
      app.sam = { prompts: [], result: null };
      getJSON("/api/sam/info").then(showSam).catch(fail);
    }
    updateBar();
    requestRender();
  }

  function showSam(info) {
    const s = $("sam");
    s.hidden = false;
    const dev = info.device ? (String(info.device).startsWith("cuda") ? "GPU" : "CPU") + ` (${info.device})` : "?";
    s.textContent = `SAM on ${dev}` + (info.request_ms != null ? `, last request ${info.request_ms} ms` : "");
    app.samInfo = info;
  }

  async function runMode() {
    if (app.mode === "grabcut") {
      const g = app.grabcut;
      g.iterations++;
      const body = { iterations: g.iterations, brush: g.brush, rect: null,
        fg: [], bg: [], probable_fg: [], probable_bg: [] };
      for (const a of g.annotations) {
        if (a.kind === "rect") body.rect = a.rect; else body[a.kind].push(a.points);
      }
      setStatus(`GrabCut: iteration ${g.iterations}…`);
      const ans = await postJSON(`/api/images/${app.index}/grabcut`, body);
      g.result = { labels: await unpackB64(ans.labels_png), foreground: ans.foreground };
      setStatus(`GrabCut: ${g.iterations} iteration(s); space runs another, f finishes`);
    } else if (app.mode === "sam") {
      const s = app.sam;
      const body = { points: [], labels: [], boxes: [] };
      for (const a of s.prompts) {
        if (a.kind === "box") body.boxes.push(a.box); else { body.points.push(a.point); body.labels.push(a.label); }
      }
      setStatus("SAM: predicting…");
      const t0 = performance.now();
      const ans = await postJSON(`/api/images/${app.index}/sam`, body);
      app.timing.sam = app.timing.sam || [];
      app.timing.sam.push({ page_ms: performance.now() - t0, server_ms: ans.request_ms, decode_ms: ans.decode_ms });
      s.result = { labels: await unpackB64(ans.labels_png), foreground: ans.foreground };
      showSam(ans);
      setStatus(`SAM: mask of score ${ans.score != null ? ans.score.toFixed(3) : "?"} in ${ans.request_ms} ms; f finishes`);
    }
    updateBar();
    requestRender();
  }

  async function finishMode() {
    const st = app.mode === "grabcut" ? app.grabcut : app.sam;
    if (!st) return;
    if (!st.result) await runMode();
    if (!st.result) return;
    app.painting.setLabels(st.result.labels);
    app.mode = "paint";
    markDirty();
    setStatus("segments from " + (st === app.grabcut ? "GrabCut" : "SAM") + ": click to paint");
    updateBar();
    requestRender();
  }

  async function automatic() {
    if (!app.state.sam) { setStatus("SAM automatic mode needs icas label --sam-url URL", "error"); return; }
    setStatus("SAM automatic masks…");
    const ans = await postJSON(`/api/images/${app.index}/sam/automatic`, {});
    app.painting.setLabels(await unpackB64(ans.labels_png));
    app.mode = "paint";
    showSam(ans);
    markDirty();
    setStatus(`SAM automatic: ${ans.segments} segments in ${ans.request_ms} ms`);
    updateBar();
    requestRender();
  }

  function modeUndo() {
    const list = app.mode === "grabcut" ? app.grabcut.annotations : app.sam.prompts;
    list.pop();
    requestRender();
  }

  function modeReset() {
    if (app.mode === "grabcut") { app.grabcut.annotations = []; app.grabcut.iterations = 0; app.grabcut.result = null; }
    else { app.sam.prompts = []; app.sam.result = null; }
    updateBar();
    requestRender();
  }

  async function templates() {
    if (!app.state.templates) { setStatus("template painting needs --templates DIR --segments DIR", "error"); return; }
    const ans = await postJSON(`/api/images/${app.index}/templates`, {});
    const values = await unpackB64(ans.png);
    if (app.painting.applyPaint(values, ans.colors.map(colourId))) markDirty();
    setStatus(`template painting: ${ans.placed} placement(s)`);
    requestRender();
  }

  // -- mouse ---------------------------------------------------------------------------
  let lastDown = null, drag = null, lastMove = null;

  function pixelAt(ev) {
    const r = view.getBoundingClientRect();
    const x = Math.floor((ev.clientX - r.left) * view.width / r.width);
    const y = Math.floor((ev.clientY - r.top) * view.height / r.height);
    return [Math.min(Math.max(x, 0), view.width - 1), Math.min(Math.max(y, 0), view.height - 1)];
  }

  // Client coordinates of the centre of image pixel (x, y): for tests and the benchmark.
  app.toClient = (x, y) => {
    const r = view.getBoundingClientRect();
    return [r.left + (x + 0.5) * r.width / view.width, r.top + (y + 0.5) * r.height / view.height];
  };

  function normRect(a, b) {
    return [Math.min(a[0], b[0]), Math.min(a[1], b[1]), Math.max(a[0], b[0]) + 1, Math.max(a[1], b[1]) + 1];
  }

  view.addEventListener("contextmenu", (ev) => ev.preventDefault());
  view.addEventListener("auxclick", (ev) => ev.preventDefault());

  view.addEventListener("mousedown", (ev) => {
    ev.preventDefault();
    const p = app.painting;
    if (!p || app.debug) return;
    const [x, y] = pixelAt(ev);
    const now = ev.timeStamp;
    const isDouble = lastDown && lastDown.button === ev.button && now - lastDown.t < DOUBLE_MS
      && Math.abs(lastDown.x - x) + Math.abs(lastDown.y - y) <= 6;
    lastDown = isDouble ? null : { button: ev.button, t: now, x, y };
    lastMove = [x, y];
    if (app.mode === "grabcut") return grabcutDown(ev, x, y);
    if (app.mode === "sam") return samDown(ev, x, y);
    const cutting = ev.button === 1 || (ev.button === 0 && ev.altKey);
    if (cutting) {
      if (isDouble) { app.cutPoints = []; drawMarks(); return; }
      app.cutPoints.push([x, y]);
      if (app.cutPoints.length >= 2) {
        const pts = app.cutPoints.slice(-2);
        if (p.cut(pts)) markDirty();
      }
      renderTimed(ev, "click");
      return;
    }
    if (ev.button === 0 || ev.button === 2) {
      const kind = ev.button === 0 ? "fill" : "unfill";
      if (isDouble) {
        if (app.continuous === kind) { p.endStroke(); app.continuous = null; }
        else { p.beginStroke(kind, app.colour); app.continuous = kind; p.strokeAt(x, y); }
        updateBar();
      } else if (app.continuous === kind) {
        p.strokeAt(x, y);
      } else {
        if (app.continuous) { p.endStroke(); app.continuous = null; updateBar(); }
        if (kind === "fill" ? p.fill(x, y, app.colour) : p.unfill(x, y)) markDirty();
      }
      if (p.stroke && p.stroke.parts.length) markDirty();
      renderTimed(ev, "click");
    }
  });

  view.addEventListener("mousemove", (ev) => {
    const p = app.painting;
    if (!p) return;
    const [x, y] = pixelAt(ev);
    if (drag) {
      drag.last = [x, y];
      if (drag.points) drag.points.push([x, y]);
      requestRender();
      return;
    }
    if (app.mode === "paint" && app.continuous && p.stroke) {
      const from = lastMove || [x, y];
      if (p.strokeLine(from[0], from[1], x, y)) { markDirty(); renderTimed(ev, "click"); }
    }
    lastMove = [x, y];
  });

  window.addEventListener("mouseup", (ev) => {
    if (!drag) return;
    const d = drag;
    drag = null;
    const [x, y] = app.painting ? pixelAt(ev) : d.last;
    d.last = [x, y];
    if (d.rect) {
      const r = normRect(d.start, d.last);
      if (r[2] - r[0] < 3 || r[3] - r[1] < 3) { requestRender(); return; }
      if (app.mode === "grabcut") {
        app.grabcut.annotations = app.grabcut.annotations.filter((a) => a.kind !== "rect");
        app.grabcut.annotations.push({ kind: "rect", rect: r });
      } else if (app.mode === "sam") {
        app.sam.prompts.push({ kind: "box", box: r });
      }
    } else if (d.points && app.mode === "grabcut") {
      app.grabcut.annotations.push({ kind: d.kind, points: d.points });
    }
    requestRender();
  });

  function grabcutDown(ev, x, y) {
    if (ev.button === 1 || (ev.button === 0 && ev.shiftKey)) { drag = { rect: true, start: [x, y], last: [x, y] }; return; }
    const ctrl = ev.ctrlKey || ev.metaKey;
    const kind = ev.button === 0 ? (ctrl ? "probable_fg" : "fg") : ev.button === 2 ? (ctrl ? "probable_bg" : "bg") : null;
    if (kind) drag = { kind, points: [[x, y]], start: [x, y], last: [x, y] };
  }

  function samDown(ev, x, y) {
    if (ev.button === 1 || (ev.button === 0 && ev.shiftKey)) { drag = { rect: true, start: [x, y], last: [x, y] }; return; }
    if (ev.button === 0 || ev.button === 2) {
      app.sam.prompts.push({ kind: "point", point: [x, y], label: ev.button === 0 ? 1 : 0 });
      requestRender();
    }
  }

  // -- keys ----------------------------------------------------------------------------
  let keyActions = {};

  function bindKeys(keymap, descriptions) {
    keyActions = {};
    const bound = new Set(Object.keys(keymap));
    const extra = Object.entries(MODE_KEYS).filter(([, action]) => !bound.has(action));
    for (const [k, action] of extra) keyActions[k] = action;
    for (const [action, keys] of Object.entries(keymap)) for (const k of keys) keyActions[k] = action;
    const dl = $("keys");
    dl.innerHTML = "";
    const show = (k) => (k === " " ? "space" : k.replace(/^Arrow/, "").replace("Escape", "Esc"));
    const rows = Object.entries(keymap).map(([action, keys]) => [keys.map(show).join(" "),
      (descriptions && descriptions[action]) || action]);
    for (const [k, action] of extra) rows.push([show(k), action]);
    rows.push(["1-9", "pick a colour"]);
    for (const [k, d] of rows) {
      const dt = document.createElement("dt"); dt.textContent = k;
      const dd = document.createElement("dd"); dd.textContent = d;
      dl.append(dt, dd);
    }
  }

  let queue = Promise.resolve();
  // Key actions run one after another: a space pressed while saving waits for the save.
  function enqueue(fn) {
    app.pending++;
    queue = queue.then(fn).catch(fail).finally(() => { app.pending--; });
    return queue;
  }

  window.addEventListener("keydown", (ev) => {
    if (ev.target instanceof HTMLInputElement || app.stopped || !app.ready) return;
    if (ev.ctrlKey || ev.metaKey || ev.altKey) return;
    const key = ev.key.length === 1 ? ev.key.toLowerCase() : ev.key;
    if (/^[1-9]$/.test(key)) { pick(parseInt(key, 10)); return; }
    const action = keyActions[key];
    if (!action) return;
    ev.preventDefault();
    enqueue(() => act(action, ev));
  });

  async function act(action, ev) {
    const p = app.painting;
    const inMode = app.mode === "grabcut" || app.mode === "sam";
    switch (action) {
      case "quit": return quit();
      case "next": return next(ev);
      case "previous": return previous(ev);
      case "save_next": return inMode ? runMode() : save(ev);
      case "undo":
        if (inMode) return modeUndo();
        if (p && p.undo()) { app.continuous = null; markDirty(); renderTimed(ev, "click"); }
        updateBar();
        return;
      case "reset":
        if (inMode) return modeReset();
        if (p && p.reset()) { markDirty(); render(); }
        return;
      case "debug": app.debug = !app.debug; updateBar(); return render();
      case "template": return templates();
      case "finish": return inMode ? finishMode() : undefined;
      case "grabcut": return enterMode("grabcut");
      case "sam": return enterMode("sam");
      case "automatic": return automatic();
      case "help": $("help").hidden = !$("help").hidden; return fitCanvas();
      case "escape":
        app.cutPoints = [];
        if (inMode) { app.mode = "paint"; updateBar(); }
        return requestRender();
      default: return undefined;
    }
  }

  // -- start ---------------------------------------------------------------------------
  $("help-button").addEventListener("click", () => { $("help").hidden = !$("help").hidden; fitCanvas(); });
  $("opacity").addEventListener("input", () => requestRender());
  $("custom").addEventListener("change", (ev) => {
    const v = ev.target.value;
    pick(colourId([1, 3, 5].map((o) => parseInt(v.slice(o, o + 2), 16))));
  });

  // A closed tab loses at most the image being painted; the browser asks first.
  window.addEventListener("beforeunload", (ev) => {
    if (app.dirty && !app.stopped) { ev.preventDefault(); ev.returnValue = ""; }
  });

  async function start() {
    PRESETS.forEach((c) => colourId(c));
    app.colour = 1;
    buildSwatches();
    await refreshState();
    bindKeys(app.state.keymap, app.state.actions);
    if (!localStorage.getItem("icas-help-seen")) { $("help").hidden = false; localStorage.setItem("icas-help-seen", "1"); }
    try {
      await go(app.state.current);
    } finally {
      app.ready = true;  // an image that cannot be opened shows its error; n and p go on
    }
  }

  enqueue(start);
})();
