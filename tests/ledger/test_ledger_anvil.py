"""The Ledger client against a real anvil: the whole money flow, nonce recovery, paged events."""

from __future__ import annotations

import json
import os

import pytest
from eth_account import Account
from eth_utils import keccak

from fedswarm.ledger.anvil import fund, start_anvil
from fedswarm.ledger.contract import JobStatus, UnitStatus
from fedswarm.ledger.evm import EventCursor, Ledger, TxReverted, _TxOptions
from fedswarm.tools import ToolMissing, tool_path

pytestmark = pytest.mark.slow

ETH = 10**18
ZERO32 = b"\0" * 32

try:
    tool_path("anvil")
    HAVE_ANVIL = True
except ToolMissing:
    HAVE_ANVIL = False


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    if not HAVE_ANVIL:
        pytest.skip("anvil not installed: run `make tools`")
    proc, info = start_anvil(tmp_path_factory.mktemp("anvil"))
    yield info["chain"]
    proc.terminate()
    try:
        proc.wait(15)
    except Exception:
        proc.kill()
        proc.wait(5)


def new_ledger(chain, eth: int = 10) -> Ledger:
    acct = Account.create()
    fund(chain, acct.address, eth * ETH)
    return Ledger(chain["rpc_url"], chain["contract_address"], acct)


def rpc(ledger: Ledger, method: str, params: list) -> None:
    ledger.w3.provider.make_request(method, params)


def test_restart_keeps_the_deployment(tmp_path):
    if not HAVE_ANVIL:
        pytest.skip("anvil not installed")
    proc, info = start_anvil(tmp_path)
    try:
        owner = Ledger(info["chain"]["rpc_url"], info["chain"]["contract_address"],
                       Account.from_key(info["chain"]["deployer_key"]))
        job = os.urandom(32)
        owner.create_job(job, ZERO32, 2**40, 60, 1234)
    finally:
        proc.terminate()
        proc.wait(15)
    proc, info2 = start_anvil(tmp_path)
    try:
        assert info2["chain"]["contract_address"] == info["chain"]["contract_address"]
        again = Ledger(info2["chain"]["rpc_url"], info2["chain"]["contract_address"], owner.account)
        assert again.job(job).escrow == 1234
    finally:
        proc.terminate()
        proc.wait(15)


def test_full_flow_exact_balances(chain):
    owner, t1, t2 = new_ledger(chain), new_ledger(chain), new_ledger(chain)
    job = keccak(text="anvil-flow")
    price1, price2, amount = 10**15, 3 * 10**15, 10**16
    now = owner.w3.eth.get_block("latest")["timestamp"]
    owner.create_job(job, keccak(text="spec"), now + 3600, 120, amount)
    owner.add_trainers(job, [t1.address, t2.address], [price1, price2], [2, 1])
    assert owner.trainer(job, t1.address).max_units == 2
    t1.commit_unit(job, 0, 0, keccak(text="u0"))
    t1.commit_unit(job, 0, 1, keccak(text="u1"))
    t2.commit_unit(job, 0, 2, keccak(text="u2"))
    assert t1.unit(job, 0, 1).status == UnitStatus.COMMITTED and t1.unit(job, 0, 1).trainer == t1.address
    owner.settle(job, 0, [0, 2], [True, False], [ZERO32, keccak(text="nan weights")])
    assert t2.unit(job, 0, 2).reason_hash == keccak(text="nan weights")

    with pytest.raises(TxReverted, match=r"claimUnsettled reverted: SettleWindowOpen"):
        t1.claim_unsettled(job, 0, 1)
    rpc(owner, "evm_increaseTime", [121])
    rpc(owner, "evm_mine", [])
    t1.claim_unsettled(job, 0, 1)
    owner.complete_job(job, b"encrypted-pointer")

    assert owner.job(job).status == JobStatus.COMPLETED
    assert owner.result_pointer(job) == b"encrypted-pointer"
    assert t1.pending() == 2 * price1 and t2.pending() == 0
    assert owner.pending() == amount - 2 * price1
    assert owner.job(job).escrow == 0

    for ledger, credit in ((t1, 2 * price1), (owner, amount - 2 * price1)):
        before = ledger.balance()
        receipt = ledger.withdraw()
        assert ledger.balance() == before + credit - receipt.fee
        assert ledger.pending() == 0
    with pytest.raises(TxReverted, match="NothingToWithdraw"):
        t2.withdraw()


def test_nonce_recovers_after_failures(chain):
    me = new_ledger(chain)
    job = os.urandom(32)
    # 1. A revert caught by the estimate consumes no nonce.
    with pytest.raises(TxReverted, match="NothingToWithdraw"):
        me.withdraw()
    # 2. A transaction mined as failed (fixed gas skips the estimate) consumes one, and its
    #    reason is recovered by replaying it.
    with pytest.raises(TxReverted, match="NothingToWithdraw") as info:
        me._transact("withdraw", [], _TxOptions(gas=100_000))
    assert info.value.tx_hash
    # 3. Another client using the same key makes our cached nonce stale.
    twin = Ledger(me.rpc_url, me.contract_address, me.account)
    twin.create_job(os.urandom(32), ZERO32, 2**40, 0, 1)
    twin.create_job(os.urandom(32), ZERO32, 2**40, 0, 1)
    me.create_job(job, ZERO32, 2**40, 0, 5)  # resyncs and succeeds
    me.cancel_job(job)
    assert me.pending() == 5
    count = me.w3.eth.get_transaction_count(me.address)
    assert me.nonces.take() == count  # our counter matches the chain again


def test_events_paged_over_more_than_500_blocks(chain, tmp_path):
    me = new_ledger(chain)
    start = me.block_number() + 1
    first, second = os.urandom(32), os.urandom(32)
    me.create_job(first, ZERO32, 2**40, 0, 1)
    rpc(me, "anvil_mine", [hex(1200)])
    me.create_job(second, ZERO32, 2**40, 0, 2)
    last = me.block_number()
    assert last - start > 1000

    windows = [(nb, evs) for nb, evs in me.iter_events(start)]
    assert len(windows) >= 3
    edges = [start] + [nb for nb, _ in windows]
    assert all(0 < b - a <= 500 for a, b in zip(edges, edges[1:], strict=False))

    cursor = tmp_path / "cursor.json"
    events = me.read_events(cursor, from_block=start)
    created = [e for e in events if e.name == "JobCreated" and e.args["owner"] == me.address]
    assert [e.args["jobId"] for e in created] == [first, second]
    assert created[1].block_number - created[0].block_number > 500
    assert json.loads(cursor.read_text())["next_block"] == last + 1
    # Resuming from the cursor reads only what is new.
    assert [e for e in me.read_events(cursor) if e.args.get("owner") == me.address] == []
    me.cancel_job(second)
    names = [e.name for e in me.read_events(EventCursor(cursor))]
    assert names == ["Credited", "JobCancelled"]
