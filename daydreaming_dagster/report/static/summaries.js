// The sections above the matrix: the experiment at a glance, the heatmap, the summaries, judge agreement.

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
