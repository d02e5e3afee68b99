"use strict";
// The results report: reads the JSON data block, draws the summaries and a virtualised matrix of
// generations x evaluation methods, and inflates a generation's texts only when it is opened.
// Every text from a model or from the experiment goes into the page as a text node
// (textContent / createTextNode), never as markup.
(() => {
  const DATA = JSON.parse(document.getElementById("report-data").textContent);
  const G = DATA.generations;
  const CELLS = DATA.cells;
  const METHODS = DATA.methods;
  const M = METHODS.length;
  const NG = G.id.length;
  const [LO, HI] = DATA.scale;
  const ROW = 30; // px, the height of a matrix row (--row in the CSS)
  const OVERSCAN = 12;
  const PREVIEW_ROWS = 10;
  const MAX_TABLE_ROWS = 1000;
  const $ = (id) => document.getElementById(id);

  function el(tag, props, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(props || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (key === "class") node.className = value;
      else if (key === "text") node.textContent = value;
      else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
      else if (key === "style") Object.assign(node.style, value);
      else node.setAttribute(key, value === true ? "" : String(value));
    }
    for (const child of children.flat()) {
      if (child === null || child === undefined || child === false) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  const intFmt = new Intl.NumberFormat("en-US");
  const fmtInt = (n) => intFmt.format(n);
  function fmtNum(x, digits = 2) {
    if (x === null || x === undefined || Number.isNaN(x)) return "–";
    return Number.isInteger(x) ? String(x) : x.toFixed(digits);
  }
  const fmtScale = (x) => (Number.isInteger(x) ? String(x) : x.toFixed(1));

  // Viridis, sampled at five points, interpolated in RGB: the heatmap PNG's colour map.
  const STOPS = [[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]];
  function colour(value) {
    if (value === null || value === undefined) return null;
    const t = Math.min(1, Math.max(0, (value - LO) / ((HI - LO) || 1))) * (STOPS.length - 1);
    const i = Math.min(STOPS.length - 2, Math.floor(t));
    const f = t - i;
    const rgb = STOPS[i].map((c, k) => Math.round(c + (STOPS[i + 1][k] - c) * f));
    const light = (0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]) / 255 > 0.5;
    return { background: `rgb(${rgb.join(",")})`, color: light ? "#111" : "#fff" };
  }

  const conceptNames = DATA.concepts.map((c) => c.name);
  const genLabel = (g) => G.concepts[g].map((i) => conceptNames[i]).join(" × ") || G.id[g];
  const methodLabel = (m) => `${METHODS[m].template} · ${METHODS[m].judge}`;
  const failureReason = new Map(CELLS.failures.map(([cell, reason]) => [cell, CELLS.reasons[reason]]));

  // ------------------------------------------------------------------ summary sections

  function card(label, value, detail) {
    return el("div", { class: "card" }, el("div", { class: "label" }, label), el("div", { class: "value" }, value),
      detail ? el("div", { class: "detail" }, detail) : null);
  }

  function listText(items, max = 8) {
    return items.length <= max ? items.join(", ") : `${items.slice(0, max).join(", ")} and ${items.length - max} more`;
  }

  function spendCard() {
    const s = DATA.spend;
    if (!s.known) return card("Spend", "unknown", "llm_usage has no paid calls to count yet.");
    const detail = `${fmtInt(s.calls)} calls, ${fmtInt(s.tokens)} tokens`;
    if (s.offline) return card("Spend", "$0", `${detail}; offline backend, nothing was paid.`);
    const unpriced = s.unpriced_models.length ? `; no price in llm_models.csv for ${s.unpriced_models.join(", ")}` : "";
    const value = s.cost_usd === null ? "unknown" : `$${s.cost_usd.toFixed(s.cost_usd < 10 ? 4 : 2)}`;
    return card("Spend", value, detail + unpriced);
  }

  function drawGlance() {
    const c = DATA.counts;
    const pct = (n) => (c.pairs ? ` (${((100 * n) / c.pairs).toFixed(1)}%)` : "");
    $("glance-cards").append(
      card("Concepts", fmtInt(DATA.concepts.length), listText(conceptNames)),
      card("Generation templates", fmtInt(DATA.templates.length), listText(DATA.templates)),
      card("Generation models", fmtInt(DATA.models.length), listText(DATA.models)),
      card("Evaluation methods", fmtInt(M), listText(METHODS.map((m) => `${m.template} × ${m.judge}`), 6)),
      card("Generations", fmtInt(c.generations), `${fmtInt(c.answered)} answered`),
      card("Evaluation pairs", fmtInt(c.pairs),
        `${fmtInt(c.scored)} scored${pct(c.scored)}, ${fmtInt(c.failed)} parse failures${pct(c.failed)}, ` +
        `${fmtInt(c.unanswered)} not answered yet`),
      spendCard(),
    );
  }

  function dataTable(table, limit) {
    const numeric = table.columns.map((_, i) => table.rows.some((r) => typeof r[i] === "number"));
    const body = el("tbody");
    const fill = (n) => {
      body.replaceChildren(...table.rows.slice(0, n).map((row) =>
        el("tr", null, row.map((v, i) => el("td", { class: numeric[i] ? "num" : null }, numeric[i] ? fmtNum(v, 3) : v ?? "")))));
    };
    fill(limit || table.rows.length);
    const node = el("table", { class: "data" }, el("thead", null, el("tr", null, table.columns.map((c) => el("th", null, c)))), body);
    if (!limit || table.rows.length <= limit) return node;
    const shown = Math.min(table.rows.length, MAX_TABLE_ROWS);
    const more = el("button", { type: "button" }, `show ${shown === table.rows.length ? "all" : "the first"} ${fmtInt(shown)} rows`);
    more.addEventListener("click", () => { fill(shown); more.remove(); });
    return el("div", null, node, more);
  }

  function drawHeatmap() {
    const h = DATA.heatmap;
    const box = $("heatmap-table");
    if (!h.rows.length) { box.append(el("p", { class: "muted" }, "No scores yet.")); return; }
    const head = el("tr", null, el("th", null, "template \\ model"), h.columns.map((c) => el("th", null, c)));
    const rows = h.rows.map((r, i) => el("tr", null, el("th", null, r), h.columns.map((_, j) => {
      const mean = h.mean[i][j];
      const style = colour(mean);
      return el("td", { class: "cell", style }, mean === null ? "no scores" : fmtNum(mean), el("small", null, `n=${h.n[i][j]}`));
    })));
    const legend = el("div", { class: "legend" }, fmtScale(LO),
      el("span", { class: "bar", style: { background: `linear-gradient(to right, ${STOPS.map((s) => `rgb(${s})`).join(",")})` } }),
      fmtScale(HI), "  mean of every judge score of the cell's generations; n = scores");
    box.append(el("table", { class: "data heat" }, el("thead", null, head), el("tbody", null, rows)), legend);
  }

  const SUMMARY_TITLES = {
    generation_template: "By generation template",
    generation_model: "By generation model",
    evaluation_method: "By evaluation method (template × judge)",
    concept: "By concept (every pair whose combination contains it)",
    combination: "By concept combination",
  };

  function drawSummaries() {
    const box = $("summary-tables");
    for (const [name, table] of Object.entries(DATA.summaries)) {
      box.append(el("h3", null, SUMMARY_TITLES[name] || name), dataTable(table, PREVIEW_ROWS));
    }
  }

  function alphaReading(alpha) {
    if (alpha === null) return "Krippendorff's alpha is undefined here: it needs two or more evaluation methods that scored the same generations, with some spread in the scores.";
    const a = alpha.toFixed(3);
    if (alpha >= 0.8) return `Across all judges, Krippendorff's alpha is ${a}: reliable agreement.`;
    if (alpha >= 0.667) return `Across all judges, Krippendorff's alpha is ${a}: tentative agreement, good enough for cautious conclusions.`;
    if (alpha > 0) return `Across all judges, Krippendorff's alpha is ${a}: the judges agree only weakly; read a score as one judge's view, not a verdict.`;
    return `Across all judges, Krippendorff's alpha is ${a}: no better than chance; the judges do not agree.`;
  }

  function drawAgreement() {
    const a = DATA.agreement;
    $("agreement-body").append(
      el("p", { class: "headline" }, alphaReading(a.alpha),
        a.n_items ? ` (${fmtInt(a.n_items)} generations scored by two or more of ${a.n_judges} methods)` : ""),
      el("p", { class: "reading muted" },
        "How to read it: each row compares two evaluation methods over the generations both scored (n_items). " +
        "spearman says whether they rank those generations in the same order (1 same, 0 unrelated, negative reversed); " +
        "mean_abs_diff is how many points apart their scores are, so a high spearman with a large difference means one " +
        "judge is consistently harsher. krippendorff_alpha measures absolute agreement corrected for chance: 1 perfect, " +
        "0 chance; 0.8 or more is usually called reliable, 0.667 or more tentative. The last row is all methods together."),
      a.rows.length ? dataTable(a, 0) : null,
    );
    if (DATA.usage.rows.length) {
      $("agreement").after(el("section", { id: "usage" }, el("h2", null, "Calls, tokens and cost"), dataTable(DATA.usage, 0)));
    }
  }

  // ------------------------------------------------------------------ the matrix

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

  // ------------------------------------------------------------------ texts, on demand

  const chunks = new Map();
  function loadChunk(i) {
    if (!chunks.has(i)) {
      const promise = (async () => {
        const b64 = document.getElementById(`chunk-${i}`).textContent.trim();
        const binary = atob(b64);
        const bytes = new Uint8Array(binary.length);
        for (let k = 0; k < binary.length; k++) bytes[k] = binary.charCodeAt(k);
        const stream = new Blob([bytes]).stream().pipeThrough(new DecompressionStream("gzip"));
        return JSON.parse(await new Response(stream).text());
      })();
      promise.catch(() => chunks.delete(i));
      chunks.set(i, promise);
      if (chunks.size > 24) chunks.delete(chunks.keys().next().value);
    }
    return chunks.get(i);
  }

  function textBlock(text, missing, cls = "") {
    return text === null || text === undefined
      ? el("p", { class: "text missing" }, missing)
      : el("pre", { class: `text ${cls}`.trim() }, text);
  }

  function linesBlock(text, verdictLine) {
    const block = el("pre", { class: "text lines" });
    // The same line breaks the score parser counts (\r\n, \r, \n), so the verdict line matches.
    text.split(/\r\n|\r|\n/).forEach((line, i) => {
      block.append(el("span", { class: i + 1 === verdictLine ? "ln verdict" : "ln" }, line));
    });
    return block;
  }

  function judgeCard(g, m, text) {
    const i = cell(g, m);
    const s = CELLS.state[i];
    const badge = s === "s"
      ? el("span", { class: "badge", style: colour(CELLS.score[i]) }, `${fmtNum(CELLS.score[i])} / ${fmtScale(HI)}`)
      : s === "f" ? el("span", { class: "badge fail" }, `parse failure: ${failureReason.get(i)}`)
        : el("span", { class: "badge pending" }, "not answered yet");
    const line = CELLS.line[i];
    const body = text === null || text === undefined
      ? el("p", { class: "text missing" }, "No judge answer is stored for this pair yet.")
      : linesBlock(text, line);
    const note = line && text != null ? el("p", { class: "muted" }, `${s === "s" ? "Score read" : "Rejected statement"} on line ${line} (highlighted).`) : null;
    return el("article", { class: "judge", "data-method": METHODS[m].id, "data-state": s },
      el("h3", null, el("span", null, methodLabel(m)), badge), note, body);
  }

  async function fillDetail(g) {
    const body = $("detail-body");
    const rank = G.rank[g] === null ? "unranked" : `rank ${fmtInt(G.rank[g])} of ${fmtInt(NG)}`;
    body.replaceChildren(
      el("h2", { id: "detail-title" }, labels[g]),
      el("p", { class: "meta" }, `${DATA.templates[G.template[g]]} · ${DATA.models[G.model[g]]} · mean ${fmtNum(G.mean[g])} over ${G.n[g]} scores · ${rank}`),
      el("p", { class: "meta" }, G.id[g]),
      el("p", { class: "loading" }, "Loading texts…"),
    );
    let entry;
    try {
      entry = (await loadChunk(G.chunk[g]))[G.slot[g]];
    } catch (error) {
      body.querySelector(".loading").textContent = `The texts could not be read (${error}); this browser may lack DecompressionStream.`;
      return;
    }
    if (state.current !== g) return; // another generation was opened meanwhile
    const [prompt, answer, judges] = entry;
    const cards = [];
    for (let m = 0; m < M; m++) if (CELLS.state[cell(g, m)] !== "-") cards.push(judgeCard(g, m, judges[m]));
    body.querySelector(".loading").replaceWith(
      el("h3", null, "Prompt"), textBlock(prompt, "No prompt is stored for this generation.", "prompt"),
      el("h3", null, "Answer"), textBlock(answer, "No answer is stored for this generation yet."),
      el("h3", null, `Judges (${cards.length})`),
      cards.length ? el("div", { class: "judges" }, cards) : el("p", { class: "muted" }, "No evaluation method judges this generation."),
    );
    // Scroll each judge's answer to its verdict line: read every position first, then write, so
    // the browser lays the page out once rather than once per judge.
    const marks = [...body.querySelectorAll(".ln.verdict")];
    const tops = marks.map((mark) => mark.offsetTop - mark.parentElement.offsetTop - mark.parentElement.clientHeight / 3);
    marks.forEach((mark, i) => { mark.parentElement.scrollTop = Math.max(0, tops[i]); });
    document.documentElement.dataset.detailReady = G.id[g];
  }

  function openGeneration(g, fromHash = false) {
    state.current = g;
    delete document.documentElement.dataset.detailReady;
    $("detail").hidden = false;
    $("detail-close").focus();
    if (!fromHash) history.pushState(null, "", `#g=${encodeURIComponent(G.id[g])}`);
    fillDetail(g);
  }

  function closeGeneration() {
    if ($("detail").hidden) return;
    $("detail").hidden = true;
    const row = $("matrix-body").querySelector(`tr[data-g="${state.current}"]`);
    state.current = -1;
    if (location.hash) history.replaceState(null, "", location.pathname + location.search);
    if (row) row.focus();
  }

  function step(delta) {
    const at = state.order.indexOf(state.current);
    const next = state.order[at + delta];
    if (at >= 0 && next !== undefined) openGeneration(next);
  }

  function fromHash() {
    const match = /^#g=(.+)$/.exec(location.hash);
    const g = match ? G.id.indexOf(decodeURIComponent(match[1])) : -1;
    if (g >= 0) openGeneration(g, true);
    else closeGeneration();
  }

  function wireDetail() {
    $("detail-close").addEventListener("click", closeGeneration);
    $("detail-prev").addEventListener("click", () => step(-1));
    $("detail-next").addEventListener("click", () => step(1));
    $("detail").addEventListener("click", (event) => { if (event.target === $("detail")) closeGeneration(); });
    document.addEventListener("keydown", (event) => { if (event.key === "Escape") closeGeneration(); });
    window.addEventListener("popstate", fromHash);
  }

  document.title = DATA.title;
  $("title").textContent = DATA.title;
  $("subtitle").textContent = `Generated ${DATA.generated} · scores on a ${fmtScale(LO)}–${fmtScale(HI)} scale`;
  $("offline-banner").hidden = !DATA.spend.offline;
  drawGlance();
  drawHeatmap();
  drawSummaries();
  drawAgreement();
  drawMatrix();
  wireDetail();
  fromHash();
  document.documentElement.dataset.ready = String(Math.round(performance.now()));
})();
