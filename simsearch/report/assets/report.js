// The report page: summary, charts, then the groups (dedup) or the listings (match), searchable and paginated.
"use strict";
const PROB = DATA.score.probability;
const SCORE_NAME = PROB ? "probability" : "score";
const app = document.getElementById("app");

function card(label, value) { return el("div", {}, el("b", {}, value), label); }

function summary() {
  const s = DATA.summary, box = document.getElementById("summary");
  const thr = DATA.score.threshold;
  const kind = PROB ? `${DATA.score.column} (a probability)` : `${DATA.score.column} (a raw score, not a probability)`;
  if (DATA.kind === "dedup") {
    box.append(card("items", s.items.toLocaleString()), card("pairs at or above the threshold", s.pairs.toLocaleString()),
      card("groups", s.groups.toLocaleString()), card("items in groups", s.grouped_items.toLocaleString()),
      card("largest group", s.largest_group), card("threshold", thr === null ? "–" : fmtScore(thr, PROB)));
    if (s.calibration) {
      const c = s.calibration, ci = (iv) => (iv ? ` [${fmt(iv[0], 2)}, ${fmt(iv[1], 2)}]` : "");
      box.append(card(`calibrated on ${c.n_labelled} labels`, `P ${fmt(c.precision, 2)}${ci(c.precision_interval)} · R ${fmt(c.recall, 2)}${ci(c.recall_interval)}`));
    }
  } else {
    box.append(card("listings", s.listings.toLocaleString()), card("matched", s.matched.toLocaleString()),
      card("catalog products", s.products.toLocaleString()), card("candidates", s.candidates.toLocaleString()),
      card("threshold", thr === null ? "–" : fmtScore(thr, PROB)));
  }
  document.getElementById("generated").textContent = `score column: ${kind} · written ${DATA.generated} · everything in this one file, nothing fetched`;
}

function charts() {
  const sec = el("section", { id: "charts" }, el("h2", {}, "Scores and sizes"));
  const grid = el("div", { class: "charts" });
  grid.append(el("figure", { id: "score-histogram" }, histogramSvg(DATA.hist, DATA.score.threshold, SCORE_NAME, true),
    el("figcaption", {}, `Distribution of ${DATA.hist_of} (counts on a log scale, the highest bar ${Math.max(...DATA.hist.counts).toLocaleString()}); the dashed line is the threshold.`)));
  if (DATA.calibration) {
    grid.append(el("figure", { id: "calibration" }, calibrationSvg(DATA.calibration, PROB),
      el("figcaption", {}, `Calibration: share of labelled pairs that are duplicates per score bin (bars: 95% Wilson intervals)${PROB ? "; the dashed line is perfect calibration" : ""}.`)));
  } else if (DATA.kind === "dedup") {
    grid.append(el("figure", { id: "calibration" }, el("p", { class: "muted" }, "No labels yet: label pairs with `simsearch review serve` (or pass labels) to see the calibration curve.")));
  }
  if (DATA.kind === "dedup") {
    grid.append(el("figure", { id: "group-sizes" }, sizesSvg(DATA.sizes), el("figcaption", {}, `Groups by size (counts on a log scale, the highest bar ${Math.max(...DATA.sizes.count).toLocaleString()}): a long tail of giant groups is the sign of chained weak links.`)));
  }
  sec.append(grid);
  return sec;
}

function relationTag(v, agree, conflict) {
  if (v === 1) return el("span", { class: "tag agree" }, agree);
  if (v === -1) return el("span", { class: "tag conflict" }, conflict);
  return el("span", { class: "tag none" }, "–");
}

