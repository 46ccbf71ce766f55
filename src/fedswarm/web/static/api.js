// REST helpers: the node's own API only (same origin). Errors come back as {"error": "..."}.
// Credentials: on loopback the page itself brings this start's session cookie (HttpOnly,
// SameSite=Strict; the browser sends it, scripts never see it). With a token (a public node, or
// one started with FEDSWARM_API_TOKEN) every call carries it, and openSession() exchanges it
// for the cookie so that live updates (EventSource) and the result download work too.

const TOKEN_KEY = "fedswarm.apiToken";

export function getToken() {
  try { return localStorage.getItem(TOKEN_KEY) || ""; } catch { return ""; }
}

export function setToken(value) {
  try {
    if (value) localStorage.setItem(TOKEN_KEY, value); else localStorage.removeItem(TOKEN_KEY);
  } catch { /* storage disabled: the token just is not remembered */ }
}

export class ApiError extends Error {
  constructor(message, status) { super(message); this.status = status; }
}

// Exchange the stored token for this start's session cookie; false when there is no token or
// the node refuses it.
export async function openSession() {
  if (!getToken()) return false;
  try { await api("/api/v1/session", { method: "POST" }); return true; } catch { return false; }
}

// One call; every call carries the Bearer token when one is stored.
export async function api(path, { method = "GET", json, form, signal } = {}) {
  const headers = {};
  let body;
  if (json !== undefined) { headers["Content-Type"] = "application/json"; body = JSON.stringify(json); }
  if (form !== undefined) body = form;  // the browser sets the multipart boundary itself
  if (getToken()) headers["Authorization"] = `Bearer ${getToken()}`;
  let resp;
  try {
    resp = await fetch(path, { method, headers, body, signal, cache: "no-store", credentials: "same-origin" });
  } catch (exc) {
    if (exc.name === "AbortError") throw exc;
    throw new ApiError("the node is not answering: is it still running?", 0);
  }
  let data = null;
  const text = await resp.text();
  try { data = text ? JSON.parse(text) : null; } catch { data = null; }
  if (!resp.ok) {
    const msg = (data && (data.error || data.detail)) || `${resp.status} ${resp.statusText}`;
    throw new ApiError(typeof msg === "string" ? msg : JSON.stringify(msg), resp.status);
  }
  return data;
}
