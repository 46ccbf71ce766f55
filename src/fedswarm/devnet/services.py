"""The devnet: the local signed-URL store, anvil with the escrow contract and the local topic
log, each its own process on 127.0.0.1 with its data under one home directory.

Layout of ``home``::

    devnet.json        endpoints, chain id, contract address, dev keys, pids (0600)
    devnet.lock        held (flock) by the process that owns the running devnet
    store/             objects + the store's HMAC secret and log
    chain/             anvil's --state file, the deployment record and anvil.log
    audit/topics.db    the topic log (SQLite) and its log

Restarting on the same home keeps everything: objects, the chain (contract, balances) and the
topics. Ports of the previous run are reused when they are still free, so presigned URLs
handed out before a restart keep working.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import socket
import subprocess
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from fedswarm.config import (
    DEVNET_STATE_FILE,
    Settings,
    load_devnet_state,
    write_devnet_state,
)

log = logging.getLogger(__name__)

SERVICES = ("store", "chain", "audit")
LOCK_FILE = "devnet.lock"
# Where each service's URL sits in devnet.json (section, key).
ENDPOINT_KEYS = {"store": ("store", "url"), "chain": ("chain", "rpc_url"), "audit": ("audit", "url")}
STOP_TIMEOUT_S = 10.0
# Hedera finalises a transaction in ~2-3 s; the devnet mines on the same 2 s timer by default so
# any chain wait on a job's hot path shows up in tests, the demo and the benchmarks.
# 0 (``--block-time 0``) mines on every transaction instead.
DEFAULT_BLOCK_TIME_S = 2.0
# At block time 0 every transaction is mined at once, and an empty block still comes every
# second: on a chain mining only on transactions the clock stops while nobody sends one, and a
# call gated on time (a job's release) would never pass its gas estimate.
CLOCK_TICK_S = 1.0

Popen = subprocess.Popen  # the start functions return Popen[bytes]
Started = tuple[Popen[bytes], dict[str, Any]]  # a service's process and its part of the state


class DevnetError(RuntimeError):
    """The devnet could not be started, reached or used; the message says what to do."""


def devnet_settings(home: Path, **overrides: Any) -> Settings:
    """Settings pointing at the devnet under ``home`` (network devnet, ``devnet_home=home``).

    S3 variables from the environment are cleared so the devnet's own store is used (pass
    them in ``overrides`` to run a devnet against a local S3 server instead).
    """
    values: dict[str, Any] = {
        "network": "devnet",
        "devnet_home": Path(home).expanduser(),
        "aws_access_key_id": None,
        "aws_secret_access_key": None,
        "s3_endpoint": None,
    }
    values.update(overrides)
    return Settings(**values)


def endpoint_url(state: Mapping[str, Any], service: str) -> str | None:
    """The URL of ``service`` (store, chain, audit) recorded in a devnet state, if any."""
    section, key = ENDPOINT_KEYS[service]
    url = (state.get(section) or {}).get(key)
    return str(url) if url else None


def pid_alive(pid: int) -> bool:
    """True if a process ``pid`` exists and is not a zombie."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    try:
        # A zombie (exited, not yet reaped by its parent) is gone for our purposes.
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


