// History: the jobs this caller may see (a wallet session: its own), newest first.
import { api, getWalletSession } from "../api.js";
import { alertBox, fill, h, num, table, when } from "../dom.js";
import { amount } from "../state.js";

export function historyPage({ page, every }) {
  const box = h("div");
  const err = h("div");
  const who = getWalletSession() ? `Jobs of ${getWalletSession().address}, newest first` : "All jobs of this client, newest first";
  page("History", err, box);
  every(5000, async () => {
    try {
      const res = await api("/api/v1/jobs");
      const rows = res.jobs.map((j) => h("tr", {},
        h("td", {}, h("a", { href: `#/job/${encodeURIComponent(j.job_id)}` }, j.job_id)),
        h("td", {}, h("span", { class: `state ${j.state}` }, j.state)), h("td", {}, j.dataset || "—"),
        h("td", {}, `${Math.min(j.current_round, j.rounds)} / ${j.rounds}`), h("td", {}, amount(j.deposited_wei)),
        h("td", {}, num(j.final_accuracy)), h("td", {}, when(j.created)),
        h("td", {}, h("a", { href: `#/new/${encodeURIComponent(j.job_id)}`, "aria-label": `New job with the terms of ${j.job_id}` }, "clone"))));
      fill(box, table(who, ["job", "state", "dataset", "rounds", "cost (escrow)", "final accuracy", "created", ""], rows, { "data-testid": "history-table" }));
      err.replaceChildren();
    } catch (exc) { fill(err, alertBox(exc.message, "history-error")); }
  });
}
