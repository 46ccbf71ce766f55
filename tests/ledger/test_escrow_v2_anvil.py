"""EscrowV2 (the v2 client) against a real anvil: devnet deployment beside v1, the shared receipt
vector on the deployed contract, a whole job's money flow, events with a cursor, and the settle
batch's measured gas and transaction size (what max_verdicts_per_batch is derived from)."""

from __future__ import annotations

import os

import pytest
from eth_account import Account
from eth_utils import keccak
from hexbytes import HexBytes
from test_escrow_v2_receipts import VECTOR_DIGEST, VECTOR_DOMAIN, VECTOR_RECEIPT
from web3 import Web3

from fedswarm.ledger.anvil import DEVNET_MIN_CLAIM_WINDOW, fund, start_anvil
from fedswarm.ledger.escrow import (
    HEDERA_TX_BYTES,
    SETTLE_GAS_MEASURED,
    EscrowV2,
    JobStatusV2,
    JobTerms,
    SkipReason,
    TrainerTerms,
    UnitStatusV2,
    Verdict,
    claim_times,
    max_verdicts_per_batch,
    settle_gas,
    settle_tx_bytes,
)
from fedswarm.ledger.escrow_books import job_books
from fedswarm.ledger.evm import TxReverted
from fedswarm.ledger.hedera import HEDERA_UNITS, ValueUnits
from fedswarm.ledger.unitsrelay import start_units_relay
from fedswarm.tools import ToolMissing, tool_path

pytestmark = pytest.mark.slow

ETH = 10**18
PRICE = 10**15
ZERO32 = b"\0" * 32

try:
    tool_path("anvil")
    HAVE_ANVIL = True
except ToolMissing:
    HAVE_ANVIL = False


def _stop(proc) -> None:
    proc.terminate()
    try:
        proc.wait(15)
    except Exception:
        proc.kill()
        proc.wait(5)


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    if not HAVE_ANVIL:
        pytest.skip("anvil not installed: run `make tools`")
    proc, info = start_anvil(tmp_path_factory.mktemp("anvil"))
    yield info["chain"]
    _stop(proc)


@pytest.fixture(scope="module")
def hedera_chain(chain, tmp_path_factory):
    """The same anvil behind the units relay: tinybar in the EVM, weibar on the RPC."""
    proc, relay = start_units_relay(chain["rpc_url"], chain["chain_id"], tmp_path_factory.mktemp("relay"))
    yield {**chain, "rpc_url": relay["rpc_url"], "anvil_url": chain["rpc_url"], "value_units": HEDERA_UNITS}
    _stop(proc)


@pytest.fixture(params=["native", "hedera"])
def any_chain(request):
    """Plain anvil, then anvil in Hedera's units: a money path that skips the one conversion
    (ValueUnits) is off by 10^10 on the second."""
    return request.getfixturevalue("chain" if request.param == "native" else "hedera_chain")


def client(chain, eth: int = 10, account=None) -> EscrowV2:
    acct = account or Account.create()
    fund(chain, acct.address, eth * ETH)
    return EscrowV2(chain["rpc_url"], chain["escrow_v2_address"], acct, units=ValueUnits.for_chain(chain),
                    deploy_block=chain["escrow_v2_deploy_block"])


def evm_balance(chain, address: str) -> int:
    """What the EVM itself holds for ``address`` (anvil, not the relay): contract units."""
    w3 = Web3(Web3.HTTPProvider(chain.get("anvil_url", chain["rpc_url"])))
    return int(w3.eth.get_balance(Web3.to_checksum_address(address)))


def warp(c: EscrowV2, seconds: int) -> None:
    c.w3.provider.make_request("evm_increaseTime", [seconds])
    c.w3.provider.make_request("evm_mine", [])


def test_devnet_deploys_v2_beside_v1(chain):
    assert chain["escrow_v2_address"] != chain["contract_address"]
    assert chain["escrow_v2_deploy_block"] > chain["deploy_block"]
    c = client(chain)
    assert c.min_claim_window() == DEVNET_MIN_CLAIM_WINDOW == chain["escrow_v2_min_claim_window"]
    # The shared vector's domain is this deployment: the contract agrees with Python.
    assert (c.get_chain_id(), c.contract_address) == (VECTOR_DOMAIN.chain_id, VECTOR_DOMAIN.contract)
    assert c.receipt_digest(VECTOR_RECEIPT).hex() == VECTOR_DIGEST


