// fedswarm UI: hash-routed single-page app (Network, New job, Job, History, Settings).
import { api, getToken, openSession, setToken } from "./api.js";
import { h, fill, short, wei, num, when, table } from "./dom.js";
import { roundsChart } from "./chart.js";

const view = document.getElementById("view");
let cleanup = [];  // timers / event sources of the current page, stopped on navigation
let uiInfo = { role: "client", pages: [] };

function onLeave(fn) { cleanup.push(fn); }
function every(ms, fn) { fn(); const t = setInterval(fn, ms); onLeave(() => clearInterval(t)); }

function alertBox(msg, id) {
  return h("p", { class: "error", role: "alert", id, "data-testid": id }, msg);
}

function page(title, ...body) {
  document.title = `${title} · fedswarm`;
  fill(view, h("h1", {}, title), ...body);
}

// --- Network ------------------------------------------------------------------------------

function networkPage() {
  const summary = h("div", { class: "cards", "data-testid": "mesh-summary" });
  const trainersBox = h("section", { "aria-labelledby": "trainers-h" });
  const err = h("div");
  const updated = h("p", { class: "muted small" });
  page("Network", h("p", { class: "muted" }, "Nodes this client sees on the market topic; refreshes every 2 s."),
    err, summary, h("h2", { id: "trainers-h" }, "Trainers"), trainersBox, updated);
  every(2000, async () => {
    try {
      const [trainers, peers] = await Promise.all([api("/api/v1/trainers"), api("/api/v1/peers")]);
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
          h("td", {}, wei(t.price_wei)),
          h("td", {}, t.last_seen ? `${Math.max(0, Math.round(Date.now() / 1000 - t.last_seen))} s ago` : "—"));
      });
      fill(trainersBox, table("Trainers with capabilities and asking price per work unit",
        ["peer", "state", "device", "CPU cores", "RAM", "asking price", "last seen"], rows, { "data-testid": "trainers-table" }));
      err.replaceChildren();
      updated.textContent = `updated ${new Date().toLocaleTimeString()}`;
    } catch (exc) { fill(err, alertBox(exc.message, "network-error")); }
  });
}

function card(title, value) {
  return h("div", { class: "card" }, h("div", { class: "card-title" }, title), h("div", { class: "card-value" }, value));
}

// --- New job ------------------------------------------------------------------------------

function field(label, input, hint) {
  const id = input.id;
  return h("div", { class: "field" }, h("label", { for: id }, label), input,
    hint ? h("small", { id: `${id}-hint`, class: "muted" }, hint) : null);
}

