// The browser wallet: EIP-6963 discovery (every injected wallet announces itself), the legacy
// window.ethereum as a fallback, and the few EIP-1193 calls the UI needs. No library: the node
// writes the sign-in text (with the checksum address), so the page needs no keccak.
import { isHedera } from "./units.js";

const found = new Map();  // uuid -> {info, provider}
let current = null;       // {info, provider}
const listeners = new Set();

window.addEventListener("eip6963:announceProvider", (ev) => {
  const d = ev.detail;
  if (!d || !d.info || !d.provider || typeof d.provider.request !== "function") return;
  found.set(d.info.uuid || d.info.rdns || d.info.name, { info: d.info, provider: d.provider });
});

// The wallets this browser offers: EIP-6963 announcements, else window.ethereum.
export async function discover(waitMs = 300) {
  window.dispatchEvent(new Event("eip6963:requestProvider"));
  await new Promise((r) => setTimeout(r, waitMs));
  const list = [...found.values()];
  if (!list.length && window.ethereum && typeof window.ethereum.request === "function") {
    list.push({ info: { uuid: "injected", name: "Browser wallet", rdns: "injected" }, provider: window.ethereum });
  }
  return list;
}

export const connected = () => current;
export function onChange(fn) { listeners.add(fn); return () => listeners.delete(fn); }
const changed = () => { for (const fn of listeners) fn(current); };

// A wallet error as one line a user can act on.
export function walletError(exc) {
  const code = exc && (exc.code ?? (exc.data && exc.data.code));
  if (code === 4001) return "you declined the request in your wallet";
  if (code === 4100) return "the wallet has not authorised this site: connect again";
  if (code === -32002) return "the wallet already has a request open: finish it in the wallet";
  return `wallet: ${(exc && exc.message) || exc}`;
}

async function rpc(method, params) {
  if (!current) throw new Error("connect a wallet first");
  try { return await current.provider.request(params === undefined ? { method } : { method, params }); }
  catch (exc) { const e = new Error(walletError(exc)); e.code = exc && exc.code; throw e; }
}

// Connect to one discovered wallet; returns {address, chainId}.
export async function connect(entry) {
  current = entry;
  const accounts = await rpc("eth_requestAccounts");
  if (!accounts || !accounts.length) { current = null; throw new Error("the wallet shared no account"); }
  const p = entry.provider;
  if (typeof p.on === "function") {
    p.on("accountsChanged", (a) => { if (current && current.provider === p) { current.address = (a || [])[0] || null; changed(); } });
    p.on("chainChanged", (c) => { if (current && current.provider === p) { current.chainId = Number(c); changed(); } });
  }
  current.address = accounts[0];
  current.chainId = Number(await rpc("eth_chainId"));
  changed();
  return { address: current.address, chainId: current.chainId };
}

export function disconnect() { current = null; changed(); }

// The balance in value units (wei; weibar on Hedera), a decimal string.
export async function balance() {
  return BigInt(await rpc("eth_getBalance", [current.address, "latest"])).toString();
}

// Ask the wallet to move to the node's chain (and to add it when the wallet does not know it:
// only Hedera's public networks have well-known RPC relays to offer).
export async function switchChain(chain) {
  const chainId = "0x" + Number(chain.id).toString(16);
  try {
    await current.provider.request({ method: "wallet_switchEthereumChain", params: [{ chainId }] });
  } catch (exc) {
    if (exc && exc.code === 4902 && isHedera(chain.id)) {
      const net = { 295: "mainnet", 296: "testnet", 297: "previewnet" }[chain.id];
      await rpc("wallet_addEthereumChain", [{ chainId, chainName: `Hedera ${net}`,
        nativeCurrency: { name: "HBAR", symbol: "HBAR", decimals: 18 },
        rpcUrls: [`https://${net}.hashio.io/api`], blockExplorerUrls: [`https://hashscan.io/${net}`] }]);
    } else throw new Error(walletError(exc));
  }
  current.chainId = Number(await rpc("eth_chainId"));
  changed();
  return current.chainId;
}

// personal_sign (EIP-191) of a UTF-8 text: the 65-byte signature as 0x hex.
export async function personalSign(text) {
  const hex = "0x" + [...new TextEncoder().encode(text)].map((b) => b.toString(16).padStart(2, "0")).join("");
  const sig = await rpc("personal_sign", [hex, current.address]);
  if (!/^0x[0-9a-fA-F]{130}$/.test(sig || "")) throw new Error("the wallet returned a malformed signature");
  return sig;
}

// Send a transaction from the connected account; returns its hash.
export async function sendTransaction({ to, data, value }) {
  const tx = { from: current.address, to, data, value: "0x" + BigInt(value || 0).toString(16) };
  return rpc("eth_sendTransaction", [tx]);
}

// Wait until the chain has mined `hash` (the wallet's own RPC); returns the receipt.
export async function waitReceipt(hash, timeoutMs = 180000) {
  const until = Date.now() + timeoutMs;
  while (Date.now() < until) {
    const r = await rpc("eth_getTransactionReceipt", [hash]);
    if (r) return r;
    await new Promise((res) => setTimeout(res, 1000));
  }
  throw new Error(`transaction ${hash} not mined after ${Math.round(timeoutMs / 1000)} s`);
}

// A read-only contract call (eth_call) through the wallet's RPC; the raw 0x result.
export async function call(to, data) {
  return rpc("eth_call", [{ to, data }, "latest"]);
}
