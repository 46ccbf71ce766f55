"""The market against the real contract on anvil: a quote funds exactly what addTrainers
reserves, and reputation read back from settled units reorders the next selection."""

from __future__ import annotations

import pytest
from _market_helpers import peer_id
from eth_account import Account
from eth_utils import keccak

from fedswarm.ledger.anvil import fund, start_anvil
from fedswarm.ledger.evm import Ledger, TxReverted
from fedswarm.market import (
    JobRequirements,
    make_policy,
    quote,
    reputation_from_events,
    sign_bid,
    verify_bid,
)
from fedswarm.protocol.job import Bid
from fedswarm.protocol.messages import Capabilities
from fedswarm.tools import ToolMissing, tool_path

pytestmark = pytest.mark.slow

ETH = 10**18
ZERO32 = b"\0" * 32


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    try:
        tool_path("anvil")
    except ToolMissing:
        pytest.skip("anvil not installed: run `make tools`")
    proc, info = start_anvil(tmp_path_factory.mktemp("anvil"))
    yield info["chain"]
    proc.terminate()
    try:
        proc.wait(15)
    except Exception:
        proc.kill()
        proc.wait(5)


def ledger_for(chain, account) -> Ledger:
    fund(chain, account.address, 10 * ETH)
    return Ledger(chain["rpc_url"], chain["contract_address"], account)


def signed_bid(n: int, wallet, job: str, price: int) -> Bid:
    box = keccak(text=f"box-{n}").hex()
    return Bid(job_id=job, peer_id=peer_id(n), address=wallet.address, box_public=box,
               price_wei=price, capabilities=Capabilities(cpu_cores=4, ram_mb=8192),
               signature=sign_bid(wallet, peer_id(n), box, job, price))


def test_quote_funds_add_trainers_and_settlements_feed_reputation(chain):
    # Prepare: a client and three trainers with real wallets and signed bids
    client = ledger_for(chain, Account.create())
    wallets = [Account.create() for _ in range(3)]
    trainers = [ledger_for(chain, w) for w in wallets]
    job = "market-e2e"
    prices = [10**15, 2 * 10**15, 3 * 10**15]
    bids = [signed_bid(n, w, job, p) for n, (w, p) in enumerate(zip(wallets, prices, strict=True))]
    for n, bid in enumerate(bids):
        verify_bid(bid, peer_id(n), job)
    req = JobRequirements(trainers=2, standby=1, price_cap_wei=10**16)

    # Execute: select, quote, fund; one wei less must not be enough
    sel = make_policy().select(bids, req, {})
    q = quote(sel, rounds=2, reassign_reserve_units=1)
    job_id = keccak(text=job)
    now = client.w3.eth.get_block("latest")["timestamp"]
    short = keccak(text=job + "-short")
    client.create_job(short, ZERO32, now + 3600, 60, q.total_wei - 1)
    with pytest.raises(TxReverted, match="InsufficientFunds"):
        client.add_trainers(short, *q.add_trainers_args())
    client.create_job(job_id, ZERO32, now + 3600, 60, q.total_wei)
    client.add_trainers(job_id, *q.add_trainers_args())

    # Assert: the contract reserved exactly the quote
    assert client.job(job_id).reserved == q.total_wei == (prices[0] + prices[1]) * 2 + prices[2]
    for line in q.trainers:
        assert client.trainer(job_id, line.address).max_units == line.max_units

    # Execute: the cheapest trainer's two units are rejected, the second's accepted
    start = client.block_number()
    trainers[0].commit_unit(job_id, 0, 0, keccak(text="a0"))
    trainers[1].commit_unit(job_id, 0, 1, keccak(text="b0"))
    trainers[0].commit_unit(job_id, 1, 0, keccak(text="a1"))
    trainers[1].commit_unit(job_id, 1, 1, keccak(text="b1"))
    client.settle(job_id, 0, [0, 1], [False, True], [keccak(text="nan"), ZERO32])
    client.settle(job_id, 1, [0, 1], [False, True], [keccak(text="nan"), ZERO32])
    rep = reputation_from_events(client.read_events(from_block=start))

    # Assert: records as settled, and the next job prefers trainer 1 over cheaper trainer 0
    assert rep[wallets[0].address.lower()].rejected == 2
    assert rep[wallets[1].address.lower()].accepted == 2
    nxt = [signed_bid(n, w, "next-job", p) for n, (w, p) in enumerate(zip(wallets, prices, strict=True))]
    again = make_policy().select(nxt, JobRequirements(trainers=1, standby=0, price_cap_wei=10**16), rep)
    assert again.chosen[0].address == wallets[1].address
