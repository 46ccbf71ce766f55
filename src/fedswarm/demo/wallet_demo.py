"""``fedswarm demo --wallet``: the demo's job submitted and paid by a separate wallet (a fresh
key the devnet faucet funds; not the client node's), through the HTTP API the browser uses
(:class:`~fedswarm.demo.wallet_user.WalletUser`), and its own checks:

- the wallet paid the escrow (payer = wallet, operator = the client node) and got its refund
  (withdrawn by the wallet: its balance moved by exactly deposit - refund + its own gas);
- the client node's balance moved by gas only (every transaction it sent carried no value and
  the balance change equals their fees);
- a second wallet gets 403 on the first wallet's job;
- the result opened with the wallet-derived key matches the recorded plaintext sha256, and no
  file under the demo's work dir other than the user's output holds the plaintext.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from pathlib import Path
from typing import Any

import httpx

from fedswarm.demo import chain
from fedswarm.demo.wallet_user import WalletUser
from fedswarm.ledger.escrow import EscrowV2

WALLET_FUNDS_WEI = 10 * 10**18
SCAN_MAX_BYTES = 512 << 20  # files bigger than this are not scanned (the demo's are far smaller)


class WalletRun:
    """The wallet side of one demo job (state carried from submission to the report)."""

    def __init__(self, api: str, devnet: Any, operator: str) -> None:
        from fedswarm.devnet.services import fund_address

        self.devnet = devnet
        self.escrow: EscrowV2 = chain.reader(devnet)
        self.user = WalletUser(api, "0x" + secrets.token_hex(32))
        self.stranger = WalletUser(api, "0x" + secrets.token_hex(32))
        for who in (self.user, self.stranger):
            fund_address(devnet.state, who.address, WALLET_FUNDS_WEI)
        self.operator = operator
        self.start_block = self.escrow.block_number()
        self.operator_before = self.escrow.balance(operator)
        self.payer_before = self.escrow.balance(self.user.address)
        self.fund_tx: str | None = None
        self.job_id = ""
        self.delegate_seen: str | None = None

    def check_delegate(self, bootstrap_api: str, client_peer: str, url: str, timeout: float = 30.0) -> None:
        """The client's ``--public-api`` URL as the bootstrap's mesh summary shows it (it went
        heartbeat -> bootstrap directory -> summary)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            peers = httpx.get(f"{bootstrap_api}/api/v1/mesh", timeout=10).json().get("peers", [])
            self.delegate_seen = next((p.get("api") for p in peers if p.get("peer_id") == client_peer), None)
            if self.delegate_seen == url:
                return
            time.sleep(0.3)

    def submit_and_pay(self, dataset: Path, terms: dict[str, Any], model: str | None, console: Any) -> str:
        """Sign in, submit with the wallet's result key, pay the funding call; the job id."""
        self.user.sign_in()
        self.stranger.sign_in()
        self.job_id = self.user.submit(dataset, terms, model)
        with console.status("waiting for bids and the funding call"):
            funding = self.user.wait_funding(self.job_id)
        console.print(f"the wallet {self.user.address} pays {funding['total_wei']} for "
                      f"{len(funding['trainers'])} trainers (operator {funding['operator']})")
        self.fund_tx = self.user.pay(self.job_id, funding, self.devnet.state["chain"]["rpc_url"])
        return self.job_id

    def report(self, job: dict[str, Any], root: Path) -> dict[str, Any]:
        """The wallet part of the report (after the job ended and its escrow was released)."""
        esc = self.escrow
        key = bytes.fromhex(str(job["escrow"]["job_key"]).removeprefix("0x")) if job["escrow"].get("job_key") else None
        refund = esc.pending(self.user.address)
        withdraw_fee = 0
        if refund > 0:
            payer = chain.reader(self.devnet, self.user.account.key.hex())
            withdraw_fee = payer.withdraw().fee
        view = esc.job(key) if key else None
        operator_fees, operator_value = self._sent_by(self.operator)
        payer_fees, payer_value = self._sent_by(self.user.address)
        operator_spent = self.operator_before - esc.balance(self.operator)
        payer_spent = self.payer_before - esc.balance(self.user.address)
        stranger = self.stranger.call("GET", f"/api/v1/jobs/{self.job_id}", ok=(200, 403))
        stranger_list = self.stranger.call("GET", "/api/v1/jobs").json()["jobs"]
        out: dict[str, Any] = {
            "payer": self.user.address, "operator": self.operator,
            "operator_spent_wei": operator_spent, "operator_fees_wei": operator_fees,
            "payer_refund_wei": refund, "payer_spent_wei": payer_spent, "payer_fees_wei": payer_fees,
            "fund_tx": self.fund_tx, "stranger_status": stranger.status_code, "delegate_api": self.delegate_seen,
        }
        deposited = int(job.get("deposited_wei") or 0)
        checks = {
            "payer_is_wallet": bool(view) and view.payer.lower() == self.user.address.lower(),
            "operator_is_node": bool(view) and view.operator.lower() == self.operator.lower(),
            "operator_gas_only": operator_value == 0 and 0 < operator_spent == operator_fees,
            "payer_refunded": refund > 0 and payer_spent == deposited - refund + payer_fees
            and payer_value == deposited and withdraw_fee > 0,
            "stranger_refused": stranger.status_code == 403 and stranger_list == [],
            "delegate_advertised": self.delegate_seen == self.user.base,
        }
        result = self._result(job, root)
        checks["result_decrypted"] = result["decrypted"]
        checks["no_plaintext_left"] = result["decrypted"] and not result["plaintext_copies"]
        checks["node_serves_no_plaintext"] = result.get("node_plaintext_status") == 409
        out["result"] = result
        out["checks"] = checks
        out["ok"] = all(checks.values())
        return out

    def _sent_by(self, address: str) -> tuple[int, int]:
        """(fees, value) of every transaction ``address`` sent since the demo began, in
        contract units, read block by block from the chain."""
        ledger = self.escrow.ledger
        w3, units = ledger.w3, ledger.units
        fees = value = 0
        for n in range(self.start_block, self.escrow.block_number() + 1):
            block = w3.eth.get_block(n, full_transactions=True)
            for tx in block["transactions"]:
                if str(tx["from"]).lower() != address.lower():
                    continue
                receipt = w3.eth.get_transaction_receipt(tx["hash"])
                fees += units.from_rpc(int(receipt["gasUsed"]) * int(receipt["effectiveGasPrice"]))
                value += units.from_rpc(int(tx["value"]))
        return fees, value

    def _result(self, job: dict[str, Any], root: Path) -> dict[str, Any]:
        """Open the result with the wallet-derived key, then look for the plaintext anywhere
        else under ``root``."""
        out: dict[str, Any] = {"path": None, "sha256": None, "decrypted": False, "decrypted_by": None,
                               "plaintext_copies": [], "other_key_refused": False}
        if job["state"] != "done":
            return out
        path = root / f"{self.job_id}.safetensors"
        got = self.user.fetch_result(self.job_id, path)
        out.update(path=got["path"], sha256=got["sha256"], decrypted=True, decrypted_by="wallet",
                   ciphertext_sha256=got["ciphertext_sha256"])
        # the stranger cannot fetch it (403), nor open it with its own key
        try:
            self.stranger.fetch_result(self.job_id, root / "stranger.safetensors")
        except Exception:
            out["other_key_refused"] = True
        out["plaintext_copies"] = plaintext_copies(root, path.read_bytes(), exclude={path})
        # the node serves no plaintext for a wallet job
        r = httpx.get(f"{self.user.base}/api/v1/jobs/{self.job_id}/result", timeout=30)
        out["node_plaintext_status"] = r.status_code
        return out


