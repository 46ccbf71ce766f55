// Tiny DOM helpers: every text goes in as a text node (no innerHTML with network data).

export function h(tag, attrs = {}, ...children) {
  const el = document.createElementNS(
    tag === "svg" || attrs.svg ? "http://www.w3.org/2000/svg" : "http://www.w3.org/1999/xhtml", tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false || k === "svg") continue;
    if (k.startsWith("on") && typeof v === "function") el.addEventListener(k.slice(2), v);
    else if (k === "text") el.textContent = v;
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat(Infinity)) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

export const s = (tag, attrs = {}, ...children) => h(tag, { ...attrs, svg: true }, ...children);

export function short(id, n = 10) {
  if (!id) return "—";
  return id.length > n + 4 ? `${id.slice(0, n)}…${id.slice(-4)}` : id;
}

export function num(v, digits = 4) {
  return v === null || v === undefined || Number.isNaN(v) ? "—" : Number(v).toFixed(digits);
}

export function when(ts) {
  if (!ts) return "—";
  return new Date(ts * 1000).toLocaleString();
}

export function table(caption, headers, rows, attrs = {}) {
  return h("div", { class: "table-wrap" },
    h("table", attrs,
      h("caption", {}, caption),
      h("thead", {}, h("tr", {}, headers.map((x) => h("th", { scope: "col" }, x)))),
      h("tbody", {}, rows.length ? rows : h("tr", {}, h("td", { colspan: headers.length, class: "muted" }, "none yet")))));
}

// replaceChildren that skips null/false (conditional parts of a view).
export function fill(el, ...children) {
  el.replaceChildren(...children.flat(Infinity).filter((c) => c !== null && c !== undefined && c !== false));
  return el;
}

export function alertBox(msg, id) {
  return h("p", { class: "error", role: "alert", id, "data-testid": id }, msg);
}

export function field(label, input, hint) {
  const id = input.id;
  return h("div", { class: "field" }, h("label", { for: id }, label), input,
    hint ? h("small", { id: `${id}-hint`, class: "muted" }, hint) : null);
}

export function fact(k, v) { return h("div", {}, h("dt", {}, k), h("dd", {}, v)); }

export function card(title, value) {
  return h("div", { class: "card" }, h("div", { class: "card-title" }, title), h("div", { class: "card-value" }, value));
}