async function newJobPage() {
  const dataset = h("input", { type: "file", id: "dataset", name: "dataset", required: true,
    accept: ".csv,.parquet,.npz,.tsv,text/csv", "aria-describedby": "dataset-hint" });
  const columnsMsg = h("div", { id: "columns-msg", "aria-live": "polite" });
  const label = h("select", { id: "label", name: "label", disabled: true }, h("option", { value: "" }, "upload a dataset first"));
  const model = h("input", { type: "file", id: "model", name: "model", accept: ".json,application/json", "aria-describedby": "model-hint" });
  const example = h("select", { id: "example", name: "example" }, h("option", { value: "" }, "— use the uploaded model file —"));
  const numIn = (id, value, min, max) => h("input", { type: "number", id, name: id, value, min, max, step: 1, required: true, inputmode: "numeric" });
  const rounds = numIn("rounds", 3, 1, 1000);
  const epochs = numIn("local_epochs", 1, 1, 100);
  const trainers = numIn("trainers", 3, 1, 256);
  const priceCap = h("input", { type: "text", id: "price_cap_wei", name: "price_cap_wei", value: "10000000000000000",
    inputmode: "numeric", pattern: "[0-9]+", required: true, "aria-describedby": "price_cap_wei-hint" });
  const strategy = h("select", { id: "strategy", name: "strategy" },
    ["fedavg", "fedprox", "fedavgm", "fedadam", "fedyogi", "clipped_fedavg", "median", "trimmed_mean", "krum", "multikrum"]
      .map((n) => h("option", { value: n }, n)));
  const numF = (id, value, min, max, step) => h("input", { type: "number", id, name: id, value, min, max, step, required: true, inputmode: "decimal" });
  const bidWindow = numF("bid_window_s", 3, 0.5, 600, 0.5);
  const deadline = numF("round_deadline_s", 120, 5, 86400, 1);
  const standby = numIn("standby", 1, 0, 256);
  const batch = numIn("batch_size", 32, 1, 65536);
  const lr = numF("lr", 0.01, 0.00001, 10, "any");
  const formErr = h("div", { id: "form-error-box", "aria-live": "assertive" });
  const quoteBox = h("section", { id: "quote", "aria-live": "polite", "data-testid": "quote" });
  const quoteBtn = h("button", { type: "button", id: "quote-btn" }, "Get quote");
  const confirmBtn = h("button", { type: "submit", id: "confirm-btn", class: "primary", disabled: true }, "Confirm & pay");

  const form = h("form", { id: "new-job", novalidate: true },
    h("fieldset", {}, h("legend", {}, "1 · Data"),
      field("Dataset (CSV, Parquet or NPZ)", dataset, "Read on this node; encrypted before it leaves."),
      columnsMsg,
      field("Label column", label)),
    h("fieldset", {}, h("legend", {}, "2 · Model"),
      field("Bundled example", example),
      field("…or a model file (fedswarm-seq/1 spec or exported graph)", model, "JSON; used when no example is picked.")),
    h("fieldset", { class: "grid" }, h("legend", {}, "3 · Terms"),
      field("Rounds", rounds), field("Local epochs", epochs), field("Trainers", trainers),
      field("Price cap per unit (wei)", priceCap, "The most a trainer may ask per work unit."),
      field("Aggregation strategy", strategy)),
    h("details", { class: "advanced" }, h("summary", {}, "Advanced terms"),
      h("div", { class: "grid" },
        field("Standby trainers", standby), field("Batch size", batch), field("Learning rate", lr),
        field("Bid window (s)", bidWindow, "How long to collect trainers' bids."),
        field("Round deadline (s)", deadline, "A unit not delivered by then is reassigned."))),
    h("div", { class: "actions" }, quoteBtn, confirmBtn),
    formErr, quoteBox);
  page("New job", h("p", { class: "muted" }, "Upload, pick the label, set the terms, get a quote, then pay into escrow."), form);

  const showError = (msg) => fill(formErr, alertBox(msg, "form-error"));
  const invalidate = () => { confirmBtn.disabled = true; quoteBox.replaceChildren(); };
  for (const el of [rounds, epochs, trainers, priceCap, strategy, label, example, model, standby, batch, lr, bidWindow, deadline]) {
    el.addEventListener("change", invalidate);
  }
  model.addEventListener("change", () => { if (model.files.length) example.value = ""; });

  dataset.addEventListener("change", async () => {
    invalidate();
    formErr.replaceChildren();
    fill(label, h("option", { value: "" }, "reading columns…"));
    label.disabled = true;
    const file = dataset.files[0];
    if (!file) return;
    // A best guess for the example: a dataset named like a bundled one.
    const stem = file.name.replace(/\.[^.]+$/, "");
    if ([...example.options].some((o) => o.value === stem) && !model.files.length) example.value = stem;
    const fd = new FormData();
    fd.append("dataset", file);
    try {
      const res = await api("/api/v1/columns", { method: "POST", form: fd });
      fill(label, ...res.columns.map((c) => h("option", { value: c.name }, `${c.name} (${c.kind})`)));
      const guess = res.columns.find((c) => ["label", "y", "target", "class"].includes(c.name)) || res.columns[res.columns.length - 1];
      if (guess) label.value = guess.name;
      label.disabled = false;
      fill(columnsMsg, h("p", { class: "ok small", "data-testid": "columns-ok" },
        `${res.columns.length} columns detected: ${res.columns.map((c) => c.name).slice(0, 12).join(", ")}${res.columns.length > 12 ? ", …" : ""}`));
    } catch (exc) {
      fill(label, h("option", { value: "" }, "no columns"));
      fill(columnsMsg, alertBox(exc.message, "dataset-error"));
      dataset.setAttribute("aria-invalid", "true");
      return;
    }
    dataset.removeAttribute("aria-invalid");
  });

  const terms = () => {
    const t = { rounds: Number(rounds.value), local_epochs: Number(epochs.value), trainers: Number(trainers.value),
      strategy: strategy.value, label: label.value || null };
    // Sent as a string: pydantic reads it as an exact integer (JS numbers lose digits past 2^53).
    if (!/^[0-9]+$/.test(priceCap.value.trim())) throw new Error("price cap: give a whole number of wei, e.g. 10000000000000000");
    t.price_cap_wei = priceCap.value.trim();
    for (const [name, el] of [["rounds", rounds], ["local epochs", epochs], ["trainers", trainers],
      ["standby trainers", standby], ["batch size", batch]]) {
      if (el.value.trim() === "" || !Number.isInteger(Number(el.value)) || !el.checkValidity()) {
        el.setAttribute("aria-invalid", "true");
        throw new Error(`${name}: give a whole number between ${el.min} and ${el.max}`);
      }
      el.removeAttribute("aria-invalid");
    }
    for (const [name, el] of [["learning rate", lr], ["bid window", bidWindow], ["round deadline", deadline]]) {
      if (el.value.trim() === "" || !Number.isFinite(Number(el.value)) || !el.checkValidity()) {
        el.setAttribute("aria-invalid", "true");
        throw new Error(`${name}: give a number between ${el.min} and ${el.max}`);
      }
      el.removeAttribute("aria-invalid");
    }
    Object.assign(t, { standby: Number(standby.value), batch_size: Number(batch.value), lr: Number(lr.value),
      bid_window_s: Number(bidWindow.value), round_deadline_s: Number(deadline.value) });
    return t;
  };

  quoteBtn.addEventListener("click", async () => {
    formErr.replaceChildren();
    invalidate();
    let t;
    try { t = terms(); } catch (exc) { showError(exc.message); return; }
    quoteBtn.disabled = true;
    try {
      const q = await api("/api/v1/quote", { method: "POST", json: t });
      const rows = q.trainers.map((tr) => h("tr", {}, h("td", {}, h("code", { title: tr.peer_id }, short(tr.peer_id, 14))),
        h("td", {}, tr.standby ? "standby" : "selected"), h("td", {}, wei(tr.price_wei)), h("td", {}, wei(tr.price_wei * t.rounds))));
      fill(quoteBox, h("h2", {}, "Quote"),
        table("Trainers expected to be selected (the real selection uses signed bids, never dearer)",
          ["trainer", "role", "price per unit", `escrow for ${t.rounds} rounds`], rows, { "data-testid": "quote-table" }),
        h("p", { class: "total" }, "Total escrow: ", h("strong", { "data-testid": "quote-total" }, wei(q.total_wei))),
        q.ok ? null : alertBox(q.reason || "not enough trainers", "quote-error"));
      confirmBtn.disabled = !q.ok;
      if (q.ok) confirmBtn.focus();
    } catch (exc) { showError(exc.message); } finally { quoteBtn.disabled = false; }
  });

  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    formErr.replaceChildren();
    let t;
    try { t = terms(); } catch (exc) { showError(exc.message); return; }
    if (!dataset.files[0]) { showError("pick a dataset file first"); dataset.focus(); return; }
    if (!example.value && !model.files[0]) { showError("pick a bundled example or upload a model file"); return; }
    const fd = new FormData();
    fd.append("dataset", dataset.files[0]);
    if (example.value) fd.append("example", example.value); else fd.append("model", model.files[0]);
    fd.append("terms", JSON.stringify(t));
    confirmBtn.disabled = true;
    confirmBtn.textContent = "Submitting…";
    try {
      const res = await api("/api/v1/jobs", { method: "POST", form: fd });
      location.hash = `#/job/${encodeURIComponent(res.job_id)}`;
    } catch (exc) {
      showError(exc.message);
      confirmBtn.disabled = false;
    } finally { confirmBtn.textContent = "Confirm & pay"; }
  });

  // Loaded last: listeners above are attached before the first await, so nothing is missed.
  try {
    const ex = await api("/api/v1/examples");
    for (const e of ex.examples) example.append(h("option", { value: e.name }, e.name));
  } catch (exc) { fill(formErr, alertBox(exc.message, "form-error")); }
}