def plaintext_copies(root: Path, plain: bytes, exclude: set[Path]) -> list[str]:
    """Files under ``root`` (but ``exclude``) that are or contain the plaintext, or its tensor
    bytes (a safetensors file minus its header), by content."""
    digest = hashlib.sha256(plain).hexdigest()
    header = int.from_bytes(plain[:8], "little") if len(plain) >= 8 else 0
    body = plain[8 + header:] if 8 + header < len(plain) else b""
    needles = [n for n in (plain, body) if len(n) >= 64]
    found = []
    for p in sorted(root.rglob("*")):
        if p in exclude or not p.is_file() or p.is_symlink():
            continue
        try:
            if p.stat().st_size > SCAN_MAX_BYTES:
                continue
            data = p.read_bytes()
        except OSError:
            continue
        if hashlib.sha256(data).hexdigest() == digest or any(n in data for n in needles):
            found.append(str(p.relative_to(root)))
    return found


def wait_done(api: str, job_id: str, timeout: float = 900) -> dict[str, Any]:
    """The job's detail once it ended (read with the node's local access)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = httpx.get(f"{api}/api/v1/jobs/{job_id}", timeout=30).json()
        if job.get("state") in ("done", "failed", "cancelled"):
            return dict(job)
        time.sleep(0.5)
    raise TimeoutError(f"job {job_id} did not end within {timeout:.0f} s")
