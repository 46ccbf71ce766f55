// The columns of a CSV/TSV file read from its first bytes in the browser, so that picking the
// label column never uploads the dataset (it is uploaded once, with the job).

const PEEK_BYTES = 256 << 10;

export class CsvError extends Error {}

// Split CSV text into rows of fields (RFC 4180 quotes); the last row may be cut short and is
// dropped unless `complete`.
export function parseRows(text, sep = ",", complete = false) {
  const rows = [];
  let row = [], field = "", quoted = false, i = 0;
  while (i < text.length) {
    const c = text[i];
    if (quoted) {
      if (c === '"' && text[i + 1] === '"') { field += '"'; i += 2; continue; }
      if (c === '"') { quoted = false; i++; continue; }
      field += c; i++; continue;
    }
    if (c === '"' && field === "") { quoted = true; i++; continue; }
    if (c === sep) { row.push(field); field = ""; i++; continue; }
    if (c === "\n" || c === "\r") {
      row.push(field); rows.push(row); row = []; field = "";
      i += c === "\r" && text[i + 1] === "\n" ? 2 : 1;
      continue;
    }
    field += c; i++;
  }
  if (complete && (field !== "" || row.length)) { row.push(field); rows.push(row); }
  return rows;
}

const isNumber = (v) => v.trim() !== "" && Number.isFinite(Number(v));

// [{name, kind: "number"|"text"}] from the file's first bytes; CsvError on a malformed start.
export async function peekColumns(file) {
  const sep = /\.tsv$/i.test(file.name) ? "\t" : ",";
  const text = await file.slice(0, PEEK_BYTES).text();
  const rows = parseRows(text.replace(/^\uFEFF/, ""), sep, file.size <= PEEK_BYTES).filter((r) => r.length > 1 || r[0] !== "");
  if (!rows.length) throw new CsvError("the file is empty: a CSV needs a header row with the column names");
  const header = rows[0].map((h) => h.trim());
  if (header.some((h) => h === "")) throw new CsvError("the CSV header has an empty column name");
  if (new Set(header).size !== header.length) throw new CsvError("the CSV header names a column twice");
  const body = rows.slice(1);
  body.forEach((r, i) => {
    if (r.length !== header.length) throw new CsvError(`malformed CSV row ${i + 2}: ${r.length} fields, the header has ${header.length}`);
  });
  if (!body.length) throw new CsvError("the CSV has a header but no data rows");
  return header.map((name, j) => ({ name, kind: body.every((r) => isNumber(r[j])) ? "number" : "text" }));
}

export const peekable = (file) => /\.(csv|tsv)$/i.test(file.name) || file.type === "text/csv";
