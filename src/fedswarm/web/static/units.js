// Amounts and networks: the ONE place that turns the node's integer amounts into words.
// Amounts in the API are decimal strings of the chain's EVM unit (wei, 18 decimals, on the
// devnet; tinybar, 8 decimals, on Hedera); wallet balances and transaction values are in value
// units (18 decimals everywhere, weibar on Hedera). The caller says which with `decimals`.

// What the UI assumes when the node does not describe its chain (an older node: wei and ETH).
export const DEFAULT_CHAIN = { id: null, name: "devnet", currency: "ETH", amount_decimals: 18, value_decimals: 18, explorer_tx: null };

const HEDERA = { 295: "Hedera mainnet", 296: "Hedera testnet", 297: "Hedera previewnet" };

// A readable network name for a chain id; `nodeChain` (the node's own chain) names the devnet.
export function networkName(chainId, nodeChain) {
  const id = Number(chainId);
  if (HEDERA[id]) return HEDERA[id];
  if (nodeChain && Number(nodeChain.id) === id && nodeChain.name === "devnet") return `devnet (chain ${id})`;
  if (id === 31337) return "devnet (chain 31337)";
  return `chain ${id}`;
}

export const isHedera = (chainId) => Boolean(HEDERA[Number(chainId)]);

// formatAmount("12000000000018000", {decimals: 18, currency: "ETH"}) -> "0.012 ETH".
// `plain`: no grouping and no currency (an input's value; with digits = decimals, exact).
// Exact integer arithmetic (BigInt: amounts pass 2^53); at most `digits` fraction digits (all 8
// for HBAR, 6 for ETH),
// trailing zeros dropped; a non-zero amount below the last digit reads "< 0.000001 ETH".
export function formatAmount(value, { decimals = 18, currency = "ETH", digits, plain = false } = {}) {
  if (digits === undefined) digits = decimals <= 8 ? decimals : 6;  // tinybar: every digit
  if (value === null || value === undefined || value === "") return "—";
  let n;
  try { n = BigInt(typeof value === "number" ? Math.round(value) : String(value).trim()); } catch { return String(value); }
  const neg = n < 0n;
  if (neg) n = -n;
  const unit = 10n ** BigInt(decimals);
  const shown = Math.min(digits, decimals);
  const step = 10n ** BigInt(decimals - shown);
  const rounded = (n + step / 2n) / step;  // in units of the last shown digit
  if (rounded === 0n && n > 0n) return `< ${neg ? "-" : ""}0.${"0".repeat(shown - 1)}1 ${currency}`;
  const whole = rounded / 10n ** BigInt(shown);
  let frac = (rounded % 10n ** BigInt(shown)).toString().padStart(shown, "0").replace(/0+$/, "");
  if (unit === 1n) frac = "";
  if (plain) return `${neg ? "-" : ""}${whole}${frac ? "." + frac : ""}`;
  const grouped = whole.toString().replace(/\B(?=(\d{3})+(?!\d))/g, ",");
  return `${neg ? "-" : ""}${grouped}${frac ? "." + frac : ""} ${currency}`;
}

// The inverse, for inputs: "0.01" coins -> "10000000000000000" smallest units (exact).
export function parseAmount(text, decimals = 18) {
  const t = String(text).trim().replace(/,/g, "");
  const m = /^([0-9]*)(?:\.([0-9]*))?$/.exec(t);
  if (!t || !m || (m[1] === "" && !m[2])) throw new Error(`"${text}" is not an amount: write it like 0.01`);
  const frac = (m[2] || "").replace(/0+$/, "");
  if (frac.length > decimals) throw new Error(`"${text}" has more than ${decimals} decimals`);
  return (BigInt(m[1] || "0") * 10n ** BigInt(decimals) + BigInt((frac || "0").padEnd(decimals, "0").slice(0, decimals) || "0")).toString();
}

// The formatter options for contract amounts (API *_wei fields) and for wallet values.
export const amountUnits = (chain) => ({ decimals: chain.amount_decimals ?? 18, currency: chain.currency || "ETH" });
export const valueUnits = (chain) => ({ decimals: chain.value_decimals ?? 18, currency: chain.currency || "ETH" });

// A transaction hash's explorer link, or null (the devnet has no explorer).
export function explorerUrl(chain, tx) {
  if (!chain || !chain.explorer_tx || !/^0x[0-9a-fA-F]{64}$/.test(tx || "")) return null;
  return chain.explorer_tx.replace("{tx}", tx);
}
