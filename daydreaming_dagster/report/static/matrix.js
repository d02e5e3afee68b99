// The generations x evaluation methods matrix: filters, sorting, and virtual scrolling (only the rows in
// view, and a margin, are in the DOM, so 100,000 pairs scroll like 100).

const state = { sort: "mean", dir: -1, order: new Int32Array(0), current: -1 };
const labels = Array.from({ length: NG }, (_, g) => genLabel(g));
const cell = (g, m) => g * M + m;

function sortValue(key, g) {
  if (key === "mean") return G.mean[g];
  if (key === "n") return G.n[g];
  if (key === "concepts") return labels[g];
  if (key === "template") return DATA.templates[G.template[g]];
  if (key === "model") return DATA.models[G.model[g]];
  if (key === "id") return G.id[g];
  const m = Number(key.slice(1)); // "m3": the score of method 3
  return CELLS.state[cell(g, m)] === "s" ? CELLS.score[cell(g, m)] : null;
}

function compare(key, dir) {
  return (a, b) => {
    const x = sortValue(key, a);
    const y = sortValue(key, b);
    if (x === null && y === null) return a - b;
    if (x === null) return 1; // missing values last, whichever the direction
    if (y === null) return -1;
    const d = typeof x === "string" ? x.localeCompare(y) : x - y;
    return d ? d * dir : a - b;
  };
}

function filterPredicate() {
  const template = $("filter-template").value;
  const model = $("filter-model").value;
  const concept = $("filter-concept").value;
  const scoreOf = $("filter-score-of").value;
  const lo = $("filter-min").value === "" ? null : Number($("filter-min").value);
  const hi = $("filter-max").value === "" ? null : Number($("filter-max").value);
  const show = $("filter-show").value;
  const hasState = (g, s) => { for (let m = 0; m < M; m++) if (CELLS.state[cell(g, m)] === s) return true; return false; };
  return (g) => {
    if (template !== "" && G.template[g] !== Number(template)) return false;
    if (model !== "" && G.model[g] !== Number(model)) return false;
    if (concept !== "" && !G.concepts[g].includes(Number(concept))) return false;
    if (lo !== null || hi !== null) {
      const v = sortValue(scoreOf, g);
      if (v === null || (lo !== null && v < lo) || (hi !== null && v > hi)) return false;
    }
    if (show === "failed") return hasState(g, "f");
    if (show === "pending") return hasState(g, "u");
    if (show === "unscored") return G.n[g] === 0;
    return true;
  };
}

function refresh() {
  const keep = filterPredicate();
  const rows = [];
  for (let g = 0; g < NG; g++) if (keep(g)) rows.push(g);
  rows.sort(compare(state.sort, state.dir));
  state.order = Int32Array.from(rows);
  $("matrix-count").textContent = `${fmtInt(rows.length)} of ${fmtInt(NG)} generations`;
  for (const th of $("matrix-head").querySelectorAll("th[data-sort]")) {
    th.setAttribute("aria-sort", th.dataset.sort === state.sort ? (state.dir < 0 ? "descending" : "ascending") : "none");
  }
  $("matrix-scroll").scrollTop = 0;
  drawRows();
}

function options(select, all, values) {
  select.replaceChildren(el("option", { value: "" }, all), ...values.map(([value, label]) => el("option", { value }, label)));
}

function drawMatrixHead() {
  const th = (key, title, sub, cls) => el("th", { "data-sort": key, class: cls, scope: "col", title: "Sort" }, title, sub ? el("small", null, sub) : null);
  $("matrix-head").append(el("tr", null,
    th("mean", "rank", null), th("concepts", "concepts", null), th("template", "template", null), th("model", "model", null),
    th("mean", "mean", `of ${fmtScale(LO)}–${fmtScale(HI)}`), th("n", "scores", null),
    METHODS.map((m, i) => th(`m${i}`, m.judge, m.template)),
  ));
  $("matrix-head").addEventListener("click", (event) => {
    const key = event.target.closest("th[data-sort]")?.dataset.sort;
    if (!key) return;
    // A new column sorts best-first for scores, A-Z for names; a second click reverses it.
    state.dir = key === state.sort ? -state.dir : (["concepts", "template", "model", "id"].includes(key) ? 1 : -1);
    state.sort = key;
    refresh();
  });
  options($("filter-template"), "all", DATA.templates.map((t, i) => [i, t]));
  options($("filter-model"), "all", DATA.models.map((t, i) => [i, t]));
  const byName = DATA.concepts.map((c, i) => [i, c.name]);
  options($("filter-concept"), "any", byName);
  $("filter-score-of").replaceChildren(el("option", { value: "mean" }, "mean"), ...METHODS.map((m, i) => el("option", { value: `m${i}` }, methodLabel(i))));
  const form = $("filters");
  form.addEventListener("input", refresh);
  form.addEventListener("change", refresh);
  form.addEventListener("reset", () => setTimeout(refresh));
  form.addEventListener("submit", (event) => event.preventDefault());
}

function scoreCell(g, m) {
  const i = cell(g, m);
  const s = CELLS.state[i];
  if (s === "s") return el("td", { class: "score", style: colour(CELLS.score[i]) }, fmtNum(CELLS.score[i]));
  if (s === "f") return el("td", { class: "score fail", title: `parse failure: ${failureReason.get(i)}` }, "✗");
  if (s === "u") return el("td", { class: "score pending", title: "not answered yet" }, "…");
  return el("td", { class: "score" });
}

function drawRows() {
  const scroller = $("matrix-scroll");
  const n = state.order.length;
  const first = Math.max(0, Math.floor(scroller.scrollTop / ROW) - OVERSCAN);
  const last = Math.min(n, Math.ceil((scroller.scrollTop + scroller.clientHeight) / ROW) + OVERSCAN);
  const spacer = (h) => el("tr", { class: "spacer", "aria-hidden": "true" }, el("td", { colspan: 6 + M, style: { height: `${h}px` } }));
  const rows = [];
  for (let k = first; k < last; k++) {
    const g = state.order[k];
    rows.push(el("tr", { class: "row", tabindex: 0, "data-g": g },
      el("td", { class: "num" }, G.rank[g] === null ? "–" : fmtInt(G.rank[g])),
      el("td", { title: labels[g] }, labels[g]),
      el("td", null, DATA.templates[G.template[g]]),
      el("td", null, DATA.models[G.model[g]]),
      el("td", { class: "score", style: colour(G.mean[g]) }, G.mean[g] === null ? "–" : G.mean[g].toFixed(2)),
      el("td", { class: "num" }, fmtInt(G.n[g])),
      Array.from({ length: M }, (_, m) => scoreCell(g, m)),
    ));
  }
  if (!n) rows.push(el("tr", null, el("td", { colspan: 6 + M, class: "muted" }, "No generation matches the filters.")));
  $("matrix-body").replaceChildren(spacer(first * ROW), ...rows, spacer((n - last) * ROW));
}

function drawMatrix() {
  drawMatrixHead();
  let pending = false;
  $("matrix-scroll").addEventListener("scroll", () => {
    if (pending) return;
    pending = true;
    requestAnimationFrame(() => { pending = false; drawRows(); });
  });
  const open = (event) => {
    const row = event.target.closest("tr.row");
    if (row) openGeneration(Number(row.dataset.g));
  };
  $("matrix-body").addEventListener("click", open);
  $("matrix-body").addEventListener("keydown", (event) => { if (event.key === "Enter") open(event); });
  refresh();
}
