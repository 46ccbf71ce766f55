// Pieces of the job page that are pure functions of a job: the stepper, timing, per-trainer
// statistics, the refund line and the audit table.
import { api } from "../api.js";
import { fill, h, num, short, table, when } from "../dom.js";
import { amount, amountText, rateText, txLink } from "../state.js";

const STEPS = ["prepared", "bidding", "paid", "rounds", "settling", "done"];
const STEP_OF = { submitted: 0, prepared: 1, bidding: 1, selected: 2, "awaiting-payment": 2, escrowed: 3, running: 3, finishing: 4, done: 6 };

// The 1-based round a running job is in (current_round is the 0-based index of the round in
// progress, and equals `rounds` once every round is done).
export const roundNumber = (job) => Math.min(job.current_round + 1, job.rounds);

export function stepper(job) {
  const reached = STEP_OF[job.state];
  // failed/cancelled: mark the furthest step the job is known to have reached.
  const failedAt = reached !== undefined ? null
    : (job.rounds_detail || []).length || Number(job.deposited_wei) ? 3 : job.audit_topic ? 1 : 0;
  const items = STEPS.map((name, i) => {
    let label = name;
    if (name === "paid") label = job.state === "awaiting-payment" ? "awaiting payment" : "escrow paid";
    if (name === "rounds") label = job.state === "running" ? `round ${roundNumber(job)} of ${job.rounds}` : `rounds (${job.rounds})`;
    let cls = "todo";
    if (failedAt !== null) cls = i < failedAt ? "done" : i === failedAt ? "failed" : "todo";
    else if (i < reached) cls = "done";
    else if (i === reached) cls = "active";
    return h("li", { class: cls, "aria-current": cls === "active" ? "step" : null }, h("span", { class: "dot", "aria-hidden": "true" }), label);
  });
  return h("ol", { class: "stepper", "aria-label": "Job progress", "data-testid": "stepper", "data-state": job.state }, items);
}

// Seconds per settled round and the time the remaining rounds should take at that pace.
export function timing(job) {
  const done = (job.rounds_detail || []).filter((r) => r.state === "settled" && r.seconds !== null && r.seconds !== undefined);
  const avg = done.length ? done.reduce((a, r) => a + Number(r.seconds), 0) / done.length : null;
  const left = Math.max(0, job.rounds - done.length);
  const running = job.state === "running";
  return { avg, eta: running && avg !== null ? avg * left : null, done: done.length };
}

export function timingText(job) {
  const t = timing(job);
  if (job.state === "done") return t.avg === null ? "—" : `finished; ${num(t.avg, 1)} s per round`;
  if (t.eta === null) return job.state === "running" ? "after the first round" : "—";
  return `about ${Math.round(t.eta)} s left (${num(t.avg, 1)} s per round)`;
}

// Per trainer: work units, samples and training loss of its last delivered unit, money.
export function trainerRows(job) {
  const last = {};
  for (const u of job.units || []) {
    if (u.train_loss === null && !u.num_samples) continue;
    const prev = last[u.trainer_peer];
    if (!prev || u.round >= prev.round) last[u.trainer_peer] = u;
  }
  return (job.trainers_detail || []).map((t) => {
    const u = last[t.peer_id];
    return h("tr", { "data-peer": t.peer_id },
      h("td", {}, h("code", { title: t.peer_id }, short(t.peer_id, 14))), h("td", {}, t.standby ? "standby" : "selected"),
      h("td", {}, String(t.units_assigned)), h("td", {}, String(t.units_committed)), h("td", {}, String(t.units_accepted)),
      h("td", {}, String(t.units_rejected)),
      h("td", { "data-testid": "trainer-samples" }, u ? String(u.num_samples) : "—"),
      h("td", { "data-testid": "trainer-loss" }, u ? `${num(u.train_loss)} (round ${u.round + 1})` : "—"),
      h("td", { "data-testid": "trainer-sees-rate" }, rateText(t.client_rejection_rate, t.client_units_judged)),
      h("td", {}, amount(t.price_wei)), h("td", {}, amount(t.paid_wei)));
  });
}

export const TRAINER_HEADERS = ["trainer", "role", "assigned", "delivered", "accepted", "rejected", "samples", "train loss",
  "your rejection rate as it saw it", "price/unit", "paid"];

// The job's operator as trainers see it on chain: above the trainers' limit (50 % of at least
// 20 units by default) they stop bidding, so a job with no bids may be explained here.
export function operatorRecord(job) {
  const r = job.operator_record;
  if (!r) return "—";
  return h("span", { "data-testid": "operator-record" }, rateText(r.rejection_rate, r.units_judged),
    r.operator ? h("span", { class: "muted" }, " · ", h("code", {}, short(r.operator, 12))) : "");
}

// What comes back to the payer and when: the node's `refund` block (amount refunded so far,
// when the reservations were released or may be, the last refunding transaction).
export function refundInfo(job) {
  const esc = job.escrow || {};
  const r = job.refund || { wei: esc.refunded_wei, released_at: null, available_at: esc.refund_available_at, tx: null };
  if (!job.refund && !esc.job_key) return "—";
  const parts = [];
  if (Number(r.wei || 0) > 0) parts.push(h("span", {}, amount(r.wei, "refund-amount"), " refunded"));
  const sep = () => (parts.length ? "; " : "");
  if (r.released_at) parts.push(h("span", {}, `${sep()}reservations released `, h("time", { "data-testid": "refund-at" }, when(r.released_at))));
  else if (r.available_at) {
    parts.push(h("span", {}, `${sep()}what trainers were not paid returns from `, h("time", { "data-testid": "refund-at" }, when(r.available_at))));
  } else if (!parts.length) parts.push("unpaid escrow returns after the job closes (settle + claim windows)");
  if (r.tx) parts.push(h("span", {}, " · ", txLink(r.tx, "refund-tx")));
  return h("span", { "data-testid": "refund" }, parts);
}

export const refundText = (job) => (job.refund && Number(job.refund.wei) > 0 ? amountText(job.refund.wei) : "");

// What the job page says about a message whose signed envelope is not from the job's
// operator or trainers (the topic has no submit key: anyone can write to it).
const CHECK_LABEL = { ok: "signed", unsigned: "unsigned", bad_signature: "bad signature", stranger: "stranger", not_json: "not an envelope" };

export async function loadAudit(jobId, topic, box) {
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
      const rest = Object.entries(b).filter(([k]) => !["state", "job_id", "job", "sig"].includes(k)).map(([k, v]) => `${k}=${typeof v === "object" ? JSON.stringify(v) : v}`).join(" ");
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