// --- Job ----------------------------------------------------------------------------------

const STEPS = ["prepared", "bidding", "escrowed", "rounds", "settling", "done"];
const STEP_OF = { submitted: 0, prepared: 1, bidding: 1, selected: 2, escrowed: 3, running: 3, finishing: 4, done: 6 };

function stepper(job) {
  const reached = STEP_OF[job.state];
  // failed/cancelled: mark the furthest step the job is known to have reached.
  const failedAt = reached !== undefined ? null
    : (job.rounds_detail || []).length || job.deposited_wei ? 3 : job.audit_topic ? 1 : 0;
  const items = STEPS.map((name, i) => {
    let label = name;
    if (name === "rounds") label = job.state === "running" || job.current_round ? `round ${Math.max(job.current_round, 1)} of ${job.rounds}` : `rounds (${job.rounds})`;
    let cls = "todo";
    if (failedAt !== null) cls = i < failedAt ? "done" : i === failedAt ? "failed" : "todo";
    else if (i < reached) cls = "done";
    else if (i === reached) cls = "active";
    return h("li", { class: cls, "aria-current": cls === "active" ? "step" : null }, h("span", { class: "dot", "aria-hidden": "true" }), label);
  });
  return h("ol", { class: "stepper", "aria-label": "Job progress", "data-testid": "stepper", "data-state": job.state }, items);
}

