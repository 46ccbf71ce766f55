// REST helpers: the node's own API only (same origin). Errors come back as {"error": "..."}.

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

// One call; mutating methods carry the Bearer token (the server asks for it whenever one is set).
export async function api(path, { method = "GET", json, form, signal } = {}) {
  const headers = {};
  let body;
  if (json !== undefined) { headers["Content-Type"] = "application/json"; body = JSON.stringify(json); }
  if (form !== undefined) body = form;  // the browser sets the multipart boundary itself
  if (method !== "GET" && getToken()) headers["Authorization"] = `Bearer ${getToken()}`;
  let resp;
  try {
    resp = await fetch(path, { method, headers, body, signal, cache: "no-store" });
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
