// REST helpers. Calls go to the chosen delegate's base URL (localStorage "fedswarm.delegate";
// default: this page's own node). Errors come back as {"error": "..."}.
// Credentials, by who is calling:
// - a wallet session (signed in with the wallet): `Authorization: Wallet <token>`, the token
//   kept in sessionStorage per base URL; cookies are never sent then (the node's own UI cookie
//   would otherwise make the call the node's, not the wallet's).
// - the node's operator: on loopback the page brings this start's session cookie (HttpOnly,
//   SameSite=Strict); with a token (a public node) every call carries it as a Bearer token.

const TOKEN_KEY = "fedswarm.apiToken";
const DELEGATE_KEY = "fedswarm.delegate";
const WALLET_KEY = "fedswarm.wallet:";
// The routes a wallet session may call (the node refuses the others for a wallet principal).
const WALLET_PATHS = /^\/api\/v1\/(wallet\/|jobs|quote|node|examples|columns|clients)/;

function store(kind) {
  try { return kind === "session" ? sessionStorage : localStorage; } catch { return null; }
}
function read(kind, key) { try { return store(kind)?.getItem(key) || ""; } catch { return ""; } }
function write(kind, key, value) {
  try {
    if (value) store(kind)?.setItem(key, value); else store(kind)?.removeItem(key);
  } catch { /* storage disabled: nothing is remembered */ }
}

export const getToken = () => read("local", TOKEN_KEY);
export const setToken = (value) => write("local", TOKEN_KEY, value);

// The API's base URL without a trailing slash; "" is this page's own node.
export function getBase() {
  const b = read("local", DELEGATE_KEY).replace(/\/+$/, "");
  return b === location.origin ? "" : b;
}
export function setBase(url) { write("local", DELEGATE_KEY, url ? url.replace(/\/+$/, "") : ""); }
export const baseLabel = () => getBase() || location.origin;

// The wallet session of the current base: {token, address, expires_at} or null.
export function getWalletSession() {
  try {
    const s = JSON.parse(read("session", WALLET_KEY + baseLabel()) || "null");
    return s && s.token && (!s.expires_at || s.expires_at * 1000 > Date.now()) ? s : null;
  } catch { return null; }
}
export function setWalletSession(s) { write("session", WALLET_KEY + baseLabel(), s ? JSON.stringify(s) : ""); }

export class ApiError extends Error {
  constructor(message, status) { super(message); this.status = status; }
}

// Exchange the stored token for this start's session cookie; false when there is no token or
// the node refuses it.
export async function openSession() {
  if (!getToken() || getBase()) return false;
  try { await api("/api/v1/session", { method: "POST" }); return true; } catch { return false; }
}

// Headers and fetch credentials mode for a call to `path`.
// `local`: a call to this page's own node (mesh views), never with the delegate's wallet token.
export function auth(path, local = false) {
  const headers = {};
  const wallet = local ? null : getWalletSession();
  if (wallet && WALLET_PATHS.test(path)) {
    headers["Authorization"] = `Wallet ${wallet.token}`;
    return { headers, credentials: "omit" };
  }
  const own = local || !getBase();
  if (getToken() && own) headers["Authorization"] = `Bearer ${getToken()}`;
  return { headers, credentials: own ? "same-origin" : "omit" };
}

function errorOf(status, statusText, text) {
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch { data = null; }
  const msg = (data && (data.error || data.detail)) || `${status} ${statusText || "error"}`;
  return new ApiError(typeof msg === "string" ? msg : JSON.stringify(msg), status);
}

// One call; JSON in and out.
export async function api(path, { method = "GET", json, form, signal, local = false } = {}) {
  const { headers, credentials } = auth(path, local);
  const base = local ? "" : getBase();
  let body;
  if (json !== undefined) { headers["Content-Type"] = "application/json"; body = JSON.stringify(json); }
  if (form !== undefined) body = form;  // the browser sets the multipart boundary itself
  let resp;
  try {
    resp = await fetch(base + path, { method, headers, body, signal, cache: "no-store", credentials });
  } catch (exc) {
    if (exc.name === "AbortError") throw exc;
    throw new ApiError(`the node at ${base || location.origin} is not answering: is it still running?`, 0);
  }
  const text = await resp.text();
  if (!resp.ok) throw errorOf(resp.status, resp.statusText, text);
  try { return text ? JSON.parse(text) : null; } catch { throw new ApiError(`the node sent malformed JSON for ${path}`, resp.status); }
}

// A multipart upload with progress: XMLHttpRequest is the one browser API that reports upload
// progress. onProgress(sentBytes, totalBytes).
export function upload(path, form, onProgress) {
  const { headers, credentials } = auth(path);
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open("POST", getBase() + path);
    xhr.withCredentials = credentials === "same-origin" && !getBase();
    for (const [k, v] of Object.entries(headers)) xhr.setRequestHeader(k, v);
    xhr.upload.addEventListener("progress", (ev) => { if (ev.lengthComputable) onProgress(ev.loaded, ev.total); });
    xhr.addEventListener("load", () => {
      if (xhr.status < 200 || xhr.status >= 300) { reject(errorOf(xhr.status, xhr.statusText, xhr.responseText)); return; }
      try { resolve(JSON.parse(xhr.responseText)); } catch { reject(new ApiError("the node sent malformed JSON", xhr.status)); }
    });
    xhr.addEventListener("error", () => reject(new ApiError(`the upload to ${baseLabel()} failed: is the node still running?`, 0)));
    xhr.addEventListener("abort", () => reject(new ApiError("upload cancelled", 0)));
    xhr.send(form);
  });
}

// Server-sent events read with fetch and a stream reader (so the Authorization header works
// cross-origin, which EventSource cannot do). onEvent(name, data) per event; reconnects after
// a drop until the server sends "end" or stop() is called. Returns stop().
export function streamEvents(path, onEvent, onError) {
  const ctrl = new AbortController();
  let ended = false;
  const run = async () => {
    let delay = 1000;
    while (!ended && !ctrl.signal.aborted) {
      try {
        const { headers, credentials } = auth(path);
        const resp = await fetch(getBase() + path, { headers, credentials, signal: ctrl.signal, cache: "no-store" });
        if (!resp.ok) throw errorOf(resp.status, resp.statusText, await resp.text());
        const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
        let buf = "";
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          buf += value.replace(/\r\n/g, "\n");
          let cut;
          while ((cut = buf.indexOf("\n\n")) >= 0) {
            const frame = buf.slice(0, cut);
            buf = buf.slice(cut + 2);
            let name = "message";
            const data = [];
            for (const line of frame.split("\n")) {
              if (line.startsWith("event:")) name = line.slice(6).trim();
              else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
            }
            if (name === "end") ended = true;
            onEvent(name, data.join("\n"));
          }
        }
        delay = 1000;
      } catch (exc) {
        if (ctrl.signal.aborted) return;
        if (onError) onError(exc);
        if (exc instanceof ApiError && exc.status >= 400 && exc.status < 500) return;  // refused: retrying will not help
      }
      if (!ended) await new Promise((r) => setTimeout(r, delay));
      delay = Math.min(delay * 2, 15000);
    }
  };
  run();
  return () => ctrl.abort();
}