function jobPage(jobId) {
  const head = h("div");
  const steps = h("div");
  const chart = h("section", { "aria-labelledby": "chart-h" });
  const trainersBox = h("section");
  const resultBox = h("section", { "aria-labelledby": "result-h" });
  const auditBox = h("section", { "aria-labelledby": "audit-h" });
  const eventsBox = h("section");
  const err = h("div");
  page(`Job ${jobId}`, err, head, steps,
    h("h2", { id: "chart-h" }, "Validation per round"), chart,
    h("h2", { id: "result-h" }, "Result"), resultBox,
    h("h2", {}, "Trainers"), trainersBox,
    h("h2", { id: "audit-h" }, "Audit log"), auditBox, eventsBox);
  let last = null;
  let auditTimer = null;

  const render = (job) => {
    last = job;
    const cancellable = !["done", "failed", "cancelled"].includes(job.state);
    fill(head, h("dl", { class: "facts" },
      fact("State", h("span", { class: `state ${job.state}`, "data-testid": "job-state" }, job.state)),
      fact("Dataset", job.dataset || "—"), fact("Rounds", `${job.current_round} / ${job.rounds}`),
      fact("Escrow deposited", wei(job.deposited_wei)), fact("Paid to trainers", wei(job.paid_wei)),
      fact("Refund", refundInfo(job.escrow)),
      fact("Final accuracy", num(job.final_metrics && job.final_metrics.accuracy)),
      fact("Audit topic", job.audit_topic || "—")),
    job.error ? alertBox(job.error, "job-error") : null,
    cancellable ? h("button", { type: "button", id: "cancel-btn", onclick: () => cancel(jobId, err) }, "Cancel job") : null);
    fill(steps, stepper(job));
    fill(chart, roundsChart(job.rounds_detail || [], job.rounds));
    const rows = (job.trainers_detail || []).map((t) => h("tr", {},
      h("td", {}, h("code", { title: t.peer_id }, short(t.peer_id, 14))), h("td", {}, t.standby ? "standby" : "selected"),
      h("td", {}, String(t.units_assigned)), h("td", {}, String(t.units_committed)), h("td", {}, String(t.units_accepted)),
      h("td", {}, String(t.units_rejected)), h("td", {}, wei(t.price_wei)), h("td", {}, wei(t.paid_wei))));
    fill(trainersBox, table("Work units per trainer and what they were paid",
      ["trainer", "role", "assigned", "committed", "accepted", "rejected", "price/unit", "paid"], rows, { "data-testid": "job-trainers" }));
    if (job.state === "done" && job.result) {
      fill(resultBox, h("p", {},
        h("a", { class: "button primary", href: `/api/v1/jobs/${encodeURIComponent(jobId)}/result`, download: `${jobId}.safetensors`,
          id: "download-btn", "data-testid": "download" }, "Download result (.safetensors)")),
      h("p", { class: "small muted" }, "Decrypted by this node with your key. Ciphertext sha256 (as audited): ",
        h("code", { "data-testid": "result-sha256", class: "wrap" }, job.result.sha256)));
    } else fill(resultBox, h("p", { class: "muted" }, job.state === "failed" || job.state === "cancelled" ? "No result." : "Available when the job is done."));
    const evs = (job.events || []).slice(-30).reverse().map((e) => h("li", {}, h("time", {}, when(e.ts)), " ", e.msg || JSON.stringify(e)));
    fill(eventsBox, h("details", {}, h("summary", {}, `Node timeline (${(job.events || []).length} events)`), h("ul", { class: "events" }, evs)));
    if (job.audit_topic && !auditTimer) {
      auditTimer = setInterval(() => loadAudit(jobId, job.audit_topic, auditBox), 3000);
      onLeave(() => clearInterval(auditTimer));
      loadAudit(jobId, job.audit_topic, auditBox);
    }
  };

  const load = async () => {
    try { render(await api(`/api/v1/jobs/${encodeURIComponent(jobId)}`)); err.replaceChildren(); } catch (exc) { fill(err, alertBox(exc.message, "job-load-error")); }
  };
  load();
  // Live updates over server-sent events; EventSource reconnects by itself after a drop.
  const es = new EventSource(`/api/v1/jobs/${encodeURIComponent(jobId)}/events`);
  es.addEventListener("job", (ev) => { try { render(JSON.parse(ev.data)); } catch { /* a bad frame: wait for the next */ } });
  es.addEventListener("end", () => {
    es.close();
    if (last && last.audit_topic) setTimeout(() => loadAudit(jobId, last.audit_topic, auditBox), 1500);
    if (auditTimer) setTimeout(() => clearInterval(auditTimer), 8000);
  });
  onLeave(() => es.close());
}

