// The result key and the "fedswarm-wallet-v1" envelope, with WebCrypto only (X25519,
// HKDF-SHA256, AES-256-GCM). The node writes the same format (docs/ARCHITECTURE.md):
//   header  = "FSW1" | ephemeral X25519 public (32) | segment size u32 BE | plaintext length u64 BE
//   key     = HKDF-SHA256(X25519(eph, user), salt = eph_pub || user_pub, info = "fedswarm-wallet-v1 " + job)
//   segment = AES-256-GCM(key, nonce = 8 zero bytes || u32 i, aad = header || u32 i || u8 last)
// The key pair comes from a personal_sign over resultKeyMessage(origin, chainId): the same
// wallet, origin and chain always give the same key, so nothing secret is stored anywhere.

const subtle = globalThis.crypto.subtle;
const enc = new TextEncoder();
const HEADER = 48;
const TAG = 16;
const MAX_SEGMENT = 16 << 20;
const PKCS8_X25519 = "302e020100300506032b656e04220420";

export const ENVELOPE = "fedswarm-wallet-v1";

export function hexToBytes(hex) {
  const h = hex.replace(/^0x/, "");
  if (h.length % 2 || /[^0-9a-fA-F]/.test(h)) throw new Error("not hex");
  const out = new Uint8Array(h.length / 2);
  for (let i = 0; i < out.length; i++) out[i] = parseInt(h.slice(2 * i, 2 * i + 2), 16);
  return out;
}
export const bytesToHex = (b) => [...new Uint8Array(b)].map((x) => x.toString(16).padStart(2, "0")).join("");
const b64url = (s) => Uint8Array.from(atob(s.replace(/-/g, "+").replace(/_/g, "/")), (c) => c.charCodeAt(0));

export async function sha256Hex(data) { return bytesToHex(await subtle.digest("SHA-256", data)); }

// The exact text the wallet signs to derive the result key (no trailing newline).
export function resultKeyMessage(origin, chainId) {
  return "fedswarm result key\n"
    + "Sign only on a fedswarm page you trust: this signature decrypts your trained models.\n"
    + `URI: ${origin}\nChain ID: ${Number(chainId)}\nVersion: 1`;
}

async function hkdf(ikm, salt, info) {
  const k = await subtle.importKey("raw", ikm, "HKDF", false, ["deriveBits"]);
  return new Uint8Array(await subtle.deriveBits({ name: "HKDF", hash: "SHA-256", salt, info }, k, 256));
}

// The X25519 key pair from a 65-byte signature (r || s || v; v is dropped):
// {privateKey: CryptoKey, publicKey: Uint8Array(32), publicHex, seedHex}.
export async function keyFromSignature(signatureHex) {
  const sig = hexToBytes(signatureHex);
  if (sig.length !== 65) throw new Error("a wallet signature is 65 bytes");
  const seed = await hkdf(sig.slice(0, 64), enc.encode("fedswarm-result-key-v1"), enc.encode("x25519"));
  const pkcs8 = new Uint8Array([...hexToBytes(PKCS8_X25519), ...seed]);
  const privateKey = await subtle.importKey("pkcs8", pkcs8, { name: "X25519" }, true, ["deriveBits"]);
  const jwk = await subtle.exportKey("jwk", privateKey);
  const publicKey = b64url(jwk.x);
  return { privateKey, publicKey, publicHex: bytesToHex(publicKey), seedHex: bytesToHex(seed) };
}

export class EnvelopeError extends Error {}

// Open an envelope (Uint8Array) for `jobId` with the key from keyFromSignature; returns the
// plaintext. Every failure is one EnvelopeError line (wrong key, altered or truncated file).
export async function openEnvelope(data, key, jobId, onProgress) {
  if (data.length < HEADER) throw new EnvelopeError("not a fedswarm-wallet-v1 envelope: shorter than its header");
  const header = data.subarray(0, HEADER);
  const view = new DataView(data.buffer, data.byteOffset, data.byteLength);
  if (new TextDecoder().decode(header.subarray(0, 4)) !== "FSW1") throw new EnvelopeError("not a fedswarm-wallet-v1 envelope (bad magic)");
  const eph = header.slice(4, 36);
  const seg = view.getUint32(36);
  const plen = Number(view.getBigUint64(40));
  if (!(seg > 0 && seg <= MAX_SEGMENT)) throw new EnvelopeError("fedswarm-wallet-v1 envelope with an impossible segment size");
  const n = Math.max(1, Math.ceil(plen / seg));
  if (data.length !== HEADER + plen + n * TAG) throw new EnvelopeError("fedswarm-wallet-v1 envelope is truncated or has extra bytes");
  let shared;
  try {
    const ephKey = await subtle.importKey("raw", eph, { name: "X25519" }, false, []);
    shared = new Uint8Array(await subtle.deriveBits({ name: "X25519", public: ephKey }, key.privateKey, 256));
  } catch { throw new EnvelopeError("fedswarm-wallet-v1 envelope with an invalid ephemeral key"); }
  const raw = await hkdf(shared, new Uint8Array([...eph, ...key.publicKey]), enc.encode(`${ENVELOPE} ${jobId}`));
  const aes = await subtle.importKey("raw", raw, "AES-GCM", false, ["decrypt"]);
  const out = new Uint8Array(plen);
  let at = HEADER;
  for (let i = 0; i < n; i++) {
    const take = Math.min(seg, plen - i * seg);
    const iv = new Uint8Array(12);
    new DataView(iv.buffer).setUint32(8, i);
    const aad = new Uint8Array(HEADER + 5);
    aad.set(header);
    new DataView(aad.buffer).setUint32(HEADER, i);
    aad[HEADER + 4] = i === n - 1 ? 1 : 0;
    let piece;
    try {
      piece = await subtle.decrypt({ name: "AES-GCM", iv, additionalData: aad, tagLength: 128 }, aes, data.subarray(at, at + take + TAG));
    } catch {
      throw new EnvelopeError("the result does not open with this wallet's key (another wallet, origin or chain, or the file was altered)");
    }
    out.set(new Uint8Array(piece), i * seg);
    at += take + TAG;
    if (onProgress) onProgress(i + 1, n);
  }
  return out;
}
