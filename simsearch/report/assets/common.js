// Helpers shared by the report and the review page: elements, numbers, charts, word differences.
"use strict";
const DATA = JSON.parse(document.getElementById("data").textContent);

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") node.className = v;
    else if (k === "html") node.innerHTML = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

function esc(text) {
  return String(text).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
}

// A score as the column says it is: a probability (percent) or a raw score.
function fmtScore(v, probability) {
  if (v === null || v === undefined) return "–";
  return probability ? (100 * v).toFixed(1) + "%" : Number(v).toFixed(3);
}
function fmt(v, digits = 3) { return v === null || v === undefined ? "–" : Number(v).toFixed(digits); }

const SVGNS = "http://www.w3.org/2000/svg";
function svg(tag, attrs, ...children) {
  const node = document.createElementNS(SVGNS, tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return node;
}

const W = 420, H = 200, PAD = { l: 30, r: 12, t: 18, b: 30 };

// Histogram {edges, counts}, bars above the threshold in the accent colour, the threshold as a dashed line.
function histogramSvg(hist, threshold, xLabel, logY) {
  const root = svg("svg", { viewBox: `0 0 ${W} ${H}`, width: "100%", role: "img" });
  const n = hist.counts.length, lo = hist.edges[0], hi = hist.edges[n];
  const ys = hist.counts.map((c) => (logY ? Math.log10(1 + c) : c));
  const top = Math.max(1e-9, ...ys);
  const x = (v) => PAD.l + ((v - lo) / (hi - lo || 1)) * (W - PAD.l - PAD.r);
  const y = (v) => H - PAD.b - (v / top) * (H - PAD.t - PAD.b);
  for (let i = 0; i < n; i++) {
    const x0 = x(hist.edges[i]), x1 = x(hist.edges[i + 1]);
    const above = threshold !== null && hist.edges[i] >= threshold - 1e-9;
    const bar = svg("rect", { class: above ? "bar above" : "bar", x: x0 + 0.5, y: y(ys[i]), width: Math.max(0.5, x1 - x0 - 1), height: H - PAD.b - y(ys[i]) });
    bar.append(svg("title", {}, `${fmt(hist.edges[i])}–${fmt(hist.edges[i + 1])}: ${hist.counts[i]}`));
    root.append(bar);
  }
  root.append(svg("line", { class: "axis", x1: PAD.l, x2: W - PAD.r, y1: H - PAD.b, y2: H - PAD.b }));
  for (const v of [lo, (lo + hi) / 2, hi]) root.append(svg("text", { x: x(v), y: H - PAD.b + 14, "text-anchor": "middle" }, fmt(v, 2)));
  root.append(svg("text", { x: (W + PAD.l) / 2, y: H - 3, "text-anchor": "middle" }, xLabel));
  if (threshold !== null && threshold !== undefined) {
    const tx = x(Math.min(hi, Math.max(lo, threshold)));
    root.append(svg("line", { class: "thr", x1: tx, x2: tx, y1: PAD.t, y2: H - PAD.b }));
    const right = tx < W / 2;  // the label on the side with room
    root.append(svg("text", { x: right ? tx + 4 : tx - 4, y: PAD.t - 5, "text-anchor": right ? "start" : "end" }, `threshold ${fmt(threshold)}`));
  }
  return root;
}

// Bars of group sizes: one bar per size that occurs, counts on a log scale.
function sizesSvg(sizes) {
  const root = svg("svg", { viewBox: `0 0 ${W} ${H}`, width: "100%", role: "img" });
  const n = sizes.size.length;
  const top = Math.log10(1 + Math.max(1, ...sizes.count));
  const bw = (W - PAD.l - PAD.r) / Math.max(n, 1);
  sizes.size.forEach((s, i) => {
    const h = (Math.log10(1 + sizes.count[i]) / top) * (H - PAD.t - PAD.b);
    const bar = svg("rect", { class: "bar above", x: PAD.l + i * bw + 0.5, y: H - PAD.b - h, width: Math.max(0.5, bw - 1), height: h });
    bar.append(svg("title", {}, `${sizes.count[i]} groups of ${s}`));
    root.append(bar);
    const step = Math.ceil(n / 8);
    if (n <= 16 || i === n - 1 || (i % step === 0 && n - 1 - i >= step / 2))
      root.append(svg("text", { x: PAD.l + (i + 0.5) * bw, y: H - PAD.b + 14, "text-anchor": "middle" }, s));
  });
  root.append(svg("line", { class: "axis", x1: PAD.l, x2: W - PAD.r, y1: H - PAD.b, y2: H - PAD.b }));
  root.append(svg("text", { x: (W + PAD.l) / 2, y: H - 3, "text-anchor": "middle" }, "group size (items)"));
  return root;
}

// Calibration curve: labelled share of duplicates per score bin (with its interval) against the bin's mean score.
function calibrationSvg(cal, probability) {
  const root = svg("svg", { viewBox: `0 0 ${W} ${H}`, width: "100%", role: "img" });
  const lo = probability ? 0 : Math.min(...cal.score), hi = probability ? 1 : Math.max(...cal.score);
  const span = hi - lo || 1;
  const x = (v) => PAD.l + ((v - lo) / span) * (W - PAD.l - PAD.r);
  const y = (v) => H - PAD.b - v * (H - PAD.t - PAD.b);
  if (probability) root.append(svg("line", { class: "ideal", x1: x(0), y1: y(0), x2: x(1), y2: y(1) }));
  cal.score.forEach((s, i) => root.append(svg("line", { class: "ci", x1: x(s), x2: x(s), y1: y(cal.lo[i]), y2: y(cal.hi[i]) })));
  root.append(svg("polyline", { class: "curve", points: cal.score.map((s, i) => `${x(s)},${y(cal.share[i])}`).join(" ") }));
  cal.score.forEach((s, i) => {
    const dot = svg("circle", { cx: x(s), cy: y(cal.share[i]), r: 3.5, fill: "currentColor" });
    dot.append(svg("title", {}, `score ${fmt(s)}: ${fmt(cal.share[i], 2)} duplicates of ${cal.n[i]} labelled [${fmt(cal.lo[i], 2)}, ${fmt(cal.hi[i], 2)}]`));
    root.append(dot);
  });
  root.append(svg("line", { class: "axis", x1: PAD.l, x2: W - PAD.r, y1: H - PAD.b, y2: H - PAD.b }));
  for (const v of [lo, (lo + hi) / 2, hi]) root.append(svg("text", { x: x(v), y: H - PAD.b + 14, "text-anchor": "middle" }, fmt(v, 2)));
  for (const v of [0, 0.5, 1]) root.append(svg("text", { x: 6, y: y(v) + 4 }, v.toFixed(1)));
  root.append(svg("text", { x: (W + PAD.l) / 2, y: H - 3, "text-anchor": "middle" }, probability ? "predicted probability" : "pair score"));
  return root;
}

// Words of `text` that `other` lacks are marked (case and punctuation ignored).
function wordKey(w) { return w.toLowerCase().replace(/[^\p{L}\p{N}]+/gu, ""); }
function markDiff(text, other) {
  const theirs = new Set(String(other || "").split(/\s+/).map(wordKey).filter(Boolean));
  return String(text || "").split(/(\s+)/).map((w) => {
    const k = wordKey(w);
    return k && !theirs.has(k) ? `<mark>${esc(w)}</mark>` : esc(w);
  }).join("");
}

// A paginated, sortable, searchable table over row indices.
class Pager {
  constructor(pageSize) { this.pageSize = pageSize; this.page = 0; this.rows = []; }
  set(rows) { this.rows = rows; this.page = Math.min(this.page, Math.max(0, this.pages() - 1)); }
  pages() { return Math.max(1, Math.ceil(this.rows.length / this.pageSize)); }
  slice() { return this.rows.slice(this.page * this.pageSize, (this.page + 1) * this.pageSize); }
  controls(onChange) {
    const info = el("span", { class: "muted" }, `page ${this.page + 1} of ${this.pages()} · ${this.rows.length} rows`);
    const prev = el("button", { onclick: () => { if (this.page > 0) { this.page--; onChange(); } }, disabled: this.page === 0 }, "‹ previous");
    const next = el("button", { onclick: () => { if (this.page < this.pages() - 1) { this.page++; onChange(); } }, disabled: this.page >= this.pages() - 1 }, "next ›");
    return el("div", { class: "pager" }, prev, next, info);
  }
}

function debounce(fn, ms) { let t = null; return (...a) => { clearTimeout(t); t = setTimeout(() => fn(...a), ms); }; }
