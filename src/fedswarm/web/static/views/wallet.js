// The wallet box in the header: connect (EIP-6963 / window.ethereum), account, network and
// balance, switch to the node's chain, sign in with the wallet (EIP-4361) and sign out.
import { api, baseLabel, getWalletSession, setWalletSession } from "../api.js";
import { alertBox, fill, h, short } from "../dom.js";
import { announce, state } from "../state.js";
import { formatAmount, networkName, valueUnits } from "../units.js";
import * as wallet from "../wallet.js";
import { keyFromSignature, resultKeyMessage } from "../resultkey.js";

let box = null;
let onSession = () => {};
let resultKeyCache = null;  // {id, key}: the key is derived once per wallet, origin and chain

const wrongChain = () => {
  const w = wallet.connected();
  return Boolean(w && state.chain.id && w.chainId !== Number(state.chain.id));
};

// Make the wallet's chain the node's one (asks the wallet to switch when it is elsewhere).
export async function ensureChain() {
  if (!wallet.connected()) throw new Error("connect a wallet first");
  if (wrongChain()) await wallet.switchChain(state.chain);
  if (wrongChain()) throw new Error(`switch your wallet to ${networkName(state.chain.id, state.chain)}`);
}

// The result key pair of the connected wallet for this page's origin and the node's chain.
export async function resultKey() {
  const w = wallet.connected();
  if (!w) throw new Error("connect your wallet: the result key comes from a wallet signature");
  const chainId = Number(state.chain.id || w.chainId);
  const id = `${w.address.toLowerCase()}|${location.origin}|${chainId}`;
  if (resultKeyCache && resultKeyCache.id === id) return resultKeyCache.key;
  const sig = await wallet.personalSign(resultKeyMessage(location.origin, chainId));
  const key = await keyFromSignature(sig);
  resultKeyCache = { id, key };
  return key;
}

async function challenge() {
  const w = wallet.connected();
  return api("/api/v1/wallet/challenge", { method: "POST", json: { address: w.address, chain_id: w.chainId } });
}

async function signIn() {
  await ensureChain();
  let ch;
  try { ch = await challenge(); } catch (exc) {
    // A delegate describes its chain to any page (GET /api/v1/node answers the `chain` block
    // before sign-in), so ensureChain already switched; an older one only names it in this refusal.
    const m = exc.status === 400 && /chain (\d+)/.exec(exc.message);
    if (!m) throw exc;
    await wallet.switchChain({ ...state.chain, id: Number(m[1]) });
    ch = await challenge();
  }
  const signature = await wallet.personalSign(ch.message);
  const s = await api("/api/v1/wallet/session", { method: "POST", json: { message: ch.message, signature } });
  setWalletSession({ token: s.token, address: s.address, expires_at: s.expires_at });
  announce(`Signed in as ${s.address}`);
}

async function signOut() {
  try { await api("/api/v1/wallet/session", { method: "DELETE" }); } catch { /* expired already: forget it anyway */ }
  setWalletSession(null);
  announce("Signed out");
}

const act = (label, id, fn) => h("button", { type: "button", id, onclick: async (ev) => {
  const btn = ev.currentTarget;
  btn.disabled = true;
  try { await fn(); } catch (exc) { showError(exc.message); btn.disabled = false; return; }
  await onSession();  // the page and this box are redrawn for the new session before it shows
} }, label);

function showError(msg) {
  const el = document.getElementById("wallet-error");
  if (el) fill(el, alertBox(msg, "wallet-error-msg"));
}

async function connectTo(entry) {
  await wallet.connect(entry);
  announce(`Wallet connected: ${wallet.connected().address}`);
}

async function chooseWallet() {
  const list = await wallet.discover();
  if (!list.length) throw new Error("no browser wallet found: install one (MetaMask, HashPack in EVM mode, …) and reload");
  if (list.length === 1) { await connectTo(list[0]); return true; }
  // Several wallets announced themselves: let the user pick one.
  const pick = h("div", { class: "actions", role: "group", "aria-label": "Choose a wallet", "data-testid": "wallet-choices" },
    list.map((e) => h("button", { type: "button", onclick: async () => {
      try { await connectTo(e); } catch (exc) { showError(exc.message); return; }
      await onSession();
    } }, e.info.name)));
  fill(box.querySelector(".wallet-main"), pick);
  return false;
}

// Draw the box from the current wallet and session.
export async function render() {
  if (!box) return;
  const main = h("div", { class: "wallet-main" });
  const w = wallet.connected();
  const session = getWalletSession();
  if (!w) {
    main.append(h("button", { type: "button", id: "connect-wallet", onclick: async () => {
      try {
        if (await chooseWallet()) await onSession();
      } catch (exc) { showError(exc.message); }
    } }, "Connect wallet"));
  } else {
    const bal = h("span", { "data-testid": "wallet-balance" }, "…");
    main.append(h("span", { class: "wallet-account", "data-testid": "wallet-account", title: w.address }, short(w.address, 8)), " ",
      h("span", { "data-testid": "wallet-network", "data-chain": w.chainId }, networkName(w.chainId, state.chain)), " ", bal);
    if (wrongChain()) {
      main.append(" ", act(`Switch to ${networkName(state.chain.id, state.chain)}`, "switch-chain", () => wallet.switchChain(state.chain)));
    }
    if (session) {
      main.append(" ", h("span", { class: "signed-in", "data-testid": "session-address", title: `signed in at ${baseLabel()}` },
        `signed in as ${short(session.address, 8)}`), " ", act("Sign out", "sign-out", signOut));
    } else main.append(" ", act("Sign in with wallet", "sign-in", signIn));
    wallet.balance().then((v) => { bal.textContent = formatAmount(v, valueUnits(state.chain)); },
      () => { bal.textContent = "balance unavailable"; });
  }
  if (!w && session) {
    main.append(" ", h("span", { "data-testid": "session-address" }, `signed in as ${short(session.address, 8)}`), " ", act("Sign out", "sign-out", signOut));
  }
  fill(box, main, h("div", { id: "wallet-error" }));
}

// Mount the box; `changed` runs after a sign-in, sign-out or wallet change: it redraws the
// page and this box (render).
export async function mountWallet(el, changed) {
  box = el;
  onSession = changed;
  wallet.onChange(() => { render(); });
  // A stored session that the node no longer knows (restarted, expired) is forgotten.
  if (getWalletSession()) {
    try { await api("/api/v1/wallet/me"); } catch (exc) { if (exc.status === 401 || exc.status === 404) setWalletSession(null); }
  }
  // Reconnect silently to a wallet that already authorised this site (eth_accounts never prompts).
  try {
    const list = await wallet.discover(150);
    for (const e of list) {
      const accts = await e.provider.request({ method: "eth_accounts" });
      if (accts && accts.length) { await wallet.connect(e); break; }
    }
  } catch { /* not authorised yet: the Connect button does it */ }
  if (wallet.connected()) await onSession();  // the page may show more with the wallet (a refund to withdraw)
  else await render();
}
