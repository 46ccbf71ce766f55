// The job page's money and result panels: paying a wallet job's escrow after the bids, and
// downloading the result (a wallet job: fetched from the store, checked and decrypted here).
import { api, auth, getBase } from "../api.js";
import { alertBox, fill, h, short, table, when } from "../dom.js";
import { amount, amountText, announce, state, txLink } from "../state.js";
import { openEnvelope, sha256Hex } from "../resultkey.js";
import * as wallet from "../wallet.js";
import { ensureChain, resultKey } from "./wallet.js";

export const PAID_KEY = "fedswarm.paid:";
const jobPath = (jobId) => `/api/v1/jobs/${encodeURIComponent(jobId)}`;

function busy(btn, text, fn) {
  return async () => {
    const label = btn.textContent;
    btn.disabled = true;
    btn.textContent = text;
    try { await fn(); } finally { btn.disabled = false; btn.textContent = label; }
  };
}

// The quote the trainers' bids made, and the button that sends the funding call from the wallet.
export function payPanel(job) {
  const f = job.funding;
  const box = h("section", { class: "pay", "data-testid": "pay" });
  if (!f) return fill(box, h("p", { class: "muted" }, "Waiting for the node's funding call…"));
  const err = h("div");
  const sent = h("p", { "data-testid": "pay-status" });
  const rows = (f.trainers || []).map((t) => h("tr", {},
    h("td", {}, h("code", { title: t.peer_id || t.address }, short(t.peer_id || t.address, 14))),
    h("td", {}, t.standby ? "standby" : "selected"), h("td", {}, amount(t.price_wei)), h("td", {}, String(t.units ?? "—"))));
  const payBtn = h("button", { type: "button", class: "primary", id: "pay-btn" }, "Pay from wallet");
  const previous = sessionStorage.getItem(PAID_KEY + job.job_id);
  if (previous) fill(sent, "Payment sent: ", txLink(previous, "pay-tx"), " — waiting for the node to see it on chain.");
  payBtn.addEventListener("click", busy(payBtn, "Confirm in your wallet…", async () => {
    err.replaceChildren();
    try {
      await ensureChain();
      const w = wallet.connected();
      if (f.payer && w.address.toLowerCase() !== f.payer.toLowerCase()) {
        throw new Error(`the quote is for ${f.payer}: switch your wallet to that account`);
      }
      const hash = await wallet.sendTransaction({ to: f.to, data: f.data, value: f.value });
      sessionStorage.setItem(PAID_KEY + job.job_id, hash);
      fill(sent, "Payment sent: ", txLink(hash, "pay-tx"), " — waiting for the node to see it on chain.");
      announce("Payment sent");
      // A hint only: the node reads the chain itself.
      api(`${jobPath(job.job_id)}/funding`, { method: "POST", json: { tx_hash: hash } }).catch(() => {});
    } catch (exc) { fill(err, alertBox(exc.message, "pay-error")); }
  }));
  return fill(box, h("h2", { id: "pay-h" }, "Pay the escrow"),
    h("p", {}, "The trainers below bid for this job. Paying puts the total in the escrow contract with you as the payer: "
      + "trainers are paid per accepted unit, the rest returns to your wallet."),
    table("Trainers chosen from the signed bids", ["trainer", "role", "price per unit", "units"], rows, { "data-testid": "pay-table" }),
    h("p", { class: "total" }, "Total: ", amount(f.total_wei, "pay-total"),
      f.expires_at ? h("span", { class: "muted small" }, ` · pay before ${when(f.expires_at)}`) : null),
    h("div", { class: "actions" }, payBtn), sent, err);
}

const TRUST = "What your delegate sees: it aggregates the trainers' updates, so it computes every round's model, "
  + "including the final one, while the job runs. At completion it seals the final weights to your wallet's key, "
  + "keeps no plaintext copy and serves only the sealed file: only this browser, with your wallet's signature, opens it.";

function save(bytes, name) {
  const url = URL.createObjectURL(new Blob([bytes], { type: "application/octet-stream" }));
  const a = h("a", { href: url, download: name, hidden: true });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 60000);
}

async function fetchBytes(url, init) {
  let resp;
  try { resp = await fetch(url, { cache: "no-store", ...init }); } catch { throw new Error("the download failed: the store or the node is not answering"); }
  if (!resp.ok) {
    let msg = `${resp.status} ${resp.statusText}`;
    try { const d = JSON.parse(await resp.text()); msg = d.error || d.detail || msg; } catch { /* not JSON */ }
    throw new Error(`the download failed: ${msg}`);
  }
  return new Uint8Array(await resp.arrayBuffer());
}