// ---------------------------------------------------------------- dedup
function dedupView() {
  const I = DATA.items, G = DATA.groups, L = DATA.links;
  const nGroups = G.id.length;
  const lower = (I.title || I.id).map((t) => String(t).toLowerCase());
  const idLower = I.id.map((t) => String(t).toLowerCase());
  const groupOf = new Int32Array(I.id.length).fill(-1);
  for (let g = 0; g < nGroups; g++) for (let j = G.start[g]; j < G.start[g + 1]; j++) groupOf[G.members[j]] = g;
  const linksOf = Array.from({ length: nGroups }, () => []);
  for (let i = 0; i < L.a.length; i++) {
    const ga = groupOf[L.a[i]], gb = groupOf[L.b[i]];
    if (ga >= 0) linksOf[ga].push(i);
    if (gb >= 0 && gb !== ga) linksOf[gb].push(i);
  }
  const title = (r) => (I.title ? I.title[r] : "");
  const sec = el("section", { id: "groups" }, el("h2", {}, "Groups, largest first"));
  const search = el("input", { type: "search", id: "search", placeholder: "search titles or ids…", "aria-label": "search" });
  const sort = el("select", { id: "sort" },
    el("option", { value: "size" }, "largest first"), el("option", { value: "small" }, "smallest first"),
    el("option", { value: "weak" }, "weakest link first"), el("option", { value: "id" }, "group id"));
  const count = el("span", { class: "muted", id: "match-count" });
  sec.append(el("div", { class: "toolbar" }, search, sort, count));
  const body = el("div");
  const detail = el("section", { id: "detail", hidden: true });
  sec.append(body);
  const pager = new Pager(25);
  let current = -1;

  function refilter() {
    const q = search.value.trim().toLowerCase();
    let rows = [];
    if (!q) rows = Array.from({ length: nGroups }, (_, g) => g);
    else {
      const hit = new Uint8Array(nGroups);
      for (let r = 0; r < lower.length; r++) if (groupOf[r] >= 0 && (lower[r].includes(q) || idLower[r] === q)) hit[groupOf[r]] = 1;
      for (let g = 0; g < nGroups; g++) if (hit[g]) rows.push(g);
    }
    const size = (g) => G.start[g + 1] - G.start[g];
    const weak = (g) => (G.weakest[g] === null ? Infinity : G.weakest[g]);
    const by = { size: (a, b) => size(b) - size(a) || a - b, small: (a, b) => size(a) - size(b) || a - b,
      weak: (a, b) => weak(a) - weak(b) || a - b, id: (a, b) => G.id[a] - G.id[b] };
    rows.sort(by[sort.value]);
    count.textContent = q ? `${rows.length} groups contain “${search.value.trim()}”` : "";
    pager.page = 0;
    pager.set(rows);
    draw();
  }

  function draw() {
    const q = search.value.trim();
    const table = el("table", { id: "group-table" },
      el("thead", {}, el("tr", {}, el("th", {}, "group"), el("th", {}, "size"), el("th", {}, "weakest link"), el("th", {}, "canonical member"), el("th", {}, "other members"))));
    const tb = el("tbody");
    for (const g of pager.slice()) {
      const members = G.members.slice(G.start[g], G.start[g + 1]);
      const others = members.slice(1, 4).map(title).join(" · ") + (members.length > 4 ? ` · … ${members.length - 4} more` : "");
      const tr = el("tr", { class: g === current ? "row current" : "row", "data-group": G.id[g], onclick: () => open(g) },
        el("td", { class: "num" }, G.id[g]), el("td", { class: "num" }, members.length),
        el("td", { class: "num" }, fmtScore(G.weakest[g], PROB)),
        el("td", { html: highlight(title(members[0]) || I.id[members[0]], q) }), el("td", { class: "muted", html: highlight(others, q) }));
      tb.append(tr);
    }
    table.append(tb);
    body.replaceChildren(table, pager.controls(draw));
  }

  function highlight(text, q) {
    if (!q) return esc(text);
    const i = text.toLowerCase().indexOf(q.toLowerCase());
    if (i < 0) return esc(text);
    return esc(text.slice(0, i)) + "<mark>" + esc(text.slice(i, i + q.length)) + "</mark>" + esc(text.slice(i + q.length));
  }

  let linkSort = { key: "score", dir: -1 };
  function open(g) {
    current = g;
    draw();
    const members = G.members.slice(G.start[g], G.start[g + 1]);
    const inGroup = new Set(members);
    const cards = el("div", { class: "members", id: "members" });
    members.forEach((r, j) => cards.append(el("div", { class: j === 0 ? "member canonical" : "member" },
      el("span", { class: "id" }, `${I.id[r]}${j === 0 ? " · canonical" : ""}`), el("div", {}, title(r)))));
    const links = linksOf[g].slice();
    const cols = [["score", SCORE_NAME], ["embedding", "embedding cos"], ["lexical", "n-gram cos"], ["codes", "model codes"], ["measures", "measures"]];
    const linkTable = el("table", { id: "link-table" });
    const linkBox = el("div");
    const linkPager = new Pager(100);
    function drawLinks() {
      const key = linkSort.key;
      links.sort((x, y) => linkSort.dir * (((L[key] || [])[x] ?? -9) - ((L[key] || [])[y] ?? -9)));
      const head = el("tr", {}, el("th", {}, "item"), el("th", {}, "linked to"),
        ...cols.filter(([k]) => L[k]).map(([k, name]) => el("th", { class: "sortable", onclick: () => { linkSort = { key: k, dir: linkSort.key === k ? -linkSort.dir : -1 }; linkPager.page = 0; drawLinks(); } },
          name + (linkSort.key === k ? (linkSort.dir < 0 ? " ▼" : " ▲") : ""))), el("th", {}, "link"));
      const tb = el("tbody");
      linkPager.set(links);
      for (const i of linkPager.slice()) {
        const a = L.a[i], b = L.b[i];
        const kept = L.same[i] === 1, outside = !(inGroup.has(a) && inGroup.has(b));
        tb.append(el("tr", {},
          el("td", { html: markDiff(title(a) || I.id[a], title(b)) }), el("td", { html: markDiff(title(b) || I.id[b], title(a)) }),
          el("td", { class: "num" }, fmtScore(L.score[i], PROB)),
          L.embedding ? el("td", { class: "num" }, fmt(L.embedding[i])) : null,
          L.lexical ? el("td", { class: "num" }, fmt(L.lexical[i])) : null,
          L.codes ? el("td", {}, relationTag(L.codes[i], "shared code", "rival codes")) : null,
          L.measures ? el("td", {}, relationTag(L.measures[i], "agree", "conflict")) : null,
          el("td", {}, kept ? el("span", { class: "tag agree" }, "kept") : el("span", { class: "tag cut" }, outside ? "to another group" : "cut"))));
      }
      linkTable.replaceChildren(el("thead", {}, head), tb);
      linkBox.replaceChildren(linkTable, links.length > linkPager.pageSize ? linkPager.controls(drawLinks) : "");
    }
    drawLinks();
    detail.hidden = false;
    detail.replaceChildren(el("h2", {}, `Group ${G.id[g]}: ${members.length} items, ${links.length} links`),
      el("p", { class: "note" }, "Words one side has and the other lacks are highlighted. “cut”: a pair above the threshold that the refinement did not keep in one group."),
      cards, linkBox);
    detail.scrollIntoView({ block: "start" });
  }

  search.addEventListener("input", debounce(refilter, 120));
  sort.addEventListener("change", refilter);
  refilter();
  return [sec, detail];
}

