// The job page. It is built once; each event updates its parts in place, so an open <details>
// stays open and the focused control keeps focus. Panels whose content depends on a phase
// (payment, result) are rebuilt only when that phase changes.
import { api, streamEvents } from "../api.js";
import { alertBox, fill, h, num, when } from "../dom.js";
import { roundsChart } from "../chart.js";
import { amount, announce, txLink } from "../state.js";
import { TRAINER_HEADERS, loadAudit, operatorRecord, refundInfo, stepper, timingText, trainerRows } from "./jobparts.js";
import { PAID_KEY, payPanel, resultPanel, withdrawPanel } from "./payresult.js";

const TERMINAL = ["done", "failed", "cancelled"];

// A <dd> per fact, updated in place.
function facts(names) {
  const dd = {};
  const dl = h("dl", { class: "facts" }, names.map(([key, label]) => {
    dd[key] = h("dd", { "data-fact": key });
    return h("div", {}, h("dt", {}, label), dd[key]);
  }));
  return { dl, set: (key, ...v) => fill(dd[key], ...v) };
}

// Rebuild `box` from `build(job)` only when `keyOf(job)` changes.
function phased(box, keyOf, build) {
  let key = null;
  return (job) => {
    const k = keyOf(job);
    if (k !== key) { key = k; fill(box, build(job)); }
  };
}

