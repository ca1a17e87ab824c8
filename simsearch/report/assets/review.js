// The labelling page: one pair at a time, labels from the keyboard, each saved the moment it is given.
"use strict";
const app = document.getElementById("app");
const TOKEN = new URLSearchParams(location.search).get("token") || "";
const HEADERS = { "Content-Type": "application/json", ...(TOKEN ? { "X-Review-Token": TOKEN } : {}) };
const NAMES = { match: "match", no_match: "not a match", skip: "skipped" };
let pairs = [], labels = {}, index = 0, threshold = null, calibration = null;
let labeller = localStorage.getItem("simsearch-labeller") || "labeller-" + Math.random().toString(36).slice(2, 6);

async function api(path, body) {
  const res = await fetch(path + (TOKEN ? `?token=${encodeURIComponent(TOKEN)}` : ""), body === undefined ? { headers: HEADERS } : { method: "POST", headers: HEADERS, body: JSON.stringify(body) });
  const data = await res.json().catch(() => ({ error: `HTTP ${res.status}` }));
  if (!res.ok) throw new Error(data.error || `HTTP ${res.status}`);
  return data;
}

const status = el("div", { id: "status", class: "note", "aria-live": "polite" });
const errorBox = el("div", { id: "error", class: "error", "aria-live": "assertive" });
const pairBox = el("section", { id: "pair" });
const listBox = el("section", { id: "pairs-list" });
const calBox = el("div", { id: "calibration" });

function labelledCount() { return Object.values(labels).filter((e) => e.label !== "skip").length; }

function summaryCards() {
  const box = document.getElementById("summary");
  box.replaceChildren(
    el("div", {}, el("b", { id: "progress" }, `${labelledCount()} / ${pairs.length}`), "pairs labelled"),
    el("div", {}, el("b", { id: "threshold" }, threshold === null ? "–" : fmt(threshold)), "threshold in use"),
    el("div", {}, el("b", {}, el("input", { type: "text", id: "labeller", value: labeller, size: 14, "aria-label": "your name",
      onchange: (e) => { labeller = e.target.value.trim() || labeller; localStorage.setItem("simsearch-labeller", labeller); } })), "labelling as"));
}

function labelText(entry) {
  if (!entry) return el("span", { class: "muted" }, "not labelled");
  const others = (entry.history || []).filter((h) => h.by !== entry.by || h.label !== entry.label);
  const seen = new Map();
  for (const h of others) seen.set(h.by, h.label);
  const also = [...seen].filter(([by]) => by !== entry.by).map(([by, l]) => `${by}: ${NAMES[l]}`);
  return el("span", {}, el("span", { class: `label-${entry.label}` }, NAMES[entry.label]), el("span", { class: "muted" }, ` by ${entry.by}`),
    also.length ? el("span", { class: "muted" }, ` (also ${also.join(", ")})`) : null);
}

function drawPair() {
  if (!pairs.length) { pairBox.replaceChildren(el("p", {}, "No pairs to review.")); return; }
  const p = pairs[index], entry = labels[String(index)];
  const ta = p.title_a ?? String(p.id_a), tb = p.title_b ?? String(p.id_b);
  pairBox.replaceChildren(
    el("h2", {}, `Pair ${index + 1} of ${pairs.length}`, el("span", { class: "muted" }, ` · score ${fmt(p.score)} · stratum ${p.stratum ?? "–"}`)),
    el("div", { class: "side" },
      el("div", { class: "record", id: "record-a" }, el("span", { class: "id" }, `id ${p.id_a}`), el("span", { html: markDiff(ta, tb) })),
      el("div", { class: "record", id: "record-b" }, el("span", { class: "id" }, `id ${p.id_b}`), el("span", { html: markDiff(tb, ta) }))),
    el("p", { id: "current-label" }, labelText(entry)),
    el("div", { class: "toolbar keys" },
      el("button", { class: "primary", onclick: () => give("match") }, el("kbd", {}, "m"), " match"),
      el("button", { onclick: () => give("no_match") }, el("kbd", {}, "n"), " not a match"),
      el("button", { onclick: () => give("skip") }, el("kbd", {}, "s"), " skip"),
      el("button", { onclick: () => move(-1) }, el("kbd", {}, "←"), " previous"),
      el("button", { onclick: () => move(1) }, el("kbd", {}, "→"), " next")),
    el("p", { class: "note" }, "Words one title has and the other lacks are highlighted. Each label is saved on the server as soon as you give it."));
}