// ---------------------------------------------------------------- match
function matchView() {
  const Li = DATA.listings, P = DATA.products, C = DATA.candidates;
  const n = Li.id.length;
  const lower = Li.title.map((t) => t.toLowerCase());
  const sec = el("section", { id: "listings" }, el("h2", {}, "Listings and their candidates"));
  const search = el("input", { type: "search", id: "search", placeholder: "search listing titles or ids…", "aria-label": "search" });
  const filter = el("select", { id: "filter" }, el("option", { value: "all" }, "all listings"), el("option", { value: "matched" }, "matched"), el("option", { value: "unmatched" }, "not matched"));
  const sort = el("select", { id: "sort" }, el("option", { value: "input" }, "input order"), el("option", { value: "best" }, "best score first"), el("option", { value: "worst" }, "lowest best score first"));
  const count = el("span", { class: "muted", id: "match-count" });
  sec.append(el("div", { class: "toolbar" }, search, filter, sort, count));
  const body = el("div");
  sec.append(body);
  const detail = el("section", { id: "detail", hidden: true });
  const pager = new Pager(25);
  let current = -1;

  function refilter() {
    const q = search.value.trim().toLowerCase();
    const rows = [];
    for (let i = 0; i < n; i++) {
      if (q && !lower[i].includes(q) && String(Li.id[i]).toLowerCase() !== q) continue;
      if (filter.value === "matched" && !Li.matched[i]) continue;
      if (filter.value === "unmatched" && Li.matched[i]) continue;
      rows.push(i);
    }
    const best = (i) => (Li.best[i] === null ? -Infinity : Li.best[i]);
    if (sort.value === "best") rows.sort((a, b) => best(b) - best(a));
    if (sort.value === "worst") rows.sort((a, b) => best(a) - best(b));
    count.textContent = q ? `${rows.length} listings contain “${search.value.trim()}”` : "";
    pager.page = 0;
    pager.set(rows);
    draw();
  }

  function draw() {
    const table = el("table", { id: "listing-table" }, el("thead", {}, el("tr", {}, el("th", {}, "listing"), el("th", {}, "title"), el("th", {}, "best candidate"), el("th", {}, SCORE_NAME), el("th", {}, ""))));
    const tb = el("tbody");
    for (const i of pager.slice()) {
      const top = Li.start[i] < Li.start[i + 1] ? Li.start[i] : -1;
      tb.append(el("tr", { class: i === current ? "row current" : "row", onclick: () => open(i) },
        el("td", {}, Li.id[i]), el("td", {}, Li.title[i]), el("td", { class: "muted" }, top >= 0 ? P.title[C.product[top]] : "no candidate"),
        el("td", { class: "num" }, fmtScore(Li.best[i], PROB)), el("td", {}, Li.matched[i] ? el("span", { class: "tag agree" }, "match") : el("span", { class: "tag none" }, "no match"))));
    }
    table.append(tb);
    body.replaceChildren(table, pager.controls(draw));
  }

  function open(i) {
    current = i;
    draw();
    const t = el("table", { id: "candidate-table" }, el("thead", {}, el("tr", {}, el("th", {}, "rank"), el("th", {}, "product"), el("th", {}, "title"), el("th", {}, SCORE_NAME), el("th", {}, ""), C.features ? el("th", {}, "features that decided") : null)));
    const tb = el("tbody");
    for (let j = Li.start[i]; j < Li.start[i + 1]; j++) {
      const p = C.product[j];
      tb.append(el("tr", {}, el("td", { class: "num" }, C.rank[j]), el("td", {}, P.id[p]), el("td", { html: markDiff(P.title[p], Li.title[i]) }),
        el("td", { class: "num" }, fmtScore(C.score[j], PROB)), el("td", {}, C.is_match[j] ? el("span", { class: "tag agree" }, "match") : ""),
        C.features ? el("td", { class: "muted" }, C.features[j]) : null));
    }
    t.append(tb);
    detail.hidden = false;
    detail.replaceChildren(el("h2", {}, `Listing ${Li.id[i]}`), el("div", { class: "side" }, el("div", { class: "record" }, el("span", { class: "id" }, "listing"), Li.title[i])), t,
      el("p", { class: "note" }, "Words of a candidate's title that the listing lacks are highlighted."));
    detail.scrollIntoView({ block: "start" });
  }

  search.addEventListener("input", debounce(refilter, 120));
  filter.addEventListener("change", refilter);
  sort.addEventListener("change", refilter);
  refilter();
  return [sec, detail];
}

summary();
app.replaceChildren(charts(), ...(DATA.kind === "dedup" ? dedupView() : matchView()));
document.body.dataset.readyMs = performance.now().toFixed(0);  // since navigation began: the open time
document.body.dataset.ready = "1";
