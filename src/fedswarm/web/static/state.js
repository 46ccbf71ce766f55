// What every view shares: the node's chain (for amounts and explorer links), the role of the
// node serving the API, and the page's small live status region.
import { api } from "./api.js";
import { h } from "./dom.js";
import { DEFAULT_CHAIN, amountUnits, explorerUrl, formatAmount } from "./units.js";

export const state = { chain: { ...DEFAULT_CHAIN }, node: null, ui: { role: "client", pages: [] } };

// Load the node's description (GET /api/v1/node); an older node without `chain` is wei/ETH.
export async function loadNode() {
  try {
    state.node = await api("/api/v1/node");
    state.chain = { ...DEFAULT_CHAIN, ...(state.node && state.node.chain ? state.node.chain : {}) };
  } catch { state.node = null; state.chain = { ...DEFAULT_CHAIN }; }
  return state.node;
}

// A contract amount (an API *_wei field) as text, the exact integer in its tooltip.
export function amount(value, testid) {
  const exact = value === null || value === undefined ? null : `${value} (smallest unit)`;
  return h("span", { class: "amount", title: exact, "data-testid": testid, "data-raw": value ?? null },
    formatAmount(value, amountUnits(state.chain)));
}
export const amountText = (value) => formatAmount(value, amountUnits(state.chain));

// A transaction hash, linked to the chain's explorer when it has one (HashScan on Hedera).
export function txLink(hash, testid) {
  if (!hash) return "—";
  const url = explorerUrl(state.chain, hash);
  const code = h("code", { class: "wrap", "data-testid": testid, title: hash }, hash);
  return url ? h("a", { href: url, target: "_blank", rel: "noopener noreferrer" }, code) : code;
}

// One short line in the page's polite live region (the rest of the page is not live, so a
// screen reader is not made to re-read tables that refresh every few seconds).
export function announce(text) {
  const el = document.getElementById("status");
  if (el) el.textContent = text;
}

// A client's rejection rate from the chain's settlements ("—" when nothing was judged yet).
export function rateText(rate, units) {
  if (rate === null || rate === undefined) return units ? "—" : "no settled units";
  return `${(100 * rate).toFixed(1)} % of ${units ?? "?"} units`;
}