class Devnet:
    """A running devnet owned by this process. Build with :meth:`start`; stop with :meth:`stop`
    (or use it as a context manager). While it runs, ``home/devnet.lock`` is held so a second
    devnet cannot start on the same home."""

    def __init__(self, home: Path, procs: dict[str, Popen[bytes]], state: dict[str, Any],
                 lock_fd: int, start_seconds: float) -> None:
        self.home = home
        self.procs = procs
        self.state = state
        self.start_seconds = start_seconds
        self._lock_fd: int | None = lock_fd

    # ------------------------------------------------------------------ lifecycle

    @classmethod
    def start(cls, home: Path, ports: Mapping[str, int] | None = None, *,
              block_time: float | None = DEFAULT_BLOCK_TIME_S, timeout: float = 90.0,
              host: str = "127.0.0.1", hedera_units: bool = False) -> Devnet:
        """Start the store, anvil (contract deployed, ``--state`` under ``home/chain``) and the
        audit log in parallel, wait until all answer and write ``home/devnet.json``.

        ``ports`` maps ``store``/``chain``/``audit`` to a port; a port given there must be
        free. Otherwise the previous run's port is reused when free, else the OS picks one.
        ``block_time`` (seconds, default 2) makes anvil mine on a timer like Hedera; 0 or None
        mines on every transaction (plus an empty block every CLOCK_TICK_S so the chain's
        clock moves). devnet.json records it as ``chain.block_time`` (0: instant).
        ``host`` is the address every service binds (loopback by default; another address
        only for a devnet that other machines or network namespaces must reach).
        ``hedera_units`` puts anvil behind the units relay (:mod:`fedswarm.ledger.unitsrelay`):
        the EVM holds tinybar and the RPC speaks weibar, as on Hedera; the chain's URL is then
        the relay's (``chain.anvil_url`` is anvil's) and ``chain.value_units`` says ``hedera``.
        Raises :class:`DevnetError` (nothing left running) if any service fails to start or
        another devnet already runs on ``home``.
        """
        t0 = time.monotonic()
        from fedswarm.ledger.anvil import start_anvil
        from fedswarm.ledger.auditserver import start_audit_server
        from fedswarm.storage.localstore import start_local_store

        home = Path(home).expanduser().resolve()
        if block_time is not None and not 0 <= block_time <= 60:
            raise DevnetError(f"block time {block_time} s is out of range: use 0 (mine on every "
                              "transaction) up to 60 seconds")
        block_time = float(block_time or 0)
        ports = dict(ports or {})
        unknown = set(ports) - set(SERVICES)
        if unknown:
            raise DevnetError(f"unknown service(s) in ports: {sorted(unknown)}; "
                              f"use {', '.join(SERVICES)}")
        home.mkdir(parents=True, exist_ok=True)
        os.chmod(home, 0o700)  # devnet.json and the store secret are credentials
        lock_fd = _take_lock(home)
        try:
            previous = _read_previous_state(home)
            _reap_orphans(home, previous)
            chosen = {s: _choose_port(s, ports.get(s), previous, host) for s in SERVICES}
            # In Hedera units the chain's endpoint (its port, reused across restarts) is the
            # relay's; anvil behind it takes any free port.
            anvil_port = 0 if hedera_units else chosen["chain"]
            starters: dict[str, Callable[[], Started]] = {
                "store": _reusing("store", chosen["store"], ports.get("store"),
                                  lambda port: start_local_store(home / "store", port, host)),
                "chain": _reusing("chain", anvil_port, ports.get("chain"),
                                  lambda port: start_anvil(home / "chain", port, block_time or CLOCK_TICK_S,
                                                           mixed=not block_time, host=host)),
                "audit": _reusing("audit", chosen["audit"], ports.get("audit"),
                                  lambda port: start_audit_server(home / "audit" / "topics.db", port, host=host)),
            }
            procs, info = _start_all(starters)
            chain_extra: dict[str, Any] = {"value_units": "native"}
            if hedera_units:
                chain_extra = _start_relay(home, info["chain"], chosen["chain"], host, procs)
        except BaseException:
            _release_lock(lock_fd)
            raise
        info["chain"] = {**info["chain"], **chain_extra, "block_time": block_time}
        state_update: dict[str, Any] = {
            **info,
            "network": "devnet",
            "home": str(home),
            "pids": {name: p.pid for name, p in procs.items()},
            "owner_pid": os.getpid(),
            "started_at": time.time(),
            "stopped_at": None,
        }
        state = write_devnet_state(home, state_update)
        elapsed = time.monotonic() - t0
        log.info("devnet up at %s in %.2f s", home, elapsed)
        return cls(home, procs, state, lock_fd, elapsed)

    def stop(self) -> None:
        """Stop every service (SIGTERM, then SIGKILL after 10 s) and release the home.
        Idempotent. anvil writes its state file on SIGTERM, so the chain survives."""
        if not self.procs and self._lock_fd is None:
            return
        stop_processes(list(self.procs.values()))
        self.procs = {}
        if self._lock_fd is not None:
            with contextlib.suppress(OSError):
                self.state = write_devnet_state(self.home, {"pids": {}, "stopped_at": time.time()})
            _release_lock(self._lock_fd)
            self._lock_fd = None

    def __enter__(self) -> Devnet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        """True while every service process is alive."""
        return bool(self.procs) and all(p.poll() is None for p in self.procs.values())

    def dead_services(self) -> list[str]:
        """Names of services whose process has exited."""
        return [name for name, p in self.procs.items() if p.poll() is not None]

    @property
    def pids(self) -> dict[str, int]:
        """``{"store": pid, "chain": pid, "audit": pid}`` of the running services."""
        return {name: p.pid for name, p in self.procs.items()}

    # ------------------------------------------------------------------ use

    def settings(self, **overrides: Any) -> Settings:
        """Settings pointing at this devnet (see :func:`devnet_settings`)."""
        return devnet_settings(self.home, **overrides)

    def endpoints(self) -> dict[str, str]:
        """``{"store": url, "chain": rpc_url, "audit": url}``."""
        return {s: url for s in SERVICES if (url := endpoint_url(self.state, s))}

    def fund_node(self, address: str, wei: int) -> str:
        """Send ``wei`` from the devnet faucet to ``address``; returns the transaction hash."""
        return fund_address(self.state, address, wei)

    def fund_identity(self, node_home: Path, wei: int) -> str:
        """Fund the wallet of the node whose keys live in ``node_home`` (created if missing);
        returns the wallet address."""
        from fedswarm.identity import load_identity

        address = load_identity(Path(node_home)).address
        self.fund_node(address, wei)
        return address