export function jobPage({ page, onLeave, arg: jobId }) {
  const err = h("div");
  const liveErr = h("div");
  const jobErr = h("div");
  const info = facts([["state", "State"], ["dataset", "Dataset"], ["rounds", "Rounds done"], ["eta", "Time"],
    ["deposited", "Escrow deposited"], ["paid", "Paid to trainers"], ["refund", "Refund"], ["accuracy", "Final accuracy"],
    ["payer", "Payer"], ["fund_tx", "Funding transaction"], ["operator_record", "Operator's rejection rate"],
    ["audit", "Audit topic"]]);
  const cancelBtn = h("button", { type: "button", id: "cancel-btn", hidden: true }, "Cancel job");
  const cloneLink = h("a", { class: "button", href: `#/new/${encodeURIComponent(jobId)}`, "data-testid": "clone" }, "New job with these terms");
  const steps = h("div");
  const payBox = h("div");
  const withdrawBox = h("div");
  const chart = roundsChart();
  const trainersBody = h("tbody");
  const resultBox = h("section", { "aria-labelledby": "result-h" });
  const auditBox = h("section", { "aria-labelledby": "audit-h" });
  const timelineSummary = h("summary");
  const timelineList = h("ul", { class: "events" });
  page(`Job ${jobId}`, err, liveErr, info.dl, jobErr, h("div", { class: "actions" }, cancelBtn, cloneLink), withdrawBox, steps, payBox,
    h("h2", { id: "chart-h" }, "Validation per round"), h("section", { "aria-labelledby": "chart-h" }, chart.el),
    h("h2", { id: "result-h" }, "Result"), resultBox,
    h("h2", {}, "Trainers"),
    h("div", { class: "table-wrap" }, h("table", { "data-testid": "job-trainers" },
      h("caption", {}, "Work units per trainer, its last training report and what it was paid"),
      h("thead", {}, h("tr", {}, TRAINER_HEADERS.map((x) => h("th", { scope: "col" }, x)))), trainersBody)),
    h("h2", { id: "audit-h" }, "Audit log"), auditBox,
    h("details", { "data-testid": "timeline" }, timelineSummary, timelineList));
  cancelBtn.addEventListener("click", () => cancel(jobId, err));

  const drawPay = phased(payBox, (j) => (j.state === "awaiting-payment" ? `pay:${j.funding ? j.funding.job_key || "f" : "-"}` : "none"),
    (j) => (j.state === "awaiting-payment" ? payPanel(j) : null));
  const drawResult = phased(resultBox, (j) => `${j.state}:${j.result ? j.result.sha256 : ""}`, resultPanel);
  // A wallet job's refund: checked again when the node records a refund or a release.
  const drawWithdraw = phased(withdrawBox, (j) => (TERMINAL.includes(j.state) && j.owner && j.owner !== "node"
    ? `w:${j.refund ? `${j.refund.wei}:${j.refund.released_at}` : ""}` : "none"),
  (j) => (TERMINAL.includes(j.state) && j.owner && j.owner !== "node" ? withdrawPanel(j) : null));
  let lastState = null;
  let last = null;
  let auditTimer = null;

  const render = (job) => {
    last = job;
    info.set("state", h("span", { class: `state ${job.state}`, "data-testid": "job-state" }, job.state));
    info.set("dataset", job.dataset || "—");
    info.set("rounds", `${Math.min(job.current_round, job.rounds)} / ${job.rounds}`);
    info.set("eta", h("span", { "data-testid": "eta" }, timingText(job)));
    info.set("deposited", amount(job.deposited_wei, "deposited"));
    info.set("paid", amount(job.paid_wei));
    info.set("refund", refundInfo(job));
    info.set("accuracy", num(job.final_metrics && job.final_metrics.accuracy));
    const esc = job.escrow || {};
    info.set("payer", esc.payer ? h("code", { class: "wrap" }, esc.payer) : job.owner && job.owner !== "node" ? job.owner : "this node");
    // The node's own funding transaction, or the one this browser's wallet sent.
    const fund = ((esc.transactions || {}).fund || [])[0];
    const fundTx = (fund && (fund.hash || fund.tx_hash)) || sessionStorage.getItem(PAID_KEY + job.job_id);
    info.set("fund_tx", fundTx ? txLink(fundTx, "fund-tx") : "—");
    info.set("operator_record", operatorRecord(job));
    info.set("audit", job.audit_topic || "—");
    fill(jobErr, job.error ? alertBox(job.error, "job-error") : null);
    cancelBtn.hidden = TERMINAL.includes(job.state);
    fill(steps, stepper(job));
    drawPay(job);
    chart.update(job.rounds_detail || [], job.rounds);
    trainersBody.replaceChildren(...trainerRows(job));
    if (!trainersBody.children.length) trainersBody.append(h("tr", {}, h("td", { colspan: TRAINER_HEADERS.length, class: "muted" }, "none yet")));
    drawResult(job);
    drawWithdraw(job);
    const evs = job.events || [];
    timelineSummary.textContent = `Node timeline (${evs.length} events)`;
    timelineList.replaceChildren(...evs.slice(-30).reverse().map((e) => h("li", {}, h("time", {}, when(e.ts)), " ", e.msg || JSON.stringify(e))));
    if (job.state !== lastState) { announce(`Job ${job.state}`); lastState = job.state; }
    if (job.audit_topic && !auditTimer) {
      auditTimer = setInterval(() => loadAudit(jobId, job.audit_topic, auditBox), 3000);
      onLeave(() => clearInterval(auditTimer));
      loadAudit(jobId, job.audit_topic, auditBox);
    }
  };

  let stop = () => {};
  (async () => {
    try { render(await api(`/api/v1/jobs/${encodeURIComponent(jobId)}`)); err.replaceChildren(); } catch (exc) {
      if (exc.status === 403 || exc.status === 404) {
        // Not this caller's job, or no such job: nothing else on the page applies.
        stop();
        page(`Job ${jobId}`, alertBox(exc.message, "job-load-error"));
      } else fill(err, alertBox(exc.message, "job-load-error"));
    }
  })();
  stop = streamEvents(`/api/v1/jobs/${encodeURIComponent(jobId)}/events`, (name, data) => {
    if (name === "job") {
      try { render(JSON.parse(data)); } catch (exc) { console.warn("bad job event", exc); }
    } else if (name === "end") {
      if (last && last.audit_topic) setTimeout(() => loadAudit(jobId, last.audit_topic, auditBox), 1500);
      if (auditTimer) setTimeout(() => clearInterval(auditTimer), 8000);
    }
  }, (exc) => fill(liveErr, alertBox(`live updates: ${exc.message}`, "events-error")));
  onLeave(stop);
}

async function cancel(jobId, err) {
  if (!confirm(`Cancel job ${jobId}? Unspent escrow is refunded.`)) return;
  try { await api(`/api/v1/jobs/${encodeURIComponent(jobId)}/cancel`, { method: "POST" }); } catch (exc) { fill(err, alertBox(exc.message, "cancel-error")); }
}
