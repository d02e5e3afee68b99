// One generation: its texts, inflated from their gzip chunk when it is opened, and every judge's answer
// with the verdict line highlighted.

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