function fact(k, v) { return h("div", {}, h("dt", {}, k), h("dd", {}, v)); }

// What comes back to the payer: escrow not reserved returns when the job closes; what stays
// reserved for trainers' receipts returns at the release time (after the settle and claim windows).
function refundInfo(esc) {
  if (!esc || !esc.job_key) return "—";
  const soFar = Number(esc.refunded_wei || 0) > 0 ? `${wei(esc.refunded_wei)} refunded` : "";
  if (esc.released) return h("span", { "data-testid": "refund" }, `${soFar || "nothing to refund"}; escrow released`);
  if (esc.refund_available_at) {
    return h("span", { "data-testid": "refund" }, `${soFar ? soFar + "; " : ""}the rest not paid returns from `,
      h("time", { "data-testid": "refund-at" }, when(esc.refund_available_at)));
  }
  return h("span", { "data-testid": "refund" }, "unpaid escrow returns after the job closes (settle + claim windows)");
}

async function cancel(jobId, err) {
  if (!confirm(`Cancel job ${jobId}? Unspent escrow is refunded.`)) return;
  try { await api(`/api/v1/jobs/${encodeURIComponent(jobId)}/cancel`, { method: "POST" }); } catch (exc) { fill(err, alertBox(exc.message, "cancel-error")); }
}

// What the job page says about a message whose signed envelope is not from the job's
// operator or trainers (the topic has no submit key: anyone can write to it).
const CHECK_LABEL = { ok: "signed", unsigned: "unsigned", bad_signature: "bad signature", stranger: "stranger", not_json: "not an envelope" };

async function loadAudit(jobId, topic, box) {
  try {
    const a = await api(`/api/v1/jobs/${encodeURIComponent(jobId)}/audit`);
    const status = a.verified
      ? h("p", { class: "ok", "data-testid": "audit-status", "data-verified": "true" }, `✔ chain verified: ${a.checked} messages, running hash ${short(a.running_hash || "", 16)}`)
      : h("p", { class: "error", "data-testid": "audit-status", "data-verified": "false" }, a.raw_count ? `✘ verification failed: ${a.reason}` : "no messages yet");
    const flagged = a.not_ok
      ? h("p", { class: "error", "data-testid": "audit-flagged", "data-count": String(a.not_ok) }, `⚠ ${a.not_ok} message(s) not signed by this job's trainers or operator: marked below, do not trust their content`)
      : null;
    const rows = a.messages.slice().reverse().map((m) => {
      const b = m.body || {};
      const c = m.check || { status: "ok" };
      const rest = Object.entries(b).filter(([k]) => k !== "state" && k !== "job_id" && k !== "job" && k !== "sig").map(([k, v]) => `${k}=${typeof v === "object" ? JSON.stringify(v) : v}`).join(" ");
      const who = c.status === "ok"
        ? h("td", { title: c.signer || "" }, h("span", { class: "ok" }, "✔ "), short(c.signer || "", 8))
        : h("td", { title: c.reason || "" }, h("strong", {}, `⚠ ${CHECK_LABEL[c.status] || c.status}`));
      return h("tr", { "data-check": c.status, class: c.status === "ok" ? null : "untrusted" },
        h("td", {}, String(m.sequence)), who, h("td", {}, b.state || "—"), h("td", { class: "wrap" }, rest));
    });
    fill(box, status, flagged, table(`Messages on topic ${topic}, newest first`, ["seq", "signer", "state", "details"], rows, { "data-testid": "audit-table", class: "compact" }));
  } catch (exc) {
    fill(box, h("p", { class: "error", "data-testid": "audit-status", "data-verified": "false" }, `audit log unavailable: ${exc.message}`));
  }
}