def test_restart_keeps_both_deployments(tmp_path):
    if not HAVE_ANVIL:
        pytest.skip("anvil not installed")
    proc, info = start_anvil(tmp_path)
    try:
        payer = client(info["chain"], account=Account.from_key(info["chain"]["deployer_key"]))
        terms = JobTerms(payer.address, 2**40, 0, 60, PRICE, 1)
        key = payer.fund(5, terms, [], 1234).job_key
    finally:
        _stop(proc)
    proc, again = start_anvil(tmp_path)
    try:
        for k in ("contract_address", "escrow_v2_address", "escrow_v2_deploy_block"):
            assert again["chain"][k] == info["chain"][k]
        assert client(again["chain"], account=payer.account).job(key).escrow == 1234
    finally:
        _stop(proc)


def test_whole_job_money_flow(any_chain, tmp_path):
    chain = any_chain
    payer, op, t1, t2, standby = (client(chain) for _ in range(5))
    now = payer.chain_time()
    settle_w, claim_w = 30, DEVNET_MIN_CLAIM_WINDOW
    terms = JobTerms(op.address, now + 3600, settle_w, claim_w, 2 * PRICE, 7)
    start = payer.block_number() + 1
    funded = payer.fund(1, terms, [TrainerTerms(t1.address, PRICE, 3), TrainerTerms(t2.address, 2 * PRICE, 2)],
                        amount=10 * PRICE)
    key = funded.job_key
    assert key == payer.job_key(1) and payer.job(key).reserved == 7 * PRICE and payer.job(key).free == 3 * PRICE
    # The EVM holds exactly the deposit (in tinybar on the Hedera chain, whose RPC says weibar).
    escrowed = evm_balance(chain, payer.contract_address)
    assert escrowed >= 10 * PRICE and payer.balance(payer.contract_address) == escrowed
    assert int(payer.w3.eth.get_balance(payer.contract_address)) == payer.units.to_rpc(escrowed)
    # The operator adds a standby within the caps; beyond them it is refused.
    with pytest.raises(TxReverted, match="UnitBudgetExceeded"):
        op.add_trainers(key, [TrainerTerms(standby.address, PRICE, 3)])
    op.add_trainers(key, [TrainerTerms(standby.address, PRICE, 2)])
    assert t1.trainer(key, standby.address).units == 2

    # Round 0: receipts at once (no transaction), verdicts later in one batch.
    r0, s0 = op.issue_receipt(key, 0, 0, t1.address, keccak(text="u0"), issued_at=op.chain_time())
    r1, s1 = op.issue_receipt(key, 0, 1, t2.address, keccak(text="u1"), issued_at=op.chain_time())
    with pytest.raises(TxReverted, match="SettleWindowOpen"):
        t1.claim(r0, s0)
    warp(op, settle_w)
    t1.claim(r0, s0)  # the operator was slow: t1 claims; the batch below skips that unit
    [out] = op.settle_batches(key, [
        Verdict(0, 0, t1.address, r0.update_hash, False, keccak(text="late")),
        Verdict(0, 1, t2.address, r1.update_hash, False, keccak(text="nan")),
        Verdict(0, 2, standby.address, keccak(text="u2"), True),
    ])
    assert out.skipped == ((0, 0, t1.address, SkipReason.ALREADY_DONE),)
    assert [(s[1], s[3], s[4]) for s in out.settled] == [(1, False, 0), (2, True, PRICE)]
    assert t1.unit(key, 0, 0).status == UnitStatusV2.CLAIMED

    # A receipt t1 holds for round 1, never settled; then completion.
    r2, s2 = op.issue_receipt(key, 1, 0, t1.address, keccak(text="u3"), issued_at=op.chain_time())
    op.complete(key, b"enc-pointer", keccak(text="weights"))
    job = payer.job(key)
    assert job.status == JobStatusV2.COMPLETED and t1.result(key) == (b"enc-pointer", keccak(text="weights"))
    # Free escrow back at once: 10 - (3 + 4 + 2) reserved + 2 freed by the rejection.
    assert payer.pending() == 10 * PRICE - 9 * PRICE + 2 * PRICE
    claimable, until = claim_times(job, r2)
    assert until == job.release_at == job.close_at + settle_w + claim_w
    warp(op, claimable - op.chain_time())
    t1.claim(r2, s2)
    with pytest.raises(TxReverted, match="ReleaseTooEarly"):
        standby.release(key)
    warp(op, until - op.chain_time() + 1)
    standby.release(key)  # anyone
    assert payer.job(key).status == JobStatusV2.RELEASED and payer.job(key).escrow == 0

    paid = {t1.address: 2 * PRICE, t2.address: 0, standby.address: PRICE}
    assert payer.pending() == 10 * PRICE - sum(paid.values())
    for who in (t1, standby, payer):
        before = who.balance()
        receipt = who.withdraw()
        assert who.balance() == before + (paid.get(who.address) or 10 * PRICE - 3 * PRICE) - receipt.fee
        assert who.balance() == evm_balance(chain, who.address) > 0 and receipt.fee > 0
    with pytest.raises(TxReverted, match="NothingToWithdraw"):
        t2.withdraw()

    # The books the demo and the benchmarks print, read from events and views: contract units.
    books = job_books(payer, key)
    assert books.released and books.balanced and books.deposited == 10 * PRICE
    assert books.paid == sum(paid.values()) and books.payer_withdrawn == 10 * PRICE - 3 * PRICE
    assert {a.lower(): t.paid for a, t in books.trainers.items() if t.paid} == {a.lower(): v for a, v in paid.items() if v}

    # Events from the deployment block with a cursor; a second read sees only what is new.
    cursor = tmp_path / "v2-cursor.json"
    names = [e.name for e in payer.read_events(cursor, from_block=start) if e.args.get("jobKey") == key]
    assert names[:4] == ["JobFunded", "TrainerAdded", "TrainerAdded", "TrainerAdded"]
    for expected in ("UnitClaimed", "UnitSkipped", "UnitSettled", "JobCompleted", "Refunded", "JobReleased"):
        assert expected in names
    assert payer.read_events(cursor) == []
    assert any(e.name == "JobFunded" for e in payer.read_events())  # default: from the deploy block


