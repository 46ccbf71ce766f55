"""A local stand-in for Hedera's JSON-RPC relay in front of anvil: the same value units.

On Hedera, values on the RPC (a transaction's ``value``, ``eth_getBalance``, gas prices, a
receipt's ``effectiveGasPrice``) are weibar (10^-18 HBAR) while inside the EVM (``msg.value``,
balances the contract keeps, amounts passed as arguments) they are tinybar (10^-8 HBAR). Plain
anvil speaks wei on both sides, so a client that forgets to convert works there and is off by
10^10 on Hedera. This relay makes anvil's EVM hold tinybar and speaks weibar outside, as the
hiero JSON-RPC relay does:

- ``eth_getBalance`` answers weibar (the EVM's balance × 10^10); ``eth_gasPrice`` answers a
  fixed network price in weibar (Hedera prices gas by its fee schedule, not by a market);
- ``eth_sendRawTransaction`` takes a locally signed transaction, checks it as the relay's
  prechecks do (chain id, value, gas price, balance, nonce), and executes it in the EVM with its
  value divided by 10^10, paying the network's gas price in tinybar (Hedera charges that price
  whatever the transaction offered above it). A signed transaction cannot be re-signed with
  another value, so it runs as the same sender through anvil's impersonation (same from, to,
  data, nonce and gas); the hash the client computed from its signed bytes is what the relay answers
  and what receipts, transactions and logs carry (the relay keeps the mapping, on disk);
- a nonzero value under 1 tinybar is refused (``VALUE_TOO_LOW``, code -32602); a value that is
  not a whole number of tinybar loses its sub-tinybar rest (Hedera truncates it);
- ``eth_call`` / ``eth_estimateGas`` take ``value`` in weibar too;
- ``eth_sendTransaction`` and the other signing methods are refused: the relay holds no keys.

Everything else (blocks, code, logs, nonces, anvil's ``evm_*`` / ``anvil_*`` devnet methods)
is forwarded; the devnet methods speak the EVM's own units (tinybar).

Run as its own process (``python -m fedswarm.ledger.unitsrelay --upstream URL``, one JSON line
on stdout when ready) or through :func:`start_units_relay`.
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import rlp
from eth_account import Account
from eth_account._utils.legacy_transactions import Transaction as LegacyTransaction
from eth_account.typed_transactions import TypedTransaction
from eth_utils import keccak, to_checksum_address
from hexbytes import HexBytes

from fedswarm.ledger.hedera import WEIBAR_PER_TINYBAR
from fedswarm.tools import serve_announcing, spawn_announcing

log = logging.getLogger(__name__)

# Gas price of the devnet's Hedera mode, tinybar per gas. Hedera sets it from its fee schedule
# (USD per gas at the day's exchange rate); what matters here is that it is fixed and that the
# RPC shows it in weibar.
DEFAULT_GAS_PRICE_TINYBAR = 71
MAX_BODY = 8 * 1024 * 1024
HASHES_FILE = "relay-hashes.jsonl"
_SIGNING_METHODS = frozenset({
    "eth_sendTransaction", "eth_sign", "eth_signTransaction", "eth_signTypedData",
    "eth_signTypedData_v4", "personal_sign", "eth_accounts",
})
_GAS_PRICE_KEYS = ("gasPrice", "maxFeePerGas", "maxPriorityFeePerGas")


class RelayRpcError(Exception):
    """A JSON-RPC error the relay answers with (code and message as the hiero relay's)."""

    def __init__(self, code: int, message: str, data: Any = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.data = data  # a revert's data: the client decodes custom errors from it

    def as_json(self) -> dict[str, Any]:
        """The ``error`` member of the answer."""
        err: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.data is not None:
            err["data"] = self.data
        return err


def value_too_low() -> RelayRpcError:
    """The relay's answer to a nonzero value under one tinybar."""
    return RelayRpcError(-32602, "Value can't be non-zero and less than 10_000_000_000 wei"
                                 " which is 1 tinybar")


def weibar_to_tinybar(value: int) -> int:
    """The tinybar a weibar ``value`` carries into the EVM: refused under 1 tinybar (nonzero),
    truncated otherwise, as Hedera does."""
    if value < 0 or 0 < value < WEIBAR_PER_TINYBAR:
        raise value_too_low()
    return value // WEIBAR_PER_TINYBAR


def _int(v: Any) -> int:
    if v is None:
        return 0
    return int(v, 16) if isinstance(v, str) else int(v)


class HashBook:
    """The two-way map between the hashes clients signed (outer) and anvil's (inner), appended
    to a JSON-lines file so a restarted relay still answers for old transactions."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._lock = threading.Lock()
        self.inner: dict[str, str] = {}
        self.outer: dict[str, str] = {}
        if path is not None and path.exists():
            for line in path.read_text().splitlines():
                try:
                    rec = json.loads(line)
                    self._put(rec["outer"], rec["inner"])
                except (ValueError, KeyError, TypeError):
                    continue  # a torn last line from a crash: that one mapping is lost

    def _put(self, outer: str, inner: str) -> None:
        self.inner[outer.lower()] = inner.lower()
        self.outer[inner.lower()] = outer.lower()

    def add(self, outer: str, inner: str) -> None:
        """Record that the client's ``outer`` hash ran in the EVM as ``inner``."""
        with self._lock:
            self._put(outer, inner)
            if self.path is not None:
                with open(self.path, "a") as fh:
                    fh.write(json.dumps({"outer": outer.lower(), "inner": inner.lower()}) + "\n")

    def to_inner(self, h: str) -> str:
        """anvil's hash for a client's hash (itself when unknown: sent to anvil directly)."""
        return self.inner.get(str(h).lower(), h)

    def to_outer(self, h: str) -> str:
        """The client's hash for anvil's hash (itself when unknown)."""
        return self.outer.get(str(h).lower(), h)


class UnitsRelay:
    """The relay's logic, one JSON-RPC request at a time (thread-safe)."""

    def __init__(self, upstream: str, chain_id: int, *, gas_price_tinybar: int = DEFAULT_GAS_PRICE_TINYBAR,
                 hashes: HashBook | None = None, timeout: float = 30.0) -> None:
        self.upstream = upstream
        self.chain_id = chain_id
        self.gas_price_tinybar = gas_price_tinybar
        self.hashes = hashes or HashBook(None)
        self.http = httpx.Client(timeout=timeout)
        self._send_lock = threading.Lock()
        self._handlers: dict[str, Callable[[list[Any]], Any]] = {
            "eth_getBalance": self._get_balance,
            "eth_gasPrice": lambda p: hex(self.gas_price_weibar),
            "eth_maxPriorityFeePerGas": lambda p: "0x0",
            "eth_call": lambda p: self.upstream_call("eth_call", [self._call_in(p[0]), *p[1:]]),
            "eth_estimateGas": lambda p: self.upstream_call("eth_estimateGas",
                                                            [self._call_in(p[0]), *p[1:]]),
            "eth_sendRawTransaction": lambda p: self.send_raw(str(p[0])),
            "eth_getTransactionReceipt": self._receipt,
            "eth_getTransactionByHash": self._transaction,
            "eth_getLogs": lambda p: [self._log_out(lg) for lg in self.upstream_call("eth_getLogs", p)],
            "eth_getBlockByNumber": lambda p: self._block_out(self.upstream_call("eth_getBlockByNumber", p)),
            "eth_getBlockByHash": lambda p: self._block_out(self.upstream_call("eth_getBlockByHash", p)),
        }

    @property
    def gas_price_weibar(self) -> int:
        """The network's gas price as the RPC shows it."""
        return self.gas_price_tinybar * WEIBAR_PER_TINYBAR

    def prepare(self) -> None:
        """Let the relay run any sender's transactions (impersonation) and price blocks at
        zero, so the fixed gas price is always enough."""
        self.upstream_call("anvil_autoImpersonateAccount", [True])
        self.upstream_call("anvil_setNextBlockBaseFeePerGas", ["0x0"])

    # ------------------------------------------------------------------ JSON-RPC

    def handle(self, request: Any) -> dict[str, Any]:
        """Answer one JSON-RPC request object."""
        rid = request.get("id") if isinstance(request, dict) else None
        if not isinstance(request, dict) or not isinstance(request.get("method"), str):
            return {"jsonrpc": "2.0", "id": rid, "error": {"code": -32600, "message": "Invalid request"}}
        method, params = request["method"], request.get("params") or []
        try:
            if method in _SIGNING_METHODS:
                raise RelayRpcError(-32601, "Unsupported JSON-RPC method")
            handler = self._handlers.get(method)
            result = handler(params) if handler else self.upstream_call(method, params)
        except RelayRpcError as exc:
            return {"jsonrpc": "2.0", "id": rid, "error": exc.as_json()}
        except (ValueError, TypeError, IndexError, KeyError, rlp.DecodingError) as exc:
            return {"jsonrpc": "2.0", "id": rid,
                    "error": {"code": -32602, "message": f"Invalid parameter: {exc}"}}
        except httpx.HTTPError as exc:
            return {"jsonrpc": "2.0", "id": rid,
                    "error": {"code": -32603, "message": f"Error invoking RPC: {type(exc).__name__}"}}
        return {"jsonrpc": "2.0", "id": rid, "result": result}

    def upstream_call(self, method: str, params: list[Any]) -> Any:
        """Call anvil; its errors come back as :class:`RelayRpcError` unchanged."""
        r = self.http.post(self.upstream, json={"jsonrpc": "2.0", "id": 1, "method": method,
                                                "params": params})
        r.raise_for_status()
        body = r.json()
        if "error" in body:
            err = body["error"]
            raise RelayRpcError(int(err.get("code", -32000)), str(err.get("message", "")), err.get("data"))
        return body.get("result")

    # ------------------------------------------------------------------ methods

    def _get_balance(self, params: list[Any]) -> str:
        return hex(_int(self.upstream_call("eth_getBalance", params)) * WEIBAR_PER_TINYBAR)

    def _call_in(self, call: dict[str, Any]) -> dict[str, Any]:
        out = dict(call)
        if out.get("value") is not None:
            out["value"] = hex(weibar_to_tinybar(_int(out["value"])))
        for k in _GAS_PRICE_KEYS:
            if out.get(k) is not None:
                out[k] = hex(_int(out[k]) // WEIBAR_PER_TINYBAR)
        return out

    def send_raw(self, raw_hex: str) -> str:
        """Check and run a signed transaction; returns the hash of the client's signed bytes."""
        raw = bytes.fromhex(raw_hex.removeprefix("0x"))
        outer = "0x" + keccak(raw).hex()
        tx = decode_raw_transaction(raw)
        if tx["chainId"] is not None and tx["chainId"] != self.chain_id:
            raise RelayRpcError(-32000, f"ChainId ({hex(tx['chainId'])}) not supported. The correct"
                                        f" chainId is {hex(self.chain_id)}")
        value = weibar_to_tinybar(tx["value"])
        price = tx["gasPrice"] if tx["gasPrice"] is not None else tx["maxFeePerGas"]
        if price < self.gas_price_weibar:
            raise RelayRpcError(-32009, f"Gas price '{price}' is below configured minimum gas"
                                        f" price '{self.gas_price_weibar}'")
        sender = tx["from"]
        with self._send_lock:  # one check-then-send at a time, so the nonce check holds
            if outer in self.hashes.inner:
                return outer  # the same signed bytes again: already taken
            balance = _int(self.upstream_call("eth_getBalance", [sender, "latest"])) * WEIBAR_PER_TINYBAR
            if balance < tx["value"] + price * tx["gas"]:
                raise RelayRpcError(-32000, "Insufficient funds for transfer")
            nonce = _int(self.upstream_call("eth_getTransactionCount", [sender, "pending"]))
            if tx["nonce"] < nonce:
                raise RelayRpcError(32001, f"Nonce too low. Provided nonce: {tx['nonce']},"
                                           f" current nonce: {nonce}")
            inner_tx: dict[str, Any] = {"from": sender, "value": hex(value), "gas": hex(tx["gas"]),
                                        "nonce": hex(tx["nonce"]), "data": "0x" + tx["data"].hex()}
            if tx["to"]:
                inner_tx["to"] = tx["to"]
            # Hedera charges the network's price whatever the transaction offered above it.
            inner_tx["gasPrice"] = hex(self.gas_price_tinybar)
            inner = self.upstream_call("eth_sendTransaction", [inner_tx])
            self.hashes.add(outer, str(inner))
        return outer

    def _receipt(self, params: list[Any]) -> Any:
        outer = str(params[0])
        r = self.upstream_call("eth_getTransactionReceipt", [self.hashes.to_inner(outer)])
        if r is None:
            return None
        r = dict(r)
        r["transactionHash"] = self.hashes.to_outer(r["transactionHash"])
        r["logs"] = [self._log_out(lg) for lg in r.get("logs") or []]
        if r.get("effectiveGasPrice") is not None:
            r["effectiveGasPrice"] = hex(_int(r["effectiveGasPrice"]) * WEIBAR_PER_TINYBAR)
        return r

    def _transaction(self, params: list[Any]) -> Any:
        t = self.upstream_call("eth_getTransactionByHash", [self.hashes.to_inner(str(params[0]))])
        return self._tx_out(t) if t is not None else None

    def _tx_out(self, t: dict[str, Any]) -> dict[str, Any]:
        t = dict(t)
        t["hash"] = self.hashes.to_outer(t["hash"])
        t["value"] = hex(_int(t.get("value")) * WEIBAR_PER_TINYBAR)
        for k in _GAS_PRICE_KEYS:
            if t.get(k) is not None:
                t[k] = hex(_int(t[k]) * WEIBAR_PER_TINYBAR)
        return t

    def _log_out(self, lg: dict[str, Any]) -> dict[str, Any]:
        lg = dict(lg)
        if lg.get("transactionHash"):
            lg["transactionHash"] = self.hashes.to_outer(lg["transactionHash"])
        return lg

    def _block_out(self, b: Any) -> Any:
        if not isinstance(b, dict):
            return b
        b = dict(b)
        b["baseFeePerGas"] = hex(self.gas_price_weibar)  # Hedera's blocks show the fixed price
        b["transactions"] = [self._tx_out(t) if isinstance(t, dict) else self.hashes.to_outer(t)
                             for t in b.get("transactions") or []]
        return b


def decode_raw_transaction(raw: bytes) -> dict[str, Any]:
    """A signed transaction's fields and its recovered sender (legacy or EIP-2718 typed)."""
    if raw and raw[0] <= 0x7F:
        typed = TypedTransaction.from_bytes(HexBytes(raw)).as_dict()
        fields = {"chainId": _int(typed.get("chainId")), "gasPrice": typed.get("gasPrice"),
                  "maxFeePerGas": typed.get("maxFeePerGas"),
                  "maxPriorityFeePerGas": typed.get("maxPriorityFeePerGas"),
                  "nonce": _int(typed["nonce"]), "gas": _int(typed["gas"]),
                  "to": typed.get("to") or None, "value": _int(typed.get("value")),
                  "data": bytes(typed.get("data") or b"")}
    else:
        t = rlp.decode(raw, LegacyTransaction)
        v = int(t.v)
        fields = {"chainId": (v - 35) // 2 if v >= 35 else None, "gasPrice": int(t.gasPrice),
                  "maxFeePerGas": None, "maxPriorityFeePerGas": None, "nonce": int(t.nonce),
                  "gas": int(t.gas), "to": bytes(t.to) or None, "value": int(t.value),
                  "data": bytes(t.data)}
    for k in _GAS_PRICE_KEYS:
        if fields[k] is not None:
            fields[k] = _int(fields[k])
    if fields["to"] is not None:
        fields["to"] = to_checksum_address(fields["to"])
    fields["from"] = Account.recover_transaction(raw)
    return fields


# ---------------------------------------------------------------------- server


class _Handler(BaseHTTPRequestHandler):
    relay: UnitsRelay

    def log_message(self, fmt: str, *args: Any) -> None:
        log.debug("%s " + fmt, self.address_string(), *args)

    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        length = int(self.headers.get("Content-Length") or 0)
        if length <= 0 or length > MAX_BODY:
            self._reply(413 if length > MAX_BODY else 400, {"error": "bad body length"})
            return
        try:
            body = json.loads(self.rfile.read(length))
        except ValueError:
            self._reply(200, {"jsonrpc": "2.0", "id": None,
                              "error": {"code": -32700, "message": "Unable to parse JSON"}})
            return
        if isinstance(body, list):
            self._reply(200, [self.relay.handle(r) for r in body])
        else:
            self._reply(200, self.relay.handle(body))

    def _reply(self, status: int, obj: Any) -> None:
        data = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


def make_server(relay: UnitsRelay, host: str = "127.0.0.1", port: int = 0) -> ThreadingHTTPServer:
    """An HTTP server for ``relay`` bound to ``host:port`` (not yet serving)."""
    handler = type("Handler", (_Handler,), {"relay": relay})
    return _Server((host, port), handler)


def start_units_relay(
    upstream: str, chain_id: int, state_dir: Path, port: int = 0, *, host: str = "127.0.0.1",
    gas_price_tinybar: int = DEFAULT_GAS_PRICE_TINYBAR, timeout: float = 60.0,
) -> tuple[subprocess.Popen[bytes], dict[str, Any]]:
    """Start the relay in its own process in front of anvil at ``upstream``; wait until it
    serves. Returns ``(popen, {"rpc_url", "upstream", "gas_price_weibar", "pid"})``; the hash
    map lives in ``state_dir``."""
    state_dir = Path(state_dir).expanduser().resolve()
    state_dir.mkdir(parents=True, exist_ok=True)
    proc, info = spawn_announcing(
        [sys.executable, "-m", "fedswarm.ledger.unitsrelay", "--upstream", upstream,
         "--chain-id", str(chain_id), "--state", str(state_dir / HASHES_FILE), "--host", host,
         "--port", str(port), "--gas-price-tinybar", str(gas_price_tinybar)],
        state_dir / "relay.log", "the units relay", timeout)
    info["pid"] = proc.pid
    return proc, info


def main(argv: list[str] | None = None) -> int:
    """Serve until SIGTERM/SIGINT."""
    parser = argparse.ArgumentParser(prog="python -m fedswarm.ledger.unitsrelay")
    parser.add_argument("--upstream", required=True, help="anvil's JSON-RPC URL")
    parser.add_argument("--chain-id", type=int, required=True)
    parser.add_argument("--state", type=Path, default=None, help="hash map file (JSON lines)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--gas-price-tinybar", type=int, default=DEFAULT_GAS_PRICE_TINYBAR)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    relay = UnitsRelay(args.upstream, args.chain_id, gas_price_tinybar=args.gas_price_tinybar,
                       hashes=HashBook(args.state))
    relay.prepare()
    server = make_server(relay, args.host, args.port)
    host, port = server.server_address[:2]
    return serve_announcing(server, {"rpc_url": f"http://{host}:{port}", "upstream": args.upstream,
                                     "gas_price_weibar": relay.gas_price_weibar})


if __name__ == "__main__":
    sys.exit(main())
