// Network: the mesh as the API's node sees it (trainers, clients with their rejection rate)
// and the delegate picker (client nodes that advertise a public API).
import { api, getBase, setBase } from "../api.js";
import { alertBox, card, fill, h, short, table } from "../dom.js";
import { amount, rateText } from "../state.js";

const rate = (c) => rateText(c.rejection_rate, c.units_judged);

// The picker: this page's node or one of the advertised delegates; the choice is remembered
// (localStorage "fedswarm.delegate") and every API call goes there.
function delegatePicker(clients, onPick) {
  const select = h("select", { id: "delegate", "data-testid": "delegate-select" },
    h("option", { value: "" }, `this node (${location.origin})`),
    clients.filter((c) => c.api).map((c) => h("option", { value: c.api.replace(/\/+$/, "") },
      `${c.api} · ${short(c.peer_id, 10)}${c.online ? "" : " (offline)"} · rejects ${rate(c)}`)));
  const current = getBase();
  if (current && ![...select.options].some((o) => o.value === current)) select.append(h("option", { value: current }, `${current} (saved)`));
  select.value = current;
  const btn = h("button", { type: "button", id: "delegate-btn", onclick: () => { setBase(select.value); onPick(); } }, "Use this delegate");
  return h("div", { class: "field" }, h("label", { for: "delegate" }, "Delegate (the client node that runs your jobs)"),
    h("div", { class: "actions" }, select, btn),
    h("small", { class: "muted" }, "A delegate computes your model while it aggregates the trainers' updates; it seals the "
      + "final weights to your wallet's key and keeps no plaintext copy after the job completes."));
}

export function networkPage({ page, every, rerender }) {
  const summary = h("div", { class: "cards", "data-testid": "mesh-summary" });
  const trainersBox = h("section", { "aria-labelledby": "trainers-h" });
  const clientsBox = h("section", { "aria-labelledby": "clients-h" });
  const pickerBox = h("div");
  const err = h("div");
  const updated = h("p", { class: "muted small" });
  page("Network", h("p", { class: "muted" }, "Nodes this node sees on the market topic; refreshes every 2 s."),
    err, summary, pickerBox, h("h2", { id: "clients-h" }, "Client nodes"), clientsBox,
    h("h2", { id: "trainers-h" }, "Trainers"), trainersBox, updated);
  let pickerShown = false;
  every(2000, async () => {
    try {
      const [trainers, peers] = await Promise.all([api("/api/v1/trainers", { local: true }), api("/api/v1/peers", { local: true }).catch(() => ({}))]);
      const dir = peers.directory || [];
      const count = (role, online) => dir.filter((p) => p.role === role && (!online || p.online)).length;
      fill(summary,
        card("Bootstrap", `${count("bootstrap", true)} online`),
        card("Clients", `${count("client", true)} online`),
        card("Trainers", `${trainers.trainers.filter((t) => t.online).length} online / ${trainers.trainers.length} seen`),
        card("Connected peers", String((peers.connected || []).length)));
      const rows = trainers.trainers.map((t) => {
        const c = t.capabilities || {};
        return h("tr", {},
          h("td", {}, h("code", { title: t.peer_id }, short(t.peer_id, 14))),
          h("td", {}, h("span", { class: `state ${t.online ? "ok" : "off"}` }, t.online ? "online" : "offline")),
          h("td", {}, c.device ? `${c.device}${c.gpu_name ? ` (${c.gpu_name})` : ""}` : "—"),
          h("td", {}, c.cpu_cores ?? "—"), h("td", {}, c.ram_mb ? `${Math.round(c.ram_mb / 1024)} GiB` : "—"),
          h("td", {}, amount(t.price_wei)),
          h("td", {}, t.last_seen ? `${Math.max(0, Math.round(Date.now() / 1000 - t.last_seen))} s ago` : "—"));
      });
      fill(trainersBox, table("Trainers with capabilities and asking price per work unit",
        ["peer", "state", "device", "CPU cores", "RAM", "asking price", "last seen"], rows, { "data-testid": "trainers-table" }));
      err.replaceChildren();
      updated.textContent = `updated ${new Date().toLocaleTimeString()}`;
    } catch (exc) { fill(err, alertBox(exc.message, "network-error")); }
    // Client nodes come from a route older nodes lack: its absence is a note, not an error.
    let clients = null;
    try { clients = (await api("/api/v1/clients", { local: true })).clients || []; } catch { clients = null; }
    if (clients === null) {
      fill(clientsBox, h("p", { class: "muted", "data-testid": "clients-missing" }, "This node does not list client nodes."));
    } else {
      const rows = clients.map((c) => h("tr", { "data-peer": c.peer_id },
        h("td", {}, h("code", { title: c.peer_id }, short(c.peer_id, 14))),
        h("td", {}, h("span", { class: `state ${c.online ? "ok" : "off"}` }, c.online ? "online" : "offline")),
        h("td", { class: "wrap" }, c.api || "—"), h("td", {}, c.operator ? h("code", { title: c.operator }, short(c.operator, 10)) : "—"),
        h("td", { "data-testid": "rejection-rate" }, rate(c))));
      fill(clientsBox, table("Client nodes, their public API (delegates) and the share of trainers' units they rejected on chain",
        ["peer", "state", "public API", "operator", "rejection rate"], rows, { "data-testid": "clients-table" }));
      // Drawn once: redrawing every 2 s would close an open <select> under the user's pointer.
      if (!pickerShown) { fill(pickerBox, delegatePicker(clients, rerender)); pickerShown = true; }
    }
  });
}
