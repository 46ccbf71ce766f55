"""The devnet end to end: real store, anvil and audit-log processes under a temporary home.

Every devnet started here is stopped in a finaliser; tests check by pid that nothing is left.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from fedswarm.cli import main as cli_main
from fedswarm.config import ConfigError, Settings, load_devnet_state
from fedswarm.devnet import (
    DEV_MIN_BALANCE_WEI,
    Devnet,
    DevnetError,
    devnet_settings,
    ensure_funded,
    fund_identity,
)
from fedswarm.devnet.services import pid_alive
from fedswarm.identity import load_identity
from fedswarm.ledger.audit_envelope import signer_of
from fedswarm.ledger.audit_factory import make_audit_log
from fedswarm.ledger.factory import make_ledger
from fedswarm.storage.download import download
from fedswarm.storage.factory import make_object_store

pytestmark = pytest.mark.slow

START_BUDGET_S = 60.0  # generous: 2 loaded cores; typically 1-3 s
JOB_ID = bytes(range(32))


def wait_gone(pids: list[int], timeout: float = 20.0) -> list[int]:
    """Wait until none of ``pids`` is alive; return those still alive at the deadline."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        alive = [p for p in pids if pid_alive(p)]
        if not alive:
            return []
        time.sleep(0.1)
    return [p for p in pids if pid_alive(p)]


def kill_pids(pids: list[int]) -> None:
    """Last-resort clean-up of processes a failed test left running (by pid)."""
    for pid in pids:
        if pid_alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


