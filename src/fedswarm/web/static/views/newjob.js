// New job: data (columns peeked locally for CSV), model (an example, a spec, or an exported
// graph with its weights file), terms, a quote, then one upload with a progress bar.
// Signed in with a wallet: the submission carries the wallet-derived result key, and the job
// waits for the wallet's payment on its page. `cloneOf` prefills the terms from an old job.
import { api, getWalletSession, upload } from "../api.js";
import { alertBox, field, fill, h, short, table } from "../dom.js";
import { peekColumns, peekable } from "../csv.js";
import { amount, amountText, announce, state } from "../state.js";
import { formatAmount, parseAmount } from "../units.js";
import { resultKey } from "./wallet.js";

const SMALL_UPLOAD = 16 << 20;  // a non-CSV file this small may be sent once more to read its columns
const STRATEGIES = ["fedavg", "fedprox", "fedavgm", "fedadam", "fedyogi", "clipped_fedavg", "median", "trimmed_mean", "krum", "multikrum"];
const INTS = [["rounds", "Rounds", 3, 1, 1000], ["local_epochs", "Local epochs", 1, 1, 100], ["trainers", "Trainers", 3, 1, 256],
  ["standby", "Standby trainers", 1, 0, 256], ["batch_size", "Batch size", 32, 1, 65536],
  ["settle_window_s", "Settle window (s)", 3600, 10, 2592000], ["claim_window_s", "Claim window (s)", 86400, 10, 2592000]];
const HINTS = { settle_window_s: "How long after the job closes units may still be settled.",
  claim_window_s: "Then how long trainers may claim receipts; what is not paid returns to you after both." };
const FLOATS = [["lr", "Learning rate", 0.01, 0.00001, 10, "any"], ["bid_window_s", "Bid window (s)", 3, 0.5, 600, 0.5],
  ["round_deadline_s", "Round deadline (s)", 120, 5, 86400, 1]];
const MiB = (n) => `${(n / (1 << 20)).toFixed(1)} MiB`;

function inputs() {
  const el = {};
  for (const [id, , value, min, max] of INTS) el[id] = h("input", { type: "number", id, name: id, value, min, max, step: 1, required: true, inputmode: "numeric" });
  for (const [id, , value, min, max, step] of FLOATS) el[id] = h("input", { type: "number", id, name: id, value, min, max, step, required: true, inputmode: "decimal" });
  // In coins (ETH / HBAR), converted exactly to the chain's smallest unit; default 0.01.
  el.price_cap_wei = h("input", { type: "text", id: "price_cap_wei", name: "price_cap_wei", value: "0.01",
    inputmode: "decimal", required: true, "aria-describedby": "price_cap_wei-hint" });
  el.strategy = h("select", { id: "strategy", name: "strategy" }, STRATEGIES.map((n) => h("option", { value: n }, n)));
  el.label = h("input", { type: "text", id: "label", name: "label", list: "label-columns", autocomplete: "off", placeholder: "pick a dataset first" });
  return el;
}

// The terms object from the form; throws one line naming the field at fault.
function readTerms(el) {
  const t = { strategy: el.strategy.value, label: el.label.value.trim() || null };
  try {
    // a string: pydantic reads it as an exact integer (JS numbers lose digits past 2^53)
    t.price_cap_wei = parseAmount(el.price_cap_wei.value, state.chain.amount_decimals ?? 18);
    el.price_cap_wei.removeAttribute("aria-invalid");
  } catch (exc) {
    el.price_cap_wei.setAttribute("aria-invalid", "true");
    throw new Error(`price cap: ${exc.message}`);
  }
  for (const [id, name] of INTS) {
    const v = el[id];
    if (v.value.trim() === "" || !Number.isInteger(Number(v.value)) || !v.checkValidity()) {
      v.setAttribute("aria-invalid", "true");
      throw new Error(`${name.toLowerCase().replace(/ \(s\)$/, "")}: give a whole number between ${v.min} and ${v.max}`);
    }
    v.removeAttribute("aria-invalid");
    t[id] = Number(v.value);
  }
  for (const [id, name] of FLOATS) {
    const v = el[id];
    if (v.value.trim() === "" || !Number.isFinite(Number(v.value)) || !v.checkValidity()) {
      v.setAttribute("aria-invalid", "true");
      throw new Error(`${name.toLowerCase().replace(/ \(s\)$/, "")}: give a number between ${v.min} and ${v.max}`);
    }
    v.removeAttribute("aria-invalid");
    t[id] = Number(v.value);
  }
  return t;
}

