// Settings: this node's facts and the operator's API token.
import { api, baseLabel, getToken, openSession, setToken } from "../api.js";
import { alertBox, fact, field, fill, h } from "../dom.js";
import { amount, state } from "../state.js";
import { networkName } from "../units.js";

export async function settingsPage({ page }) {
  const info = h("div");
  const tokenIn = h("input", { type: "password", id: "api-token", name: "api-token", autocomplete: "off", value: getToken(),
    "aria-describedby": "api-token-hint" });
  const saved = h("p", { class: "small" });
  const form = h("form", { id: "token-form" },
    field("API token", tokenIn, "For this node's operator: kept in this browser (localStorage) and sent as a Bearer token; needed when the node is bound publicly or started with a token. Wallet users sign in with the wallet instead."),
    h("div", { class: "actions" }, h("button", { type: "submit", class: "primary" }, "Save token"),
      h("button", { type: "button", onclick: () => { tokenIn.value = ""; setToken(""); saved.textContent = "Token cleared."; } }, "Clear")),
    saved);
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    setToken(tokenIn.value.trim());
    const ok = await openSession();
    saved.textContent = !getToken() ? "Token cleared." : ok ? "Token saved in this browser; session opened." : "Token saved, but the node refused it.";
  });
  page("Settings", info, h("h2", {}, "API access"), form);
  try {
    const status = await api("/status", { local: true });
    // A delegate that has not seen a sign-in yet describes its chain only (no balance, no backend).
    const node = state.ui.role === "client" && state.node && state.node.address ? state.node : null;
    const c = state.chain;
    fill(info, h("h2", {}, "This node"), h("dl", { class: "facts", "data-testid": "node-facts" },
      fact("Role", status.role), fact("Peer ID", h("code", { class: "wrap" }, status.peer_id)),
      fact("API used by this page", h("code", { class: "wrap" }, baseLabel())),
      fact("Wallet address", h("code", { class: "wrap", "data-testid": "wallet" }, status.address)),
      node ? fact("Wallet balance", amount(node.balance_wei, "balance")) : null,
      node ? fact("Network", c.id ? `${networkName(c.id, c)} · ${c.currency}` : node.network) : null,
      node ? fact("Backend", `${node.ledger} ledger · ${node.storage} storage`) : null,
      node ? fact("Escrow contract", h("code", { class: "wrap" }, c.contract || node.contract || "—")) : null,
      node ? fact("API token required", node.api_token_required ? "yes" : "no (loopback only)") : null,
      fact("Version", status.version), fact("Uptime", `${status.uptime_s} s`),
      fact("Listening on", h("code", { class: "wrap" }, (status.addrs || []).join(" ")))));
  } catch (exc) { fill(info, alertBox(exc.message, "settings-error")); }
}
