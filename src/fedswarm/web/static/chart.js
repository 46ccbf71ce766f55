// A hand-written SVG line chart: validation loss (left axis) and accuracy (right axis, 0–1)
// per round. No library: two series and a few dozen points do not need one.
// Rounds are 0-based in the data: round 0 sits on the left axis, round n-1 on the right one.
// People read rounds from 1, so labels say round + 1 (data-round keeps the index).
import { h, s, num } from "./dom.js";

export const W = 640, H = 260, L = 48, R = 48, T = 16, B = 36;

// The x of round index `round` among `n` rounds.
export function xOf(round, n) {
  return n <= 1 ? L + (W - L - R) / 2 : L + (round / (n - 1)) * (W - L - R);
}

function drawSvg(rounds, totalRounds) {
  const pts = rounds.filter((r) => r.val_loss !== null || r.val_accuracy !== null);
  const n = Math.max(totalRounds || 0, ...rounds.map((r) => r.round + 1), 1);
  const losses = pts.map((r) => r.val_loss).filter((v) => v !== null && Number.isFinite(v));
  const maxLoss = losses.length ? Math.max(...losses, 0.0001) * 1.1 : 1;  // no data yet: a 0–1 scale
  const x = (round) => xOf(round, n);
  const yLoss = (v) => T + (1 - v / maxLoss) * (H - T - B);
  const yAcc = (v) => T + (1 - v) * (H - T - B);

  const grid = [];
  for (let i = 0; i <= 4; i++) {
    const y = T + (i / 4) * (H - T - B);
    grid.push(s("line", { x1: L, x2: W - R, y1: y, y2: y, class: "grid" }));
    grid.push(s("text", { x: L - 6, y: y + 4, class: "tick loss", "text-anchor": "end" }, num(maxLoss * (1 - i / 4), 2)));
    grid.push(s("text", { x: W - R + 6, y: y + 4, class: "tick acc" }, num(1 - i / 4, 2)));
  }
  const ticks = [];
  const step = Math.ceil(n / 12);
  for (let r = 0; r < n; r += step) {
    ticks.push(s("text", { x: x(r), y: H - B + 16, class: "tick round", "text-anchor": "middle", "data-round": r }, String(r + 1)));
  }
  const line = (key, y, cls) => {
    const p = pts.filter((r) => r[key] !== null && Number.isFinite(r[key]));
    const d = p.map((r, i) => `${i ? "L" : "M"}${x(r.round).toFixed(1)},${y(r[key]).toFixed(1)}`).join(" ");
    return [
      p.length > 1 ? s("path", { d, class: `series ${cls}` }) : null,
      p.map((r) => s("circle", { cx: x(r.round), cy: y(r[key]), r: 4, class: `pt ${cls}`, "data-round": r.round },
        s("title", {}, `round ${r.round + 1}: ${cls === "acc" ? "accuracy" : "loss"} ${num(r[key])}`))),
    ];
  };
  return s("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", class: "chart", "data-testid": "rounds-chart",
    "aria-label": `Validation loss and accuracy for ${pts.length} of ${n} rounds` },
  grid, ticks,
  s("text", { x: W / 2, y: H - 4, class: "axis-label", "text-anchor": "middle" }, "round"),
  line("val_loss", yLoss, "loss"), line("val_accuracy", yAcc, "acc"));
}

const dur = (v) => (v === null || v === undefined ? "—" : `${Number(v).toFixed(1)} s`);

// The chart, its legend and its data table. Returns {el, update(rounds, totalRounds)}:
// update redraws the SVG and the table body in place, so an open "Chart data" stays open.
export function roundsChart() {
  const figure = h("figure", { class: "chart-box" });
  const body = h("tbody");
  const legend = h("p", { class: "legend" },
    h("span", { class: "key loss" }, "validation loss (left)"), " ",
    h("span", { class: "key acc" }, "validation accuracy (right)"));
  // The same numbers as a table, for screen readers and copy-paste.
  const details = h("details", { "data-testid": "chart-data" }, h("summary", {}, "Chart data"),
    h("div", { class: "table-wrap" }, h("table", { class: "compact" },
      h("thead", {}, h("tr", {}, ["round", "val loss", "val accuracy", "duration", "state"].map((c) => h("th", { scope: "col" }, c)))),
      body)));
  let svg = drawSvg([], 1);
  figure.append(svg, legend, details);
  const update = (rounds, totalRounds) => {
    const next = drawSvg(rounds, totalRounds);
    svg.replaceWith(next);
    svg = next;
    body.replaceChildren(...rounds.map((r) => h("tr", {}, h("td", {}, String(r.round + 1)), h("td", {}, num(r.val_loss)),
      h("td", {}, num(r.val_accuracy)), h("td", {}, dur(r.seconds)), h("td", {}, r.state))));
  };
  return { el: figure, update };
}
