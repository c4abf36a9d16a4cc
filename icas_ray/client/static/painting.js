// The painting state of one image, in the browser: the semantics of
// icas_ray.segment.paint.Painter (fill, unfill, cut, undo, reset, strokes), on typed arrays.
//
// labels: Int32Array (H*W), segments from 1, 0 = edge/cut.
// paint:  Uint16Array (H*W), 0 = unpainted, k = palette colour k (1-based, shared palette).
// Every action that changes something is one undo step; a step keeps only the old values of
// the pixels it touched (parts are restored newest first, so a pixel touched twice ends
// with its oldest value).
"use strict";

class Painting {
  constructor(width, height, labels) {
    this.w = width;
    this.h = height;
    this.n = width * height;
    this.labels = labels;
    this.orig = labels.slice();
    this.paint = new Uint16Array(this.n);
    this.history = [];
    this.mark = new Uint32Array(this.n);
    this.stamp = 0;
    this.stack = new Int32Array(this.n);
    this.region = new Int32Array(this.n);
    this.maxLabel = 0;
    for (let i = 0; i < this.n; i++) if (labels[i] > this.maxLabel) this.maxLabel = labels[i];
    this.stroke = null;       // the open step of a continuous stroke
    this.version = 0;         // bumped on every change (labels or paint)
    this.labelsVersion = 0;   // bumped when labels change (boundaries to recompute)
  }

  inside(x, y) { return x >= 0 && y >= 0 && x < this.w && y < this.h; }

  // 4-connected pixels from `start` whose value in `arr` equals arr[start]: Int32Array copy.
  flood(arr, start) {
    const w = this.w, n = this.n, mark = this.mark, stack = this.stack, region = this.region;
    const v = arr[start];
    if (this.stamp === 0xffffffff) { mark.fill(0); this.stamp = 0; }
    const s = ++this.stamp;
    let sp = 0, cnt = 0;
    stack[sp++] = start;
    mark[start] = s;
    while (sp > 0) {
      const i = stack[--sp];
      region[cnt++] = i;
      const x = i % w;
      let j;
      if (x > 0) { j = i - 1; if (mark[j] !== s && arr[j] === v) { mark[j] = s; stack[sp++] = j; } }
      if (x < w - 1) { j = i + 1; if (mark[j] !== s && arr[j] === v) { mark[j] = s; stack[sp++] = j; } }
      if (i >= w) { j = i - w; if (mark[j] !== s && arr[j] === v) { mark[j] = s; stack[sp++] = j; } }
      if (i + w < n) { j = i + w; if (mark[j] !== s && arr[j] === v) { mark[j] = s; stack[sp++] = j; } }
    }
    return region.slice(0, cnt);
  }

  // -- steps ---------------------------------------------------------------------------
  _part(idx, withLabels) {
    const paint = new Uint16Array(idx.length);
    const p = this.paint;
    for (let t = 0; t < idx.length; t++) paint[t] = p[idx[t]];
    let labels = null;
    if (withLabels) {
      labels = new Int32Array(idx.length);
      for (let t = 0; t < idx.length; t++) labels[t] = this.labels[idx[t]];
    }
    return { idx, paint, labels };
  }

  _commit(parts, labelsChanged) {
    if (!parts.length) return false;
    this.history.push({ parts });
    this.version++;
    if (labelsChanged) this.labelsVersion++;
    return true;
  }

  // The paint region a fill at pixel i changes, or null (an edge, or nothing would change).
  _fillRegion(i, k) {
    if (this.paint[i]) {
      if (this.paint[i] === k) return null;  // repainting a patch with its own colour
      return this.flood(this.paint, i);
    }
    if (this.labels[i] === 0) return null;   // an edge or a cut: no segment to fill
    const region = this.flood(this.labels, i);
    for (let t = 0; t < region.length; t++) if (this.paint[region[t]] !== k) return region;
    return null;
  }

  _setPaint(region, k) {
    const p = this.paint;
    for (let t = 0; t < region.length; t++) p[region[t]] = k;
  }

  fill(x, y, k) {
    if (!this.inside(x, y)) return false;
    const region = this._fillRegion(y * this.w + x, k);
    if (!region) return false;
    const part = this._part(region, false);
    this._setPaint(region, k);
    return this._commit([part], false);
  }

  unfill(x, y) {
    if (!this.inside(x, y)) return false;
    const i = y * this.w + x;
    if (!this.paint[i]) return false;
    const region = this.flood(this.paint, i);
    const part = this._part(region, false);
    this._setPaint(region, 0);
    return this._commit([part], false);
  }

  // Continuous modes: every point of the path fills (or unfills) under it; one undo step.
  beginStroke(kind, k) { this.endStroke(); this.stroke = { kind, k, parts: [] }; }

  strokeAt(x, y) {
    const s = this.stroke;
    if (!s || !this.inside(x, y)) return false;
    const i = y * this.w + x;
    let region;
    if (s.kind === "fill") region = this._fillRegion(i, s.k);
    else region = this.paint[i] ? this.flood(this.paint, i) : null;
    if (!region) return false;
    s.parts.push(this._part(region, false));
    this._setPaint(region, s.kind === "fill" ? s.k : 0);
    this.version++;
    return true;
  }

  // Points of a straight mouse path between two samples (so a fast move skips no segment).
  strokeLine(x0, y0, x1, y1) {
    let changed = false;
    for (const [x, y] of linePoints(x0, y0, x1, y1)) changed = this.strokeAt(x, y) || changed;
    return changed;
  }