def fund_address(state: Mapping[str, Any], address: str, wei: int) -> str:
    """Send ``wei`` from the faucet of the devnet described by ``state`` to ``address``."""
    from web3 import Web3

    from fedswarm.ledger.anvil import fund
    from fedswarm.ledger.evm import LedgerError

    if not Web3.is_address(address):
        raise DevnetError(f"{address!r} is not an EVM address (0x followed by 40 hex digits)")
    if wei <= 0:
        raise DevnetError(f"the amount must be a positive number of wei, got {wei}")
    chain = state.get("chain")
    if not chain or not chain.get("faucet_key"):
        raise DevnetError("the devnet state has no chain faucet: restart `fedswarm devnet up`")
    try:
        return fund(chain, Web3.to_checksum_address(address), int(wei))
    except LedgerError as exc:
        raise DevnetError(f"funding {address} on the devnet chain failed: {exc}") from None


def fund_identity(node_home: Path, wei: int, devnet_home: Path | None = None) -> str:
    """Fund the wallet of the node at ``node_home`` from the running devnet at ``devnet_home``
    (default: ``Settings().devnet_dir()``); returns the wallet address."""
    from fedswarm.identity import load_identity

    settings = devnet_settings(devnet_home) if devnet_home else Settings()
    address = load_identity(Path(node_home)).address
    fund_address(settings.devnet_state(), address, wei)
    return address


def stop_processes(procs: list[Popen[bytes]], timeout: float = STOP_TIMEOUT_S) -> None:
    """SIGTERM every process, wait up to ``timeout`` s for each, then SIGKILL stragglers."""
    for p in procs:
        if p.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                p.terminate()
    deadline = time.monotonic() + timeout
    for p in procs:
        try:
            p.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            log.warning("pid %d ignored SIGTERM for %.0f s; killing it", p.pid, timeout)
            p.kill()
            p.wait()


# ---------------------------------------------------------------------- helpers


def _reusing(service: str, port: int, requested: int | None,
             start: Callable[[int], Started]) -> Callable[[], Started]:
    """``start`` on ``port``; when that is the last run's port (not one the user asked for) and
    another process took it between the check and the bind, on a free one instead."""
    def run() -> Started:
        try:
            return start(port)
        except Exception as exc:
            if requested or not port:
                raise
            log.warning("devnet %s: the last run's port %d was taken meanwhile (%s); using a free one",
                        service, port, exc)
            return start(0)
    return run


