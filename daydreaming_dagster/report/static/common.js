// The report's data and the helpers every part uses: DOM building (text only), number formats, colours.
// Every text from a model or from the experiment goes into the page as a text node
// (textContent / createTextNode), never as markup.

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