  endStroke() {
    const s = this.stroke;
    this.stroke = null;
    if (s && s.parts.length) { this.history.push({ parts: s.parts }); return true; }
    return false;
  }

  // Cut one-pixel 8-connected lines between consecutive points: the pixels become edge
  // (label 0) and unpainted; each cut segment is re-split into its 4-connected pieces.
  cut(points) {
    if (points.length < 2) return false;
    const line = [];
    const seen = new Set();
    for (let q = 1; q < points.length; q++) {
      for (const [x, y] of linePoints(points[q - 1][0], points[q - 1][1], points[q][0], points[q][1])) {
        if (!this.inside(x, y)) continue;
        const i = y * this.w + x;
        if (!seen.has(i)) { seen.add(i); line.push(i); }
      }
    }
    const idx = Int32Array.from(line);
    const parts = [this._part(idx, true)];
    let changed = false;
    for (const i of idx) {
      if (this.labels[i] !== 0 || this.paint[i] !== 0) changed = true;
      this.labels[i] = 0;
      this.paint[i] = 0;
    }
    if (!changed) return false;
    // Re-split: the first piece of each cut label keeps it, the others get new labels.
    const w = this.w, done = new Set(), kept = new Set();
    for (const i of idx) {
      const x = i % w;
      for (const j of [x > 0 ? i - 1 : -1, x < w - 1 ? i + 1 : -1, i - w, i + w]) {
        if (j < 0 || j >= this.n || this.labels[j] === 0 || done.has(j)) continue;
        const l = this.labels[j];
        const piece = this.flood(this.labels, j);
        for (let t = 0; t < piece.length; t++) done.add(piece[t]);
        if (!kept.has(l)) { kept.add(l); continue; }
        parts.push(this._part(piece, true));
        const nl = ++this.maxLabel;
        for (let t = 0; t < piece.length; t++) this.labels[piece[t]] = nl;
      }
    }
    return this._commit(parts, true);
  }

  // Paint given pixels (template painting, proposals): index map values k -> palette ids.
  applyPaint(values, ids) {
    const list = [];
    for (let i = 0; i < this.n; i++) {
      const v = values[i];
      if (v > 0 && this.paint[i] !== ids[v - 1]) list.push(i);
    }
    if (!list.length) return false;
    const idx = Int32Array.from(list);
    const part = this._part(idx, false);
    for (const i of idx) this.paint[i] = ids[values[i] - 1];
    return this._commit([part], false);
  }

  // Saved masks shown when a done image is reopened: the start state, not an undo step.
  loadPaint(values, ids) {
    for (let i = 0; i < this.n; i++) if (values[i] > 0) this.paint[i] = ids[values[i] - 1];
    this.version++;
  }

  // New segments from GrabCut or SAM: replaces the label map (and what reset returns to).
  setLabels(labels) {
    this.endStroke();
    const step = { full: { labels: this.labels, orig: this.orig, maxLabel: this.maxLabel }, parts: [] };
    this.labels = labels;
    this.orig = labels.slice();
    this.maxLabel = 0;
    for (let i = 0; i < this.n; i++) if (labels[i] > this.maxLabel) this.maxLabel = labels[i];
    this.history.push(step);
    this.version++;
    this.labelsVersion++;
    return true;
  }

  reset() {
    this.endStroke();
    const list = [];
    for (let i = 0; i < this.n; i++) {
      if (this.paint[i] !== 0 || this.labels[i] !== this.orig[i]) list.push(i);
    }
    if (!list.length) return false;
    const idx = Int32Array.from(list);
    const part = this._part(idx, true);
    for (const i of idx) { this.paint[i] = 0; this.labels[i] = this.orig[i]; }
    return this._commit([part], true);
  }

  undo() {
    this.endStroke();
    const step = this.history.pop();
    if (!step) return false;
    for (let q = step.parts.length - 1; q >= 0; q--) {
      const { idx, paint, labels } = step.parts[q];
      for (let t = 0; t < idx.length; t++) this.paint[idx[t]] = paint[t];
      if (labels) for (let t = 0; t < idx.length; t++) this.labels[idx[t]] = labels[t];
    }
    if (step.full) {
      this.labels = step.full.labels;
      this.orig = step.full.orig;
      this.maxLabel = step.full.maxLabel;
    }
    this.version++;
    this.labelsVersion++;
    return true;
  }

  get undoDepth() { return this.history.length + (this.stroke && this.stroke.parts.length ? 1 : 0); }

  painted() {
    let c = 0;
    for (let i = 0; i < this.n; i++) if (this.paint[i]) c++;
    return c;
  }
}

// The pixels of OpenCV's 8-connected line from (x0, y0) to (x1, y1) (Bresenham), ends included.
function linePoints(x0, y0, x1, y1) {
  const out = [];
  const dx = Math.abs(x1 - x0), dy = -Math.abs(y1 - y0);
  const sx = x0 < x1 ? 1 : -1, sy = y0 < y1 ? 1 : -1;
  let err = dx + dy, x = x0, y = y0;
  for (;;) {
    out.push([x, y]);
    if (x === x1 && y === y1) break;
    const e2 = 2 * err;
    if (e2 >= dy) { err += dy; x += sx; }
    if (e2 <= dx) { err += dx; y += sy; }
  }
  return out;
}

window.Painting = Painting;
window.linePoints = linePoints;
