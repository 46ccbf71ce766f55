"""A wallet user speaking to a client node's HTTP API exactly as the browser does: EIP-4361
sign-in with ``personal_sign``, a submission carrying the wallet-derived result key, the
funding transaction signed and sent by the wallet, and the result downloaded through its
presigned link and opened with the wallet-derived key. Used by ``fedswarm demo --wallet`` and
``fedswarm job fetch --wallet-key``; holds a private key, so it never logs one."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

import httpx
from eth_account import Account
from eth_account.messages import encode_defunct
from eth_account.signers.local import LocalAccount

from fedswarm import wallet_envelope
from fedswarm.config import ConfigError


def error_text(r: httpx.Response) -> str:
    """The one-line error a node's API answered (its ``{"error": ...}``, else the body)."""
    try:
        body = r.json()
    except ValueError:
        return r.text
    return str(body.get("error") or r.text) if isinstance(body, dict) else r.text


class WalletUser:
    """One wallet (``key``) signed in at one node API (``base``)."""

    def __init__(self, base: str, key: str | bytes, timeout: float = 60.0) -> None:
        self.base = base.rstrip("/")
        self.account: LocalAccount = Account.from_key(key)
        self.timeout = timeout
        self.token: str | None = None

    @property
    def address(self) -> str:
        """The wallet's checksum address."""
        return str(self.account.address)

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Wallet {self.token}"} if self.token else {}

    def call(self, method: str, path: str, *, ok: tuple[int, ...] = (200,), **kw: Any) -> httpx.Response:
        """One API call with the wallet session; ConfigError (one line) on an unexpected status."""
        try:
            r = httpx.request(method, self.base + path, headers=self._headers(),
                              timeout=kw.pop("timeout", self.timeout), **kw)
        except httpx.HTTPError as exc:
            raise ConfigError(f"cannot reach the node at {self.base}: {exc}") from None
        if r.status_code not in ok:
            raise ConfigError(f"{method} {path}: {r.status_code} {error_text(r)[:300]}")
        return r

    def node(self) -> dict[str, Any]:
        """``GET /api/v1/node`` (its ``chain`` block says which chain and units)."""
        return dict(self.call("GET", "/api/v1/node").json())

    def sign_in(self) -> str:
        """Challenge, ``personal_sign``, session: the wallet's session token."""
        chain_id = int(self.node()["chain"]["id"])
        challenge = self.call("POST", "/api/v1/wallet/challenge",
                              json={"address": self.address, "chain_id": chain_id}).json()
        signed = self.account.sign_message(encode_defunct(text=challenge["message"]))
        out = self.call("POST", "/api/v1/wallet/session",
                        json={"message": challenge["message"], "signature": "0x" + bytes(signed.signature).hex()}).json()
        self.token = str(out["token"])
        return self.token

    def result_seed(self, origin: str, chain_id: int) -> bytes:
        """The X25519 seed of the result key, derived as the browser derives it."""
        return wallet_envelope.seed_from_wallet_key(self.account.key, origin, chain_id)

    def submit(self, dataset: Path, terms: dict[str, Any], model: str | None = None,
               origin: str | None = None) -> str:
        """Submit a job whose result is sealed to this wallet's result key for ``origin``
        (default: the node's own API URL)."""
        origin = origin or self.base
        chain_id = int(self.node()["chain"]["id"])
        public = wallet_envelope.public_from_seed(self.result_seed(origin, chain_id)).hex()
        files: dict[str, Any] = {"dataset": (dataset.name, dataset.read_bytes())}
        form = {"terms": json.dumps(terms), "result_public_key": public, "result_key_origin": origin}
        if model and Path(model).is_file():
            files["model"] = (Path(model).name, Path(model).read_bytes())
        else:
            form["example"] = model or "breast_cancer"
        return str(self.call("POST", "/api/v1/jobs", files=files, data=form, timeout=120).json()["job_id"])

    def wait_funding(self, job_id: str, timeout: float = 300.0) -> dict[str, Any]:
        """Wait until the job asks for payment; its funding call."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            job = self.call("GET", f"/api/v1/jobs/{job_id}").json()
            if job["state"] == "awaiting-payment" and job.get("funding"):
                return dict(job["funding"])
            if job["state"] in ("failed", "cancelled", "done"):
                raise ConfigError(f"job {job_id} ended before payment: {job['state']} ({job.get('error')})")
            time.sleep(0.3)
        raise ConfigError(f"job {job_id} did not ask for payment within {timeout:.0f} s")

    def pay(self, job_id: str, funding: dict[str, Any], rpc_url: str) -> str:
        """Sign and send the funding transaction from this wallet (web3, as
        ``eth_sendTransaction`` would), tell the node its hash, wait for the receipt."""
        from web3 import Web3

        w3 = Web3(Web3.HTTPProvider(rpc_url, request_kwargs={"timeout": 30}))
        tx: dict[str, Any] = {"from": self.address, "to": Web3.to_checksum_address(funding["to"]),
                              "data": funding["data"], "value": int(funding["value"]),
                              "chainId": int(funding["chain_id"]),
                              "nonce": w3.eth.get_transaction_count(self.address, "pending"),
                              "gasPrice": w3.eth.gas_price}
        tx["gas"] = int(w3.eth.estimate_gas(tx) * 1.25)
        signed = self.account.sign_transaction(tx)
        tx_hash = "0x" + bytes(w3.eth.send_raw_transaction(signed.raw_transaction)).hex()
        self.call("POST", f"/api/v1/jobs/{job_id}/funding", json={"tx_hash": tx_hash})
        receipt = w3.eth.wait_for_transaction_receipt(tx_hash, timeout=120)
        if receipt["status"] != 1:
            raise ConfigError(f"the funding transaction {tx_hash} reverted")
        return tx_hash

    def fetch_result(self, job_id: str, output: Path) -> dict[str, Any]:
        """Download the sealed result, check the ciphertext's and the plaintext's sha256, open
        it with the wallet-derived key (origin and chain from the job) and write ``output``."""
        from fedswarm.learning.weights import load_weights_bytes
        from fedswarm.storage.download import download_bytes

        job = self.call("GET", f"/api/v1/jobs/{job_id}").json()
        result = job.get("result") or {}
        if result.get("envelope") != wallet_envelope.ENVELOPE:
            raise ConfigError(f"the result of {job_id} is not sealed to a wallet (envelope {result.get('envelope')})")
        chain_id = int((job.get("funding") or {}).get("chain_id") or self.node()["chain"]["id"])
        link = self.call("GET", f"/api/v1/jobs/{job_id}/result/link").json()
        data = download_bytes(link["url"], max_bytes=4 << 30, sha256=link["sha256"])
        try:
            plain = wallet_envelope.open_bytes(data, self.result_seed(result["key_origin"], chain_id), job_id)
        except wallet_envelope.EnvelopeError as exc:
            raise ConfigError(f"{exc}") from None
        digest = hashlib.sha256(plain).hexdigest()
        if link.get("plain_sha256") and digest != link["plain_sha256"]:
            raise ConfigError(f"the decrypted result's sha256 {digest} is not the recorded {link['plain_sha256']}")
        load_weights_bytes(plain)  # a valid safetensors file, or a clear error
        output.write_bytes(plain)
        return {"path": str(output), "sha256": digest, "ciphertext_sha256": link["sha256"], "size": len(plain)}