// Wallet job: link → ciphertext (hash checked) → wallet key → plaintext (hash checked) → file.
async function decryptAndSave(job, status) {
  const r = job.result;
  if (r.key_origin && r.key_origin !== location.origin) {
    throw new Error(`this result is sealed to the key made on ${r.key_origin}: open the UI there to decrypt it`);
  }
  const link = await api(`${jobPath(job.job_id)}/result/link`);
  status.textContent = "downloading the sealed result…";
  const sealed = await fetchBytes(link.url, { credentials: "omit" });
  const got = await sha256Hex(sealed);
  if (got !== (link.sha256 || r.sha256) || got !== r.sha256) throw new Error(`the downloaded file's sha256 ${got} is not the one recorded on chain (${r.sha256})`);
  status.textContent = "sign the result key message in your wallet…";
  const key = await resultKey();
  const plain = await openEnvelope(sealed, key, job.job_id, (i, n) => { status.textContent = `decrypting ${i}/${n}…`; });
  const plainSha = await sha256Hex(plain);
  const want = link.plain_sha256 || r.plain_sha256;
  if (want && plainSha !== want) throw new Error(`the decrypted file's sha256 ${plainSha} is not the expected ${want}`);
  save(plain, `${job.job_id}.safetensors`);
  fill(status, "✔ decrypted in this browser; sha256 ", h("code", { class: "wrap", "data-testid": "result-plain-sha256" }, plainSha));
  announce("Result decrypted and saved");
}

// The node decrypts (its own jobs): fetched with the page's credentials so errors show.
async function downloadPlain(job, status) {
  const path = `${jobPath(job.job_id)}/result`;
  const { headers, credentials } = auth(path);
  const data = await fetchBytes(getBase() + path, { headers, credentials });
  save(data, `${job.job_id}.safetensors`);
  status.textContent = `saved ${job.job_id}.safetensors (${data.length} bytes)`;
  announce("Result downloaded");
}

export function resultPanel(job) {
  const r = job.result;
  const box = h("div", { "data-testid": "result-box" });
  const wrapped = r && r.envelope === "fedswarm-wallet-v1";
  const trust = h("p", { class: "notice small", "data-testid": "trust-notice" }, TRUST);
  if (job.state !== "done" || !r) {
    const msg = job.state === "failed" || job.state === "cancelled" ? "No result." : "Available when the job is done.";
    return fill(box, h("p", { class: "muted" }, msg), job.owner && job.owner !== "node" ? trust : null);
  }
  const status = h("p", { class: "small", "data-testid": "download-status" });
  const err = h("div");
  const btn = h("button", { type: "button", class: "primary", id: "download-btn", "data-testid": "download" },
    wrapped ? "Download and decrypt (.safetensors)" : "Download result (.safetensors)");
  btn.addEventListener("click", busy(btn, wrapped ? "Decrypting…" : "Downloading…", async () => {
    err.replaceChildren();
    status.textContent = "";
    try { await (wrapped ? decryptAndSave(job, status) : downloadPlain(job, status)); } catch (exc) {
      status.textContent = "";
      fill(err, alertBox(exc.message, "download-error"));
    }
  }));
  return fill(box, h("p", {}, btn), status, err,
    h("p", { class: "small muted" }, wrapped ? "Sealed to your wallet's key. Ciphertext sha256 (on chain): "
      : "Decrypted by this node with its key. Ciphertext sha256 (as audited): ",
    h("code", { "data-testid": "result-sha256", class: "wrap" }, r.sha256)),
    wrapped ? trust : null);
}

// The escrow pays refunds the way it pays trainers: credited to the payer inside the contract,
// withdrawn by the payer (withdraw() sends everything credited, for every job).
const PENDING = "0x5eebea20";  // pending(address)
const WITHDRAW = "0x3ccfd60b";  // withdraw()

export function withdrawPanel(job) {
  const box = h("div", { class: "withdraw", "data-testid": "withdraw" });
  const contract = (job.funding && job.funding.to) || state.chain.contract;
  const w = wallet.connected();
  if (!contract || !w || !job.owner || w.address.toLowerCase() !== job.owner.toLowerCase()) return box;
  const line = h("p", { "data-testid": "withdraw-status" }, "checking the escrow for money credited to your wallet…");
  const err = h("div");
  const btn = h("button", { type: "button", id: "withdraw-btn", hidden: true }, "Withdraw to wallet");
  const check = async () => {
    const raw = await wallet.call(contract, PENDING + w.address.slice(2).toLowerCase().padStart(64, "0"));
    const credited = BigInt(raw || "0x0");
    btn.hidden = credited === 0n;
    line.textContent = credited === 0n ? "Nothing credited to your wallet in the escrow."
      : `${amountText(credited.toString())} credited to your wallet in the escrow (refunds of your jobs): withdraw it.`;
  };
  btn.addEventListener("click", busy(btn, "Confirm in your wallet…", async () => {
    err.replaceChildren();
    try {
      await ensureChain();
      const hash = await wallet.sendTransaction({ to: contract, data: WITHDRAW, value: "0" });
      fill(line, "Withdrawal sent: ", txLink(hash, "withdraw-tx"));
      await wallet.waitReceipt(hash);
      await check();
      announce("Refund withdrawn to your wallet");
    } catch (exc) { fill(err, alertBox(exc.message, "withdraw-error")); }
  }));
  check().catch((exc) => fill(err, alertBox(exc.message, "withdraw-error")));
  return fill(box, line, btn, err);
}
