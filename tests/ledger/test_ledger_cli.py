"""`fedswarm ledger job|release|withdraw|balance` against anvil with both escrows deployed.

A v2 job is funded, completed and released through the CLI (one-line error before its release
time, success after, by a third party); a credit left on the old v1 contract comes back with
``withdraw --contract``. The chain's clock is moved with evm_increaseTime rather than waited for.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fedswarm.cli import main as cli_main
from fedswarm.config import write_devnet_state
from fedswarm.identity import load_identity
from fedswarm.ledger.anvil import fund, start_anvil
from fedswarm.ledger.escrow import EscrowV2, JobTerms, TrainerTerms
from fedswarm.ledger.escrow_books import job_books
from fedswarm.ledger.evm import Ledger
from fedswarm.tools import ToolMissing, tool_path

ETH = 10**18
PRICE = 10**15

try:
    tool_path("anvil")
    HAVE_ANVIL = True
except ToolMissing:
    HAVE_ANVIL = False


@pytest.fixture(scope="module")
def devnet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, dict[str, Any]]]:
    """anvil (mining per transaction) and a devnet.json naming it, without store or audit log."""
    if not HAVE_ANVIL:
        pytest.skip("anvil not installed: run `make tools`")
    home = tmp_path_factory.mktemp("devnet")
    proc, info = start_anvil(home / "chain")
    write_devnet_state(home, {**info, "network": "devnet"})
    try:
        yield home, info["chain"]
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def env(devnet: tuple[Path, dict[str, Any]], monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    home, chain = devnet
    monkeypatch.setenv("NETWORK", "devnet")
    monkeypatch.setenv("FEDSWARM_DEVNET_HOME", str(home))
    return chain


def node(tmp_path: Path, name: str, chain: dict[str, Any]) -> tuple[Path, EscrowV2]:
    """A funded node home and its v2 escrow client."""
    home = tmp_path / name
    ident = load_identity(home)
    fund(chain, ident.address, 10 * ETH)
    return home, EscrowV2(chain["rpc_url"], chain["escrow_v2_address"], ident.wallet,
                          deploy_block=chain["escrow_v2_deploy_block"])


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = cli_main(["ledger", *argv])
    out, err = capsys.readouterr()
    return rc, out, err


def warp(c: EscrowV2, seconds: int) -> None:
    c.w3.provider.make_request("evm_increaseTime", [seconds])
    c.w3.provider.make_request("evm_mine", [])


def test_release_refused_before_its_time_then_done_by_anyone(
    env: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare: a completed job with one trainer's units still reserved (the claim window runs)
    payer_home, payer = node(tmp_path, "payer", env)
    anyone_home, _ = node(tmp_path, "anyone", env)
    trainer = load_identity(tmp_path / "trainer").address
    terms = JobTerms(payer.address, int(time.time()) + 3600, 30, 10, PRICE, 3)
    key = payer.fund(7, terms, [TrainerTerms(trainer, PRICE, 3)], 5 * PRICE).job_key
    payer.complete(key, b"result", b"\x11" * 32)
    view = payer.job(key)
    assert view.reserved == 3 * PRICE

    # Execute: `job` shows the v2 state; `release` before the release time is a one-line error
    rc, out, err = cli(capsys, "job", "0x" + key.hex(), "--home", str(anyone_home), "--json")
    assert rc == 0, err
    shown = json.loads(out)
    assert shown["payer"] == payer.address and shown["operator"] == payer.address
    assert shown["status"] == "completed" and shown["release_at"] == view.release_at
    assert (shown["free"], shown["reserved"], shown["escrow"]) == (0, 3 * PRICE, 3 * PRICE)
    assert view.release_at == view.close_at + 30 + 10
    rc, out, err = cli(capsys, "release", "0x" + key.hex(), "--home", str(anyone_home))
    assert rc == 1 and len(err.strip().splitlines()) == 1, err
    assert "cannot be released before" in err and "UTC" in err and "try again" in err
    assert payer.job(key).status.name == "COMPLETED"  # bad timing changed nothing

    # Execute: after the release time, a third party releases it
    warp(payer, 41)
    rc, out, err = cli(capsys, "release", "0x" + key.hex(), "--home", str(anyone_home), "--json")
    assert rc == 0, err
    assert json.loads(out)["refund"] == 3 * PRICE

    # Assert: released, the refund is the payer's credit, the books balance to the wei
    rc, out, err = cli(capsys, "job", "0x" + key.hex(), "--home", str(anyone_home), "--json")
    shown = json.loads(out)
    assert shown["status"] == "released" and shown["released_refund"] == 3 * PRICE
    assert shown["refunded_total"] == 5 * PRICE
    books = job_books(payer, key)
    assert books.balanced and books.deposited == books.paid + books.refunded == 5 * PRICE
    assert books.transactions == {"fund": 1, "complete": 1, "release": 1}
    assert books.released_by == load_identity(anyone_home).address
    assert payer.pending() >= 5 * PRICE
    rc, _, err = cli(capsys, "release", "0x" + key.hex(), "--home", str(anyone_home))
    assert rc == 1 and "already released" in err


def test_withdraw_recovers_a_credit_left_on_the_v1_contract(
    env: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare: a v1 job cancelled: its escrow is the owner's pending credit on v1
    home, v2 = node(tmp_path, "old", env)
    v1 = Ledger(env["rpc_url"], env["contract_address"], load_identity(home).wallet)
    v1.create_job(b"\x05" * 32, b"\x01" * 32, int(time.time()) + 3600, 60, 7 * PRICE)
    v1.cancel_job(b"\x05" * 32)
    assert v1.pending() == 7 * PRICE
    rc, out, _ = cli(capsys, "balance", "--home", str(home), "--json")
    assert rc == 0 and json.loads(out)["pending_v1"] == 7 * PRICE
    assert json.loads(out)["pending_v2"] == 0
    wallet = v1.balance()

    # Execute
    rc, out, err = cli(capsys, "withdraw", "--home", str(home), "--contract", env["contract_address"])

    # Assert: the credit is in the wallet (less gas), nothing left on v1, v2 untouched
    assert rc == 0, err
    assert f"withdrew {7 * PRICE} from v1 escrow" in out
    assert v1.pending() == 0 and v1.balance() > wallet + 7 * PRICE - 10**15
    rc, out, _ = cli(capsys, "withdraw", "--home", str(home), "--contract", env["contract_address"])
    assert rc == 0 and "nothing to withdraw on v1" in out
    assert v2.pending() == 0


def test_bad_input_is_one_line(env: dict[str, Any], tmp_path: Path,
                               capsys: pytest.CaptureFixture[str]) -> None:
    home = tmp_path / "n"
    for argv in (["release", "0x1234", "--home", str(home)],
                 ["job", "0x" + "ab" * 32, "--home", str(home)],
                 ["withdraw", "--home", str(home), "--contract", "0x" + "99" * 20],
                 ["release", "0x" + "ab" * 32, "--home", str(home), "--contract", env["contract_address"]]):
        rc, _, err = cli(capsys, *argv)
        assert rc == 1 and len(err.strip().splitlines()) == 1, (argv, err)
        assert err.startswith("fedswarm ledger: "), err