// --- History ------------------------------------------------------------------------------

function historyPage() {
  const box = h("div");
  const err = h("div");
  page("History", err, box);
  every(5000, async () => {
    try {
      const res = await api("/api/v1/jobs");
      const rows = res.jobs.map((j) => h("tr", {},
        h("td", {}, h("a", { href: `#/job/${encodeURIComponent(j.job_id)}` }, j.job_id)),
        h("td", {}, h("span", { class: `state ${j.state}` }, j.state)), h("td", {}, j.dataset || "—"),
        h("td", {}, `${j.current_round} / ${j.rounds}`), h("td", {}, wei(j.deposited_wei)),
        h("td", {}, num(j.final_accuracy)), h("td", {}, when(j.created))));
      fill(box, table("All jobs of this client, newest first",
        ["job", "state", "dataset", "rounds", "cost (escrow)", "final accuracy", "created"], rows, { "data-testid": "history-table" }));
      err.replaceChildren();
    } catch (exc) { fill(err, alertBox(exc.message, "history-error")); }
  });
}

// --- Settings -----------------------------------------------------------------------------

async function settingsPage() {
  const info = h("div");
  const tokenIn = h("input", { type: "password", id: "api-token", name: "api-token", autocomplete: "off", value: getToken(),
    "aria-describedby": "api-token-hint" });
  const saved = h("p", { class: "small", "aria-live": "polite" });
  const form = h("form", { id: "token-form" },
    field("API token", tokenIn, "Kept in this browser (localStorage) and sent as a Bearer token with every call; needed when the node is bound publicly or started with a token."),
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
    const status = await api("/status");
    let node = null;
    if (uiInfo.role === "client") node = await api("/api/v1/node");
    fill(info, h("h2", {}, "This node"), h("dl", { class: "facts", "data-testid": "node-facts" },
      fact("Role", status.role), fact("Peer ID", h("code", { class: "wrap" }, status.peer_id)),
      fact("Wallet address", h("code", { class: "wrap", "data-testid": "wallet" }, status.address)),
      node ? fact("Wallet balance", h("span", { "data-testid": "balance" }, wei(node.balance_wei))) : null,
      node ? fact("Network", node.network) : null,
      node ? fact("Backend", `${node.ledger} ledger · ${node.storage} storage`) : null,
      node ? fact("Escrow contract", h("code", { class: "wrap" }, node.contract || "—")) : null,
      node ? fact("API token required", node.api_token_required ? "yes" : "no (loopback only)") : null,
      fact("Version", status.version), fact("Uptime", `${status.uptime_s} s`),
      fact("Listening on", h("code", { class: "wrap" }, (status.addrs || []).join(" ")))));
  } catch (exc) { fill(info, alertBox(exc.message, "settings-error")); }
}

// --- Router -------------------------------------------------------------------------------

function route() {
  for (const fn of cleanup) fn();
  cleanup = [];
  const [, name = "network", arg] = (location.hash || "#/network").split("/");
  for (const a of document.querySelectorAll("#nav a")) {
    if (a.dataset.page === name || (name === "job" && a.dataset.page === "history")) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  const clientOnly = ["new", "history", "job"];
  if (clientOnly.includes(name) && uiInfo.role !== "client") {
    page("Not available", h("p", {}, `This is a ${uiInfo.role} node: jobs are submitted from a client node's UI.`));
  } else if (name === "new") newJobPage();
  else if (name === "job" && arg) jobPage(decodeURIComponent(arg));
  else if (name === "history") historyPage();
  else if (name === "settings") settingsPage();
  else networkPage();
  // Move focus to the new page so keyboard and screen-reader users land on its heading.
  if (document.activeElement && document.activeElement.closest("#nav")) view.focus({ preventScroll: true });
}

async function start() {
  await openSession();  // with a stored token: the session cookie for live updates and downloads
  try { uiInfo = await api("/api/v1/ui"); } catch { /* older node: assume a client */ }
  for (const li of document.querySelectorAll("[data-client]")) li.hidden = uiInfo.role !== "client";
  document.getElementById("node-badge").textContent = `${uiInfo.role} node`;
  window.addEventListener("hashchange", route);
  route();
}

start();