function drawList() {
  const t = el("table", { id: "pair-table" }, el("thead", {}, el("tr", {}, el("th", {}, "#"), el("th", {}, "record A"), el("th", {}, "record B"), el("th", {}, "score"), el("th", {}, "label"))));
  const tb = el("tbody");
  pairs.forEach((p, i) => tb.append(el("tr", { class: i === index ? "row current" : "row", "data-pair": i, onclick: () => { index = i; draw(); } },
    el("td", { class: "num" }, i + 1), el("td", {}, p.title_a ?? p.id_a), el("td", {}, p.title_b ?? p.id_b), el("td", { class: "num" }, fmt(p.score)),
    el("td", { class: "label-cell" }, labelText(labels[String(i)])))));
  t.append(tb);
  listBox.replaceChildren(el("h2", {}, "All pairs"), t);
}

function drawCalibration() {
  if (!calibration) { calBox.replaceChildren(el("span", { class: "muted" }, "Not recalibrated yet.")); return; }
  const c = calibration, iv = (x) => (x ? ` (${Math.round(100 * (c.confidence || 0.95))}% interval ${fmt(x[0])}–${fmt(x[1])})` : "");
  calBox.replaceChildren(
    el("p", {}, "New threshold ", el("b", { id: "new-threshold" }, fmt(c.threshold)),
      c.previous_threshold !== null && c.previous_threshold !== undefined ? ` (was ${fmt(c.previous_threshold)})` : ""),
    el("p", {}, "precision ", el("b", { id: "cal-precision" }, fmt(c.precision)), iv(c.precision_interval), " · recall ", el("b", { id: "cal-recall" }, fmt(c.recall)), iv(c.recall_interval)),
    el("p", { class: "note" }, `on ${c.n_labelled} labelled pairs (${c.n_positive} matches), ${c.method === "max_f1" ? "maximum F1" : "target precision " + c.target_precision}; saved into the state.`));
}

function draw() { summaryCards(); drawPair(); drawList(); }

function move(step) { index = Math.min(pairs.length - 1, Math.max(0, index + step)); draw(); }

async function give(label) {
  const at = index;
  errorBox.textContent = "";
  try {
    const entry = await api("/api/label", { pair: at, label, labeller });
    labels[String(at)] = entry;
    status.textContent = `saved: pair ${at + 1} ${NAMES[label]} (${labelledCount()} labelled)`;
    status.dataset.saved = String(Object.keys(labels).length);
    if (at === index && index < pairs.length - 1) index++;
    draw();
  } catch (err) { errorBox.textContent = `not saved: ${err.message}`; }
}

async function recalibrate() {
  errorBox.textContent = "";
  calBox.replaceChildren(el("span", { class: "muted" }, "recalibrating…"));
  try {
    calibration = await api("/api/recalibrate", {});
    threshold = calibration.threshold;
    drawCalibration();
    summaryCards();
  } catch (err) { errorBox.textContent = err.message; drawCalibration(); }
}

async function refresh(first) {
  try {
    const s = await api("/api/state");
    pairs = s.pairs; threshold = s.threshold;
    // Labels are never taken back: a snapshot that left before our last save returns must not hide it.
    const merged = { ...labels };
    for (const [k, e] of Object.entries(s.labels)) if (!merged[k] || e.at >= merged[k].at) merged[k] = e;
    labels = merged;
    if (first) {
      calibration = s.calibration;
      const open = pairs.findIndex((_, i) => !labels[String(i)]);  // resume at the first pair without a label
      index = open >= 0 ? open : Math.max(0, pairs.length - 1);
      drawCalibration();
    }
    draw();
  } catch (err) { errorBox.textContent = err.message; }
}

document.addEventListener("keydown", (e) => {
  if (e.target instanceof HTMLInputElement || e.ctrlKey || e.metaKey || e.altKey) return;
  const k = e.key;
  if (k === "m") give("match");
  else if (k === "n") give("no_match");
  else if (k === "s") give("skip");
  else if (k === "ArrowRight" || k === "ArrowDown") move(1);
  else if (k === "ArrowLeft" || k === "ArrowUp") move(-1);
  else return;
  e.preventDefault();
});

const exportLink = el("a", { id: "export", href: "/api/export.csv" + (TOKEN ? `?token=${encodeURIComponent(TOKEN)}` : ""), download: "labels.csv" }, "Export labels (CSV for simsearch review import)");
app.replaceChildren(errorBox, pairBox,
  el("section", { id: "recal" }, el("h2", {}, "Threshold"), el("div", { class: "toolbar" }, el("button", { id: "recalibrate", class: "primary", onclick: recalibrate }, "Recalibrate"), exportLink), calBox, status),
  listBox);
refresh(true).then(() => { document.body.dataset.ready = "1"; });
setInterval(() => refresh(false), 4000);  // labels another labeller gives appear here too
