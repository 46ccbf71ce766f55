"""`Ledger`: the synchronous web3.py client of the FedSwarmEscrow contract.

One client for anvil (devnet) and Hedera's JSON-RPC relay: transactions are signed locally and
sent raw (the relay cannot sign), nonces come from a local counter that resyncs with the chain
after any send error, the chain id and gas price are cached, gas is estimated with a margin, and
receipts are awaited with a timeout. Transient RPC failures (connection errors, 5xx, 429) are
retried with backoff. Every amount in this API is in contract units (wei on anvil, tinybar on
Hedera); :class:`~fedswarm.ledger.hedera.ValueUnits` converts at the RPC boundary.

Nodes run trio: call these methods through ``trio.to_thread.run_sync``.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import requests
from eth_account.signers.local import LocalAccount
from eth_utils import keccak, to_checksum_address
from hexbytes import HexBytes
from web3 import Web3
from web3.exceptions import ContractLogicError, TimeExhausted, TransactionNotFound, Web3RPCError

from fedswarm.config import write_text_atomic
from fedswarm.ledger.contract import (
    ContractArtifact,
    JobInfo,
    TrainerTerms,
    UnitInfo,
    load_artifact,
)
from fedswarm.ledger.hedera import ValueUnits, known_relay_error

log = logging.getLogger(__name__)
T = TypeVar("T")

LOG_WINDOW = 500  # blocks per eth_getLogs call (Hedera's relay refuses larger windows)
_NONCE_ERRORS = ("nonce too low", "nonce too high", "already known", "replacement transaction",
                 "invalid nonce", "nonce has already been used")


class LedgerError(RuntimeError):
    """A ledger operation failed; the message is one line saying what and what to do."""


class TxReverted(LedgerError):
    """The contract rejected a call; ``reason`` is the decoded custom error or revert string."""

    def __init__(self, action: str, reason: str, tx_hash: str | None = None) -> None:
        self.action = action
        self.reason = reason
        self.tx_hash = tx_hash
        where = f" (tx {tx_hash})" if tx_hash else ""
        super().__init__(f"{action} reverted: {reason}{where}")


class TxTimeout(LedgerError):
    """No receipt arrived in time; the transaction may still be mined later."""


@dataclass(frozen=True)
class TxReceipt:
    """What a mined transaction left: hash, block, gas and the fee paid (contract units, like
    every amount of this API: tinybar on Hedera, whose relay reports gas prices in weibar)."""

    tx_hash: str
    block_number: int
    gas_used: int
    fee: int
    status: int


@dataclass(frozen=True)
class LedgerEvent:
    """One decoded contract event."""

    name: str
    args: dict[str, Any]
    block_number: int
    tx_hash: str
    log_index: int


class EventCursor:
    """The next block to read, persisted as a small JSON file (written atomically)."""

    def __init__(self, path: Path | str, start_block: int = 0) -> None:
        self.path = Path(path)
        self.start_block = start_block

    def load(self) -> int:
        """Next unread block (``start_block`` when the file does not exist yet)."""
        try:
            return int(json.loads(self.path.read_text())["next_block"])
        except FileNotFoundError:
            return self.start_block
        except (ValueError, KeyError, TypeError) as exc:
            raise LedgerError(f"event cursor {self.path} is corrupt ({exc}): delete it to re-read") from None

    def save(self, next_block: int) -> None:
        """Record that every block before ``next_block`` has been read."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(self.path, json.dumps({"next_block": next_block}))


class NonceManager:
    """Hands out consecutive nonces for one account; ``resync`` re-reads the chain's pending
    count (after a send error we cannot know whether the node took the nonce)."""

    def __init__(self, fetch: Callable[[], int]) -> None:
        self._fetch = fetch
        self._next: int | None = None
        self._lock = threading.Lock()

    def take(self) -> int:
        with self._lock:
            if self._next is None:
                self._next = self._fetch()
            n = self._next
            self._next += 1
            return n

    def resync(self) -> None:
        with self._lock:
            self._next = None


@dataclass
class _TxOptions:
    value: int = 0
    gas: int | None = None  # fixed gas skips estimation (tests use it to mine a failing tx)