export async function newJobPage({ page, arg }) {
  const el = inputs();
  const dataset = h("input", { type: "file", id: "dataset", name: "dataset", required: true,
    accept: ".csv,.tsv,.parquet,.npz,text/csv", "aria-describedby": "dataset-hint" });
  const columns = h("datalist", { id: "label-columns" });
  const columnsMsg = h("div", { id: "columns-msg" });
  const model = h("input", { type: "file", id: "model", name: "model", accept: ".json,application/json", "aria-describedby": "model-hint" });
  const weights = h("input", { type: "file", id: "weights", name: "weights", accept: ".safetensors", "aria-describedby": "weights-hint" });
  const example = h("select", { id: "example", name: "example" }, h("option", { value: "" }, "— use the uploaded model file —"));
  const capShown = h("span", { "data-testid": "price-cap-shown" });
  const formErr = h("div", { id: "form-error-box" });
  const quoteBox = h("section", { id: "quote", "data-testid": "quote" });
  const progress = h("progress", { id: "upload-progress", max: 100, value: 0, hidden: true, "aria-label": "Upload progress" });
  const progressText = h("span", { class: "small muted", "data-testid": "upload-progress-text" });
  const quoteBtn = h("button", { type: "button", id: "quote-btn" }, "Get quote");
  const walletMode = Boolean(getWalletSession());
  const submitLabel = walletMode ? "Submit (pay from wallet after bids)" : "Confirm & pay";
  const confirmBtn = h("button", { type: "submit", id: "confirm-btn", class: "primary", disabled: true }, submitLabel);

  const form = h("form", { id: "new-job", novalidate: true },
    h("fieldset", {}, h("legend", {}, "1 · Data"),
      h("p", { class: "notice", "data-testid": "data-notice" }, h("strong", {}, "Before you upload: "),
        "the dataset is encrypted in storage, but each trainer decrypts and sees the rows of the chunks it trains on. "
        + "Upload only data you accept to share with the trainers selected for this job."),
      field("Dataset (CSV, Parquet or NPZ)", dataset, "Uploaded once, when you submit; CSV columns are read here, in your browser."),
      columnsMsg, field("Label column", el.label), columns),
    h("fieldset", {}, h("legend", {}, "2 · Model"),
      field("Bundled example", example),
      field("…or a model file (fedswarm-seq/1 spec or exported graph)", model, "JSON; used when no example is picked."),
      field("Initial weights of an exported graph (.safetensors)", weights, "Needed with a graph model file; a spec needs none.")),
    h("fieldset", { class: "grid" }, h("legend", {}, "3 · Terms"),
      ...INTS.slice(0, 3).map(([id, name]) => field(name, el[id])),
      h("div", { class: "field" }, h("label", { for: "price_cap_wei" }, `Price cap per unit (${state.chain.currency || "ETH"})`), el.price_cap_wei,
        h("small", { id: "price_cap_wei-hint", class: "muted" }, "The most a trainer may ask per work unit: ", capShown)),
      field("Aggregation strategy", el.strategy)),
    h("details", { class: "advanced" }, h("summary", {}, "Advanced terms"),
      h("div", { class: "grid" }, ...INTS.slice(3).map(([id, name]) => field(name, el[id], HINTS[id])),
        ...FLOATS.map(([id, name]) => field(name, el[id])))),
    h("div", { class: "actions" }, quoteBtn, confirmBtn, progress, progressText),
    formErr, quoteBox);
  const intro = walletMode
    ? "Pick the data, model and terms, get a quote, submit; after the trainers bid you pay the escrow from your wallet."
    : "Upload, pick the label, set the terms, get a quote, then pay into escrow from this node's wallet.";
  page(arg ? `New job (a copy of ${arg})` : "New job", h("p", { class: "muted" }, intro), form);

  const showError = (msg) => fill(formErr, alertBox(msg, "form-error"));
  const showCap = () => {
    try { capShown.textContent = `${parseAmount(el.price_cap_wei.value, state.chain.amount_decimals ?? 18)} in the chain's smallest unit`; } catch { capShown.textContent = "—"; }
  };
  const invalidate = () => { confirmBtn.disabled = true; quoteBox.replaceChildren(); };
  for (const x of [...Object.values(el), example, model, weights]) x.addEventListener("change", invalidate);
  el.price_cap_wei.addEventListener("input", showCap);
  model.addEventListener("change", () => { if (model.files.length) example.value = ""; });

  dataset.addEventListener("change", async () => {
    invalidate();
    formErr.replaceChildren();
    columnsMsg.replaceChildren();
    columns.replaceChildren();
    const file = dataset.files[0];
    if (!file) return;
    const stem = file.name.replace(/\.[^.]+$/, "");
    if ([...example.options].some((o) => o.value === stem) && !model.files.length) example.value = stem;
    let cols = null;
    try {
      if (peekable(file)) cols = await peekColumns(file);
      else if (file.size <= SMALL_UPLOAD) {
        const fd = new FormData();
        fd.append("dataset", file);
        cols = (await api("/api/v1/columns", { method: "POST", form: fd })).columns;
      }
    } catch (exc) {
      fill(columnsMsg, alertBox(exc.message, "dataset-error"));
      dataset.setAttribute("aria-invalid", "true");
      return;
    }
    dataset.removeAttribute("aria-invalid");
    if (!cols) {
      fill(columnsMsg, h("p", { class: "muted small" }, `${MiB(file.size)}: type the label column's name (its columns are read on the node at submission).`));
      return;
    }
    fill(columns, ...cols.map((c) => h("option", { value: c.name }, `${c.name} (${c.kind})`)));
    const guess = cols.find((c) => ["label", "y", "target", "class"].includes(c.name)) || cols[cols.length - 1];
    if (guess && !el.label.value) el.label.value = guess.name;
    el.label.placeholder = "a column name";
    fill(columnsMsg, h("p", { class: "ok small", "data-testid": "columns-ok" },
      `${cols.length} columns detected: ${cols.map((c) => c.name).slice(0, 12).join(", ")}${cols.length > 12 ? ", …" : ""}`));
  });

  quoteBtn.addEventListener("click", async () => {
    formErr.replaceChildren();
    invalidate();
    let t;
    try { t = readTerms(el); } catch (exc) { showError(exc.message); return; }
    quoteBtn.disabled = true;
    try {
      const q = await api("/api/v1/quote", { method: "POST", json: t });
      const rows = q.trainers.map((tr) => h("tr", {}, h("td", {}, h("code", { title: tr.peer_id }, short(tr.peer_id, 14))),
        h("td", {}, tr.standby ? "standby" : "selected"), h("td", {}, amount(tr.price_wei)),
        h("td", {}, amount((BigInt(tr.price_wei) * BigInt(t.rounds)).toString()))));
      fill(quoteBox, h("h2", {}, "Quote"),
        table("Trainers expected to be selected (the real selection uses signed bids, never dearer)",
          ["trainer", "role", "price per unit", `escrow for ${t.rounds} rounds`], rows, { "data-testid": "quote-table" }),
        h("p", { class: "total" }, "Total escrow: ", amount(q.total_wei, "quote-total")),
        q.ok ? null : alertBox(q.reason || "not enough trainers", "quote-error"));
      confirmBtn.disabled = !q.ok;
      announce(q.ok ? `Quote: ${amountText(q.total_wei)} in escrow` : "No quote");
      if (q.ok) confirmBtn.focus();
    } catch (exc) { showError(exc.message); } finally { quoteBtn.disabled = false; }
  });

  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    formErr.replaceChildren();
    let t;
    try { t = readTerms(el); } catch (exc) { showError(exc.message); return; }
    if (!dataset.files[0]) { showError("pick a dataset file first"); dataset.focus(); return; }
    if (!example.value && !model.files[0]) { showError("pick a bundled example or upload a model file"); return; }
    const fd = new FormData();
    fd.append("dataset", dataset.files[0]);
    if (example.value) fd.append("example", example.value); else fd.append("model", model.files[0]);
    if (!example.value && weights.files[0]) fd.append("weights", weights.files[0]);
    fd.append("terms", JSON.stringify(t));
    confirmBtn.disabled = true;
    try {
      if (getWalletSession()) {
        // The result is sealed to this key; the wallet signs its fixed message (once per visit).
        confirmBtn.textContent = "Sign the result key in your wallet…";
        const key = await resultKey();
        fd.append("result_public_key", key.publicHex);
        fd.append("result_key_origin", location.origin);
      }
      confirmBtn.textContent = "Uploading…";
      progress.hidden = false;
      const res = await upload("/api/v1/jobs", fd, (sent, total) => {
        progress.value = Math.round((100 * sent) / total);
        progressText.textContent = `${progress.value} % (${MiB(sent)} of ${MiB(total)})`;
      });
      progressText.textContent = "uploaded; the node checks the model…";
      announce(`Job ${res.job_id} submitted`);
      location.hash = `#/job/${encodeURIComponent(res.job_id)}`;
    } catch (exc) {
      showError(exc.message);
      progress.hidden = true;
      progressText.textContent = "";
      confirmBtn.disabled = false;
    } finally { confirmBtn.textContent = submitLabel; }
  });

  showCap();
  // Loaded last: listeners above are attached before the first await, so nothing is missed.
  try {
    const ex = await api("/api/v1/examples");
    for (const e of ex.examples) example.append(h("option", { value: e.name }, e.name));
  } catch (exc) { showError(exc.message); }
  if (arg) await prefill(arg, el, example, showError, showCap);
}

// Clone: the terms of job `jobId` into the form (files cannot be prefilled: pick them again).
async function prefill(jobId, el, example, showError, showCap) {
  try {
    const job = await api(`/api/v1/jobs/${encodeURIComponent(jobId)}`);
    const t = job.terms || {};
    for (const [k, input] of Object.entries(el)) {
      if (t[k] !== undefined && t[k] !== null) input.value = String(t[k]);
    }
    const dec = state.chain.amount_decimals ?? 18;
    if (t.price_cap_wei !== undefined) el.price_cap_wei.value = formatAmount(t.price_cap_wei, { decimals: dec, digits: dec, plain: true });
    if (t.example && [...example.options].some((o) => o.value === t.example)) example.value = t.example;
    showCap();
    fill(document.getElementById("columns-msg"), h("p", { class: "muted small", "data-testid": "clone-note" },
      `Terms copied from ${jobId} (dataset ${job.dataset || "—"}): pick the dataset and model files again.`));
  } catch (exc) { showError(`cannot copy ${jobId}: ${exc.message}`); }
}
