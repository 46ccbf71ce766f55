// fedswarm UI: a hash-routed single-page app (Network, New job, Job, History, Settings) with a
// wallet box in the header. Each page lives in views/; this module routes between them.
import { api, openSession } from "./api.js";
import { fill, h } from "./dom.js";
import { announce, loadNode, state } from "./state.js";
import { networkPage } from "./views/network.js";
import { newJobPage } from "./views/newjob.js";
import { jobPage } from "./views/job.js";
import { historyPage } from "./views/history.js";
import { settingsPage } from "./views/settings.js";
import { mountWallet, render as renderWallet } from "./views/wallet.js";

const view = document.getElementById("view");
let cleanup = [];  // timers / event streams of the current page, stopped on navigation

function onLeave(fn) { cleanup.push(fn); }
function every(ms, fn) { fn(); const t = setInterval(fn, ms); onLeave(() => clearInterval(t)); }

function page(title, ...body) {
  document.title = `${title} · fedswarm`;
  fill(view, h("h1", {}, title), ...body);
}

const PAGES = { network: networkPage, new: newJobPage, job: jobPage, history: historyPage, settings: settingsPage };
const CLIENT_ONLY = ["new", "history", "job"];

function route() {
  for (const fn of cleanup) fn();
  cleanup = [];
  const [path] = (location.hash || "#/network").slice(1).split("?");
  const [, name = "network", arg] = path.split("/");
  for (const a of document.querySelectorAll("#nav a")) {
    if (a.dataset.page === name || (name === "job" && a.dataset.page === "history")) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  const ctx = { page, every, onLeave, arg: arg ? decodeURIComponent(arg) : null, rerender: refresh };
  if (CLIENT_ONLY.includes(name) && state.ui.role !== "client") {
    page("Not available", h("p", {}, `This is a ${state.ui.role} node: pick a client node as your delegate on the Network page.`));
  } else if (name === "job" && !arg) page("No job", h("p", {}, "Pick a job from the History page."));
  else (PAGES[name] || networkPage)(ctx);
  // Move focus to the new page so keyboard and screen-reader users land on its heading.
  if (document.activeElement && document.activeElement.closest("#nav")) view.focus({ preventScroll: true });
}

// The API's node (the delegate, or this page's node) decides the pages and the chain.
async function restart() {
  await openSession();  // with a stored token: the session cookie for live updates and downloads
  try { state.ui = await api("/api/v1/ui"); } catch { state.ui = { role: "client", pages: [] }; }
  await loadNode();
  for (const li of document.querySelectorAll("[data-client]")) li.hidden = state.ui.role !== "client";
  document.getElementById("node-badge").textContent = `${state.ui.role} node`;
  route();
}

// After a sign-in, sign-out or delegate change: what the API's node says may differ (before
// sign-in a delegate describes its chain only, after it the whole node).
async function refresh() {
  await restart();
  await renderWallet();
}

async function start() {
  // A status line belongs to the page it was said on.
  window.addEventListener("hashchange", () => { announce(""); route(); });
  await restart();
  await mountWallet(document.getElementById("wallet-box"), refresh);
}

start();