def _start_all(starters: Mapping[str, Callable[[], Started]]) -> tuple[dict[str, Popen[bytes]], dict[str, Any]]:
    # The three services start in parallel: each spends most of its start-up importing
    # Python modules or waiting for a port, so this cuts the devnet's start to the slowest one.
    procs: dict[str, Popen[bytes]] = {}
    info: dict[str, Any] = {}
    errors: list[str] = []
    with ThreadPoolExecutor(max_workers=len(starters), thread_name_prefix="devnet-start") as ex:
        futures = {name: ex.submit(fn) for name, fn in starters.items()}
        for name, fut in futures.items():
            try:
                proc, part = fut.result()
            except Exception as exc:  # noqa: BLE001 - reported below, all of them
                errors.append(f"{name}: {exc}")
                continue
            procs[name] = proc
            info.update(part)
    if errors:
        stop_processes(list(procs.values()))
        raise DevnetError("devnet failed to start: " + "; ".join(errors))
    return procs, info


def _start_relay(home: Path, chain: Mapping[str, Any], port: int, host: str,
                 procs: dict[str, Popen[bytes]]) -> dict[str, Any]:
    """Start the units relay in front of the devnet's anvil (added to ``procs`` as ``relay``);
    returns what the chain block gains. Stops every service if it fails."""
    from fedswarm.ledger.unitsrelay import start_units_relay

    try:
        proc, relay = start_units_relay(chain["rpc_url"], int(chain["chain_id"]), home / "chain",
                                        port, host=host)
    except Exception as exc:
        stop_processes(list(procs.values()))
        raise DevnetError(f"devnet failed to start: units relay: {exc}") from None
    procs["relay"] = proc
    return {"rpc_url": relay["rpc_url"], "anvil_url": chain["rpc_url"], "value_units": "hedera",
            "gas_price_weibar": relay["gas_price_weibar"]}


def _take_lock(home: Path) -> int:
    fd = os.open(home / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise DevnetError(
            f"a devnet is already running at {home} (check `fedswarm devnet status --home "
            f"{home}`); stop it first or use another --home"
        ) from None
    return fd


def _release_lock(fd: int) -> None:
    with contextlib.suppress(OSError):
        fcntl.flock(fd, fcntl.LOCK_UN)
    with contextlib.suppress(OSError):
        os.close(fd)


def _read_previous_state(home: Path) -> dict[str, Any]:
    if not (home / DEVNET_STATE_FILE).exists():
        return {}
    try:
        return load_devnet_state(home)
    except Exception:  # noqa: BLE001 - a corrupt old state only loses port reuse
        log.warning("ignoring unreadable %s", home / DEVNET_STATE_FILE)
        return {}


def _reap_orphans(home: Path, previous: Mapping[str, Any]) -> None:
    """Stop services left behind by a devnet owner that died without stopping them.

    We hold the home's lock, so no live owner exists; a recorded pid that is still alive and
    whose command line names this home is such an orphan (a reused pid would not name it).
    """
    for name, pid in (previous.get("pids") or {}).items():
        if not isinstance(pid, int) or not pid_alive(pid):
            continue
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue
        if str(home).encode() not in cmdline:
            continue
        log.warning("stopping %s (pid %d) left running by a previous devnet", name, pid)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, 15)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        while pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if pid_alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, 9)


def _port_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        # Same option the servers set, so a port in TIME_WAIT from our last run counts as free.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def _choose_port(service: str, requested: int | None, previous: Mapping[str, Any],
                 host: str = "127.0.0.1") -> int:
    if requested:
        if not 0 < requested < 65536:
            raise DevnetError(f"{service} port {requested} is out of range 1-65535")
        if not _port_free(requested, host):
            raise DevnetError(f"{service} port {requested} on {host} is in use; "
                              "pick another or leave it out")
        return requested
    url = endpoint_url(previous, service)
    if url:
        port = urlsplit(url).port
        if port and _port_free(port, host):
            return port
    return 0