@pytest.fixture
def devnet(tmp_path: Path) -> Iterator[Devnet]:
    net = Devnet.start(tmp_path / "devnet")
    pids = list(net.pids.values())
    try:
        yield net
    finally:
        net.stop()
        kill_pids(pids)


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = cli_main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def test_devnet_serves_store_ledger_audit_and_survives_restart(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare
    home = tmp_path / "devnet"
    node = load_identity(tmp_path / "node")
    payload = os.urandom(300_000)
    t0 = time.monotonic()
    net = Devnet.start(home)
    first_pids = list(net.pids.values())
    try:
        start_s = time.monotonic() - t0
        print(f"devnet start: {start_s:.2f} s (reported {net.start_seconds:.2f} s)")
        assert start_s < START_BUDGET_S
        state_path = home / "devnet.json"
        assert stat.S_IMODE(state_path.stat().st_mode) == 0o600
        state = load_devnet_state(home)
        assert set(state["pids"]) == {"store", "chain", "audit"}
        assert all(pid_alive(p) for p in state["pids"].values())
        assert state["chain"]["chain_id"] == 31337
        assert state["chain"]["faucet_key"] and state["store"]["secret_file"]
        for url in net.endpoints().values():
            assert url.startswith("http://127.0.0.1:")
        settings = devnet_settings(home)

        # Execute: store round trip through the factory and the bounded downloader
        store = make_object_store(settings)
        store.put("devnet/blob", payload)
        got = tmp_path / "got.bin"
        download(store.presign_get("devnet/blob", 60), got, max_bytes=len(payload))
        assert got.read_bytes() == payload

        # Execute: funding policy + ledger through the factory, contract deployed
        sent = ensure_funded(settings, node.address)
        assert sent > 0
        assert ensure_funded(settings, node.address) == 0  # already funded: no-op
        ledger = make_ledger(settings, node)
        assert ledger.balance() >= DEV_MIN_BALANCE_WEI
        contract = state["chain"]["contract_address"]
        assert len(ledger.w3.eth.get_code(ledger.w3.to_checksum_address(contract))) > 0
        ledger.create_job(JOB_ID, b"\x01" * 32, int(time.time()) + 3600, 60, 10**15)
        balance_before = ledger.balance()

        # Execute: audit log through the factory (signed by the node key)
        audit = make_audit_log(settings, node)
        topic = audit.create_topic("devnet test")
        audit.submit(topic, {"state": "joined", "n": 1})
        msgs = list(audit.iter_messages(topic))
        body = msgs[0].json()
        # every message carries the node wallet's signed envelope (readers check authorship)
        assert signer_of(topic, body).lower() == node.address.lower()
        assert [{k: v for k, v in m.json().items() if k != "sig"} for m in msgs] == [{"state": "joined", "n": 1}]

        # Execute: `fedswarm devnet status` answers for all three
        rc, out, _ = run_cli(capsys, "devnet", "status", "--home", str(home), "--json")
        assert rc == 0, out
        report = json.loads(out)
        assert report["ok"] and all(s["answers"] for s in report["services"].values())
        assert contract in report["services"]["chain"]["detail"]
        old_endpoints = net.endpoints()
    finally:
        net.stop()
        kill_pids(first_pids)

    # Assert: every process is gone and status now says so
    assert wait_gone(first_pids) == []
    assert load_devnet_state(home)["pids"] == {}
    rc, out, _ = run_cli(capsys, "devnet", "status", "--home", str(home), "--json")
    assert rc == 1 and not json.loads(out)["ok"]

    # Execute: restart on the same home
    net2 = Devnet.start(home)
    second_pids = list(net2.pids.values())
    try:
        assert not set(second_pids) & set(first_pids)
        # Ports are reused when free, so URLs handed out before the restart keep working.
        assert net2.endpoints() == old_endpoints
        settings = devnet_settings(home)
        state2 = load_devnet_state(home)
        assert state2["chain"]["contract_address"] == contract
        store2 = make_object_store(settings)
        assert store2.head("devnet/blob") is not None
        got2 = tmp_path / "got2.bin"
        download(store2.presign_get("devnet/blob", 60), got2, max_bytes=len(payload))
        assert got2.read_bytes() == payload
        ledger2 = make_ledger(settings, node)
        assert len(ledger2.w3.eth.get_code(ledger2.w3.to_checksum_address(contract))) > 0
        assert ledger2.balance() == balance_before
        assert ledger2.job(JOB_ID) is not None
        audit2 = make_audit_log(settings, node)
        assert [{k: v for k, v in m.json().items() if k != "sig"}
                    for m in audit2.iter_messages(topic)] == [{"state": "joined", "n": 1}]
    finally:
        net2.stop()
        kill_pids(second_pids)
    assert wait_gone(second_pids) == []


def test_second_devnet_on_same_home_is_refused(devnet: Devnet) -> None:
    # Execute / Assert: the lock stops a second owner; the first keeps running untouched
    with pytest.raises(DevnetError, match="already running"):
        Devnet.start(devnet.home)
    assert devnet.running


def test_fund_node_identity_and_cli(
    devnet: Devnet, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare
    settings = devnet_settings(devnet.home)
    ledger = make_ledger(settings, load_identity(tmp_path / "payer"))
    target = "0x000000000000000000000000000000000000bEEF"

    # Execute
    devnet.fund_node(target, 7)
    address = fund_identity(tmp_path / "trainer", 11, devnet.home)
    rc, out, _ = run_cli(capsys, "devnet", "fund", target, "--wei", "5",
                         "--home", str(devnet.home), "--json")

    # Assert
    assert rc == 0
    assert json.loads(out)["balance"] == 12
    assert ledger.balance(target) == 12
    assert ledger.balance(address) == 11
    assert address == load_identity(tmp_path / "trainer").address


def test_bad_input_gets_one_line_errors(
    devnet: Devnet, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    home = str(devnet.home)
    rc, _, err = run_cli(capsys, "devnet", "fund", "0x123", "--wei", "5", "--home", home)
    assert rc == 1 and "neither an EVM address" in err and err.count("\n") == 1
    rc, _, err = run_cli(capsys, "devnet", "fund", "0x" + "11" * 20, "--wei", "0", "--home", home)
    assert rc == 1 and "positive" in err
    rc, _, err = run_cli(capsys, "devnet", "status", "--home", str(tmp_path / "none"))
    assert rc == 2 and "no devnet found" in err and err.count("\n") == 1
    with pytest.raises(DevnetError, match="unknown service"):
        Devnet.start(tmp_path / "other", ports={"s3": 1})
    with pytest.raises(ConfigError, match="not an EVM address"):
        ensure_funded(devnet_settings(devnet.home), "nope")


def test_ensure_funded_is_a_noop_off_devnet() -> None:
    # No devnet exists for this network: nothing is read or sent.
    assert ensure_funded(Settings(network="testnet"), "0x" + "22" * 20) == 0


def _start_up(home: Path, *extra: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "fedswarm.cli", "devnet", "up", "--home", str(home), *extra],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
    )


def _wait_for_pids(home: Path, proc: subprocess.Popen[bytes], timeout: float) -> dict[str, int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else ""
        try:
            pids = load_devnet_state(home).get("pids") or {}
        except ConfigError:
            pids = {}
        if len(pids) == 3:
            return pids
        time.sleep(0.1)
    raise AssertionError("devnet up did not write its pids in time")


def test_devnet_up_runs_until_sigterm_then_stops_children(tmp_path: Path) -> None:
    # Prepare
    home = tmp_path / "devnet"
    node_home = tmp_path / "node"
    address = load_identity(node_home).address
    proc = _start_up(home, "--fund", str(node_home))
    pids: dict[str, int] = {}
    try:
        pids = _wait_for_pids(home, proc, START_BUDGET_S)
        assert all(pid_alive(p) for p in pids.values())
        # The table is printed after funding, so wait for it before checking the balance.
        assert proc.stdout is not None
        seen = b""
        while b"Ctrl-C" not in seen:
            line = proc.stdout.readline()
            assert line, seen.decode()
            seen += line
        assert b"store" in seen and b"chain" in seen and b"audit" in seen
        ledger = make_ledger(devnet_settings(home), load_identity(tmp_path / "payer"))
        assert ledger.balance(address) > 0

        # Execute
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(60)

        # Assert
        assert rc == 0
        assert wait_gone(list(pids.values())) == []
        assert load_devnet_state(home)["pids"] == {}
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        kill_pids(list(pids.values()))


def test_orphans_of_a_killed_owner_are_reaped_on_next_start(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # Prepare: an owner killed with SIGKILL cannot stop its children; they keep the ports.
    home = tmp_path / "devnet"
    proc = _start_up(home)
    pids: dict[str, int] = {}
    try:
        pids = _wait_for_pids(home, proc, START_BUDGET_S)
        proc.kill()
        proc.wait()
        assert any(pid_alive(p) for p in pids.values())
        old_endpoints = {k: v for k, v in load_devnet_state(home).items()
                         if k in ("store", "audit")}

        # Execute
        with Devnet.start(home) as net:
            # Assert: the orphans are gone and their ports reused by the new services
            assert wait_gone(list(pids.values())) == []
            # (unless another test's process took a port in the moment between reaping and
            # binding: then that service says so and takes a free one)
            for service in ("store", "audit"):
                assert (net.endpoints()[service] == old_endpoints[service]["url"]
                        or f"devnet {service}: the last run's port" in caplog.text)
            assert net.running
            new_pids = list(net.pids.values())
        assert wait_gone(new_pids) == []
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        kill_pids(list(pids.values()))


def test_nodes_starting_together_all_get_funded(devnet: Devnet) -> None:
    # Prepare: several nodes start at once and each tops its wallet up from the one faucet,
    # so their faucet transactions race for the same nonces.
    from concurrent.futures import ThreadPoolExecutor

    settings = devnet_settings(devnet.home)
    addresses = [f"0x{i:040x}" for i in range(0xA1, 0xA7)]

    # Execute
    with ThreadPoolExecutor(len(addresses)) as ex:
        sent = list(ex.map(lambda a: ensure_funded(settings, a, 10**18, 5 * 10**18), addresses))

    # Assert
    assert sent == [5 * 10**18] * len(addresses)
    ledger = make_ledger(settings, load_identity(devnet.home.parent / "payer"))
    assert [ledger.balance(a) for a in addresses] == [5 * 10**18] * len(addresses)


def test_devnet_up_exits_when_a_service_dies(tmp_path: Path) -> None:
    # Prepare
    home = tmp_path / "devnet"
    proc = _start_up(home)
    pids: dict[str, int] = {}
    try:
        pids = _wait_for_pids(home, proc, START_BUDGET_S)

        # Execute: the audit log crashes
        os.kill(pids["audit"], signal.SIGKILL)
        rc = proc.wait(60)

        # Assert: a non-zero exit naming it, and the other services stopped with it
        out = proc.stdout.read().decode() if proc.stdout else ""
        assert rc == 1
        assert "audit exited" in out
        assert wait_gone(list(pids.values())) == []
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        kill_pids(list(pids.values()))


def _block(url: str) -> tuple[int, int]:
    """(number, timestamp) of the chain's latest block."""
    from web3 import Web3

    b = Web3(Web3.HTTPProvider(url)).eth.get_block("latest")
    return int(b["number"]), int(b["timestamp"])


def test_block_time_mines_on_a_timer_by_default_and_per_transaction_at_zero(tmp_path: Path) -> None:
    # Prepare: the default devnet (2 s blocks, like Hedera) and one with --block-time 0
    slow = Devnet.start(tmp_path / "slow")
    fast = Devnet.start(tmp_path / "fast", block_time=0)
    pids = [*slow.pids.values(), *fast.pids.values()]
    try:
        assert load_devnet_state(slow.home)["chain"]["block_time"] == 2.0
        assert load_devnet_state(fast.home)["chain"]["block_time"] == 0.0
        assert load_devnet_state(fast.home)["chain"]["escrow_v2_min_claim_window"] == 10
        target = "0x" + "42" * 20

        # Execute: with a 2 s timer, blocks come without transactions and a transfer waits
        # for the next block; with 0, a transaction is mined at once and an empty block still
        # comes every second, so the chain's clock (what time-gated calls see) keeps moving.
        n0, _ = _block(slow.endpoints()["chain"])
        time.sleep(4.5)
        n1, _ = _block(slow.endpoints()["chain"])
        f0, ts0 = _block(fast.endpoints()["chain"])
        time.sleep(2.5)
        f1, ts1 = _block(fast.endpoints()["chain"])
        t0 = time.monotonic()
        fast.fund_node(target, 1)
        fast_tx_s = time.monotonic() - t0
        slow_tx_s = []
        for _ in range(3):
            t0 = time.monotonic()
            slow.fund_node(target, 1)
            slow_tx_s.append(time.monotonic() - t0)

        # Assert
        assert n1 - n0 >= 1, (n0, n1)
        assert f1 > f0 and ts1 >= ts0 + 2, (f0, f1, ts0, ts1)
        print(f"transfer: {slow_tx_s} s at 2 s blocks, {fast_tx_s:.2f} s at 0")
        assert fast_tx_s < 0.9  # mined on arrival, not on the 1 s tick
        assert max(slow_tx_s) > fast_tx_s  # three waits for the 2 s timer: one at least shows
    finally:
        slow.stop()
        fast.stop()
        kill_pids(pids)
    assert wait_gone(pids) == []


def test_block_time_out_of_range_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(DevnetError, match="out of range"):
        Devnet.start(tmp_path / "devnet", block_time=-1)
    rc, _, err = run_cli(capsys, "devnet", "up", "--home", str(tmp_path / "d2"), "--block-time", "90")
    assert rc == 1 and "out of range" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "devnet" / "devnet.json").exists()


def test_a_reused_port_taken_before_the_bind_falls_back_to_a_free_one() -> None:
    from fedswarm.devnet.services import _reusing

    tried: list[int] = []

    def start(port: int):  # type: ignore[no-untyped-def]
        tried.append(port)
        if port:
            raise OSError(98, "Address already in use")
        return None, {"port": 40000}

    assert _reusing("audit", 41000, None, start)()[1] == {"port": 40000} and tried == [41000, 0]
    # A port the user asked for is never silently changed.
    with pytest.raises(OSError):
        _reusing("audit", 41000, 41000, start)()