@dataclass
class Ledger:
    """Client of one deployed FedSwarmEscrow for one signing account.

    Parameters: ``rpc_url`` (anvil or the Hedera relay), ``contract_address``, ``account`` (the
    local signer), ``units`` (value conversion), ``chain_id`` (read once if None),
    ``receipt_timeout`` seconds (Hedera receipts come from the mirror node, seconds late),
    ``gas_margin`` multiplier on estimates, ``retries`` for transient RPC errors.
    """

    rpc_url: str
    contract_address: str
    account: LocalAccount
    units: ValueUnits = field(default_factory=ValueUnits.native)
    chain_id: int | None = None
    receipt_timeout: float = 60.0
    gas_margin: float = 1.25
    retries: int = 4
    request_timeout: float = 30.0
    artifact: ContractArtifact = field(default_factory=load_artifact)

    def __post_init__(self) -> None:
        self.w3 = Web3(
            Web3.HTTPProvider(
                self.rpc_url,
                request_kwargs={"timeout": self.request_timeout},
                exception_retry_configuration=None,  # we retry ourselves, knowing what is safe
            )
        )
        self.contract_address = to_checksum_address(self.contract_address)
        self.contract = self.w3.eth.contract(address=self.contract_address, abi=self.artifact.abi)
        self.nonces = NonceManager(
            lambda: self._rpc(lambda: self.w3.eth.get_transaction_count(self.address, "pending"))
        )
        self._gas_price: tuple[float, int] | None = None
        self._topic_to_event = {
            HexBytes(keccak(text=_event_signature(e))): e["name"]
            for e in self.artifact.abi
            if e.get("type") == "event"
        }

    # ------------------------------------------------------------------ basics

    @property
    def address(self) -> str:
        """Checksummed address of the signing account."""
        return str(self.account.address)

    def get_chain_id(self) -> int:
        """The chain id, read once and cached (every signed transaction needs it)."""
        if self.chain_id is None:
            self.chain_id = int(self._rpc(lambda: self.w3.eth.chain_id))
        return self.chain_id

    def balance(self, address: str | None = None) -> int:
        """Wallet balance of ``address`` (default: ours) in contract units."""
        addr = to_checksum_address(address or self.address)
        return self.units.from_rpc(self._rpc(lambda: self.w3.eth.get_balance(addr)))

    def block_number(self) -> int:
        """The latest block number."""
        return int(self._rpc(lambda: self.w3.eth.block_number))

    # ------------------------------------------------------------------ contract writes

    def create_job(
        self, job_id: bytes, spec_hash: bytes, deadline: int, settle_window: int, amount: int
    ) -> TxReceipt:
        """Open job ``job_id`` (32 bytes) funded with ``amount``; we become its owner."""
        return self._transact(
            "createJob", [_b32(job_id), _b32(spec_hash), deadline, settle_window],
            _TxOptions(value=amount),
        )

    def add_trainers(
        self, job_id: bytes, trainers: Sequence[str], prices: Sequence[int], max_units: Sequence[int]
    ) -> TxReceipt:
        """Register trainers with their price per unit and unit cap (reserves price * cap)."""
        addrs = [to_checksum_address(a) for a in trainers]
        return self._transact(
            "addTrainers", [_b32(job_id), addrs, list(prices), list(max_units)], _TxOptions()
        )

    def commit_unit(self, job_id: bytes, round_: int, unit: int, update_hash: bytes) -> TxReceipt:
        """Commit the hash of our update for (round, unit)."""
        return self._transact(
            "commitUnit", [_b32(job_id), round_, unit, _b32(update_hash)], _TxOptions()
        )

    def settle(
        self,
        job_id: bytes,
        round_: int,
        units: Sequence[int],
        accepted: Sequence[bool],
        reason_hashes: Sequence[bytes],
    ) -> TxReceipt:
        """Accept (pay) or reject (release, with a reason hash) committed units of one round."""
        return self._transact(
            "settle",
            [_b32(job_id), round_, list(units), list(accepted), [_b32(h) for h in reason_hashes]],
            _TxOptions(),
        )

    def claim_unsettled(self, job_id: bytes, round_: int, unit: int) -> TxReceipt:
        """Claim payment for our unit the owner left unsettled past the settle window."""
        return self._transact("claimUnsettled", [_b32(job_id), round_, unit], _TxOptions())

    def complete_job(self, job_id: bytes, result_pointer: bytes) -> TxReceipt:
        """Close the job with its encrypted result pointer; free funds go to our pending balance."""
        return self._transact("completeJob", [_b32(job_id), bytes(result_pointer)], _TxOptions())

    def cancel_job(self, job_id: bytes) -> TxReceipt:
        """Cancel a job without commits; its whole escrow goes to our pending balance."""
        return self._transact("cancelJob", [_b32(job_id)], _TxOptions())

    def withdraw(self) -> TxReceipt:
        """Move our whole pending balance to our wallet."""
        return self._transact("withdraw", [], _TxOptions())

    def transfer(self, to: str, amount: int) -> TxReceipt:
        """Plain value transfer of ``amount`` contract units (used by the devnet faucet)."""
        return self._send(
            "transfer", {"to": to_checksum_address(to), "value": self.units.to_rpc(amount),
                         "data": b""}, gas=21_000,
        )

    # ------------------------------------------------------------------ contract views

    def pending(self, address: str | None = None) -> int:
        """Withdrawable balance credited to ``address`` (default: ours)."""
        addr = to_checksum_address(address or self.address)
        return int(self._call("pending", addr))

    def job(self, job_id: bytes) -> JobInfo:
        """A job's terms and money (status NONE if it does not exist)."""
        return JobInfo.from_tuple(self._call("job", _b32(job_id)))

    def trainer(self, job_id: bytes, address: str) -> TrainerTerms:
        """A trainer's registration for a job."""
        return TrainerTerms.from_tuple(self._call("trainer", _b32(job_id), to_checksum_address(address)))

    def unit(self, job_id: bytes, round_: int, unit: int) -> UnitInfo:
        """The state of one unit of work."""
        return UnitInfo.from_tuple(self._call("unitState", _b32(job_id), round_, unit))

    def result_pointer(self, job_id: bytes) -> bytes:
        """The result pointer recorded at completion (empty before)."""
        return bytes(self._call("resultPointer", _b32(job_id)))

    # ------------------------------------------------------------------ events

    def iter_events(
        self,
        from_block: int,
        to_block: int | None = None,
        window: int = LOG_WINDOW,
    ) -> Iterator[tuple[int, list[LedgerEvent]]]:
        """Yield ``(next_block, events)`` per window of at most ``window`` blocks, so a caller
        can persist its position after each page."""
        window = max(1, min(window, LOG_WINDOW))
        last = self.block_number() if to_block is None else to_block
        start = from_block
        while start <= last:
            end = min(start + window - 1, last)
            raw = self._rpc(
                lambda s=start, e=end: self.w3.eth.get_logs(
                    {"address": self.contract_address, "fromBlock": s, "toBlock": e}
                )
            )
            events = [ev for ev in (self._decode_log(lg) for lg in raw) if ev is not None]
            yield end + 1, events
            start = end + 1

    def read_events(
        self,
        cursor: EventCursor | Path | str | None = None,
        from_block: int = 0,
        to_block: int | None = None,
        window: int = LOG_WINDOW,
    ) -> list[LedgerEvent]:
        """All contract events from the cursor's position (or ``from_block``) to ``to_block``
        (default: latest), read in windows of ≤ 500 blocks; the cursor is saved after each
        window, so an interrupted read resumes where it stopped."""
        cur = EventCursor(cursor, from_block) if isinstance(cursor, str | Path) else cursor
        start = cur.load() if cur else from_block
        out: list[LedgerEvent] = []
        for next_block, events in self.iter_events(start, to_block, window):
            out.extend(events)
            if cur:
                cur.save(next_block)
        return out

    def _decode_log(self, lg: Any) -> LedgerEvent | None:
        if not lg["topics"]:
            return None
        name = self._topic_to_event.get(HexBytes(lg["topics"][0]))
        if name is None:
            return None
        ev = getattr(self.contract.events, name)().process_log(lg)
        return LedgerEvent(
            name=name,
            args=dict(ev["args"]),
            block_number=int(ev["blockNumber"]),
            tx_hash="0x" + bytes(ev["transactionHash"]).hex(),
            log_index=int(ev["logIndex"]),
        )

    # ------------------------------------------------------------------ generic access

    def transact(self, fn: str, args: Sequence[Any], value: int = 0, gas: int | None = None) -> TxReceipt:
        """Send contract function ``fn(*args)`` (with ``value`` contract units), signed locally,
        and wait for its receipt; clients of other contracts (the v2 escrow) build on this."""
        return self._transact(fn, list(args), _TxOptions(value=value, gas=gas))

    def call(self, fn: str, *args: Any) -> Any:
        """Call view ``fn(*args)``; a revert raises :class:`TxReverted` with the decoded error."""
        return self._call(fn, *args)

    def events_of(self, tx_hash: str) -> list[LedgerEvent]:
        """The contract's events emitted by one mined transaction, in log order."""
        r = self._rpc(lambda: self.w3.eth.get_transaction_receipt(HexBytes(tx_hash)))
        own = [lg for lg in r["logs"] if to_checksum_address(lg["address"]) == self.contract_address]
        return [ev for ev in (self._decode_log(lg) for lg in own) if ev is not None]

    # ------------------------------------------------------------------ machinery

    def _call(self, fn: str, *args: Any) -> Any:
        func = getattr(self.contract.functions, fn)(*args)
        try:
            return self._rpc(lambda: func.call({"from": self.address}))
        except ContractLogicError as exc:
            raise TxReverted(fn, self._reason(exc)) from None

    def _transact(self, fn: str, args: list[Any], opts: _TxOptions) -> TxReceipt:
        func = getattr(self.contract.functions, fn)(*args)
        tx = {
            "to": self.contract_address,
            "value": self.units.to_rpc(opts.value),
            "data": HexBytes(func._encode_transaction_data()),
        }
        return self._send(fn, tx, gas=opts.gas)

    def _send(self, action: str, tx: dict[str, Any], gas: int | None = None) -> TxReceipt:
        """Estimate, sign with the next nonce, send raw, wait for the receipt. Reverts found by
        the estimate cost nothing and consume no nonce."""
        tx = {**tx, "from": self.address, "chainId": self.get_chain_id()}
        if gas is None:
            try:
                estimate = self._rpc(lambda: self.w3.eth.estimate_gas(tx))
            except ContractLogicError as exc:
                raise TxReverted(action, self._reason(exc)) from None
            gas = int(estimate * self.gas_margin) + 1
        tx["gas"] = gas
        tx["gasPrice"] = self._current_gas_price()
        for attempt in range(self.retries + 1):
            tx["nonce"] = self.nonces.take()
            signed = self.account.sign_transaction(tx)
            tx_hash = HexBytes(signed.hash)
            try:
                self._rpc(lambda s=signed: self.w3.eth.send_raw_transaction(s.raw_transaction))
            except Web3RPCError as exc:
                self.nonces.resync()
                msg = str(exc).lower()
                if any(s in msg for s in _NONCE_ERRORS):
                    # Someone else used this account (or a previous send of ours did get
                    # through): if our very transaction is known, wait for it, else retry.
                    if self._known(tx_hash):
                        break
                    if attempt < self.retries:
                        log.info("nonce %s rejected (%s); resynced, retrying", tx["nonce"], msg[:80])
                        continue
                if "underpriced" in msg or "fee too low" in msg:
                    self._gas_price = None
                    tx["gasPrice"] = self._current_gas_price()
                    if attempt < self.retries:
                        continue
                known = known_relay_error(exc)
                raise LedgerError(f"{action}: {known}" if known else
                                  f"{action}: the node refused the transaction: {exc}") from None
            except LedgerError:
                # Transport failure after retries: the node may or may not have it.
                self.nonces.resync()
                if self._known(tx_hash):
                    break
                raise
            break
        return self._wait(action, tx, tx_hash)

    def _wait(self, action: str, tx: dict[str, Any], tx_hash: HexBytes) -> TxReceipt:
        deadline = time.monotonic() + self.receipt_timeout
        delay = 0.005  # anvil mines instantly; Hedera takes seconds: back off gently
        while True:
            try:
                r = self.w3.eth.get_transaction_receipt(tx_hash)
                if r is not None:
                    break
            except TransactionNotFound:
                pass
            except (requests.ConnectionError, requests.Timeout) as exc:
                log.debug("receipt poll failed (%s); retrying", exc)
            if time.monotonic() > deadline:
                raise TxTimeout(
                    f"{action}: no receipt for {tx_hash.to_0x_hex()} after {self.receipt_timeout:.0f} s;"
                    " it may still be mined: check it later or raise the timeout"
                )
            time.sleep(delay)
            delay = min(delay * 1.5, 1.0)
        fee = self.units.from_rpc(int(r["gasUsed"]) * int(r.get("effectiveGasPrice", tx["gasPrice"])))
        receipt = TxReceipt(
            tx_hash=tx_hash.to_0x_hex(),
            block_number=int(r["blockNumber"]),
            gas_used=int(r["gasUsed"]),
            fee=fee,
            status=int(r["status"]),
        )
        if receipt.status != 1:
            raise TxReverted(action, self._replay_reason(tx, receipt.block_number), receipt.tx_hash)
        return receipt

    def _replay_reason(self, tx: dict[str, Any], block: int) -> str:
        """Re-run a mined failed transaction as a call to learn why it reverted."""
        call = {k: tx[k] for k in ("from", "to", "value", "data", "gas") if k in tx}
        try:
            self.w3.eth.call(call, block - 1 if block > 0 else "latest")
        except ContractLogicError as exc:
            return self._reason(exc)
        except Exception as exc:  # the node cannot replay: say what we know
            return f"reverted on chain ({type(exc).__name__})"
        return "reverted on chain (out of gas?)"

    def _known(self, tx_hash: HexBytes) -> bool:
        try:
            self.w3.eth.get_transaction(tx_hash)
            return True
        except Exception:
            return False

    def _current_gas_price(self) -> int:
        # Cached for a few seconds: one RPC per transaction is a third of anvil's latency.
        now = time.monotonic()
        if self._gas_price is None or now - self._gas_price[0] > 5.0:
            price = int(self._rpc(lambda: self.w3.eth.gas_price))
            self._gas_price = (now, price)
        return self._gas_price[1]

    def _reason(self, exc: ContractLogicError) -> str:
        data = getattr(exc, "data", None)
        if isinstance(data, dict):  # some nodes nest it
            data = data.get("data")
        # Hedera's relay may put the decoded reason in the message and only "0x" in the data.
        if isinstance(data, str) and data.startswith("0x") and len(data) > 2:
            return self.artifact.decode_revert(data)
        msg = str(exc.args[0]) if exc.args else str(exc)
        return msg.removeprefix("execution reverted: ").strip() or "reverted"

    def _rpc(self, fn: Callable[[], T]) -> T:
        """Run one RPC, retrying transient transport failures with exponential backoff."""
        delay = 0.2
        for attempt in range(self.retries + 1):
            try:
                return fn()
            except (requests.ConnectionError, requests.Timeout) as exc:
                err: Exception = exc
            except requests.HTTPError as exc:
                status = exc.response.status_code if exc.response is not None else 0
                if status != 429 and status < 500:
                    raise LedgerError(f"RPC {self.rpc_url} answered HTTP {status}") from None
                err = exc
            except TimeExhausted as exc:
                err = exc
            if attempt == self.retries:
                if isinstance(err, requests.HTTPError) and known_relay_error(str(err)):
                    raise LedgerError(f"RPC {self.rpc_url}: {known_relay_error(str(err))}") from None
                raise LedgerError(
                    f"RPC {self.rpc_url} unreachable after {self.retries + 1} tries"
                    f" ({type(err).__name__}): is the chain running?"
                ) from None
            time.sleep(delay)
            delay = min(delay * 2, 5.0)
        raise AssertionError("unreachable")


def _b32(value: bytes | str) -> bytes:
    """A 32-byte value from bytes or hex; shorter bytes are an error, not silently padded."""
    if isinstance(value, str):
        value = bytes.fromhex(value.removeprefix("0x"))
    if len(value) != 32:
        raise ValueError(f"expected 32 bytes, got {len(value)}")
    return bytes(value)


def _event_signature(e: dict[str, Any]) -> str:
    return f"{e['name']}({','.join(i['type'] for i in e['inputs'])})"


def job_id_from(text: str) -> bytes:
    """A job id (bytes32) from ``0x``-hex of 32 bytes, or else keccak of the text (so human
    names like ``demo-1`` map to a stable id)."""
    t = text.strip()
    if t.startswith("0x") and len(t) == 66:
        return bytes.fromhex(t[2:])
    return keccak(text=t)