def test_settle_gas_and_batch_size(chain):
    op = client(chain, eth=50)
    for n in (1, 10, 50):
        trainers = [Account.create().address for _ in range(n)]
        terms = JobTerms(op.address, op.chain_time() + 3600, 60, DEVNET_MIN_CLAIM_WINDOW, PRICE, n)
        key = op.fund(100 + n, terms, [TrainerTerms(t, PRICE, 1) for t in trainers], n * PRICE).job_key
        # Fresh units paying trainers with no pending balance yet: the costliest verdicts.
        out = op.settle_batch(key, [Verdict(0, i, t, os.urandom(32), True) for i, t in enumerate(trainers)])
        gas = out.receipt.gas_used
        assert gas <= settle_gas(n), (n, gas)
        assert abs(gas - SETTLE_GAS_MEASURED[n]) <= 0.03 * SETTLE_GAS_MEASURED[n], (n, gas)
    # The largest batch for Hedera fits its 6 KiB transaction limit, signed; one more would not.
    size = max_verdicts_per_batch()
    assert size == 30
    assert settle_gas(size) * 1.25 < 15_000_000
    verdicts = [Verdict(0, i, op.address, os.urandom(32), False, os.urandom(32)) for i in range(size)]
    func = op.ledger.contract.functions.settle(os.urandom(32), [v.as_tuple() for v in verdicts])
    tx = {"to": op.contract_address, "value": 0, "data": HexBytes(func._encode_transaction_data()),
          "gas": 2_000_000, "gasPrice": 10**12, "nonce": 2**20, "chainId": op.get_chain_id()}
    raw = op.account.sign_transaction(tx).raw_transaction
    assert len(raw) <= settle_tx_bytes(size) <= HEDERA_TX_BYTES
    assert settle_tx_bytes(size + 1) > HEDERA_TX_BYTES
