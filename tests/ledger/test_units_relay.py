"""The units relay (anvil in Hedera's value units): each rule the hiero JSON-RPC relay applies to
values refuses what Hedera refuses, and the client's own transaction hashes are what receipts,
transactions, blocks and logs carry. The relay runs in this process on a thread, in front of a
real anvil."""

from __future__ import annotations

import threading

import pytest
from eth_account import Account
from eth_utils import keccak
from web3 import Web3

from fedswarm.ledger.anvil import start_anvil
from fedswarm.ledger.escrow import EscrowV2, JobTerms
from fedswarm.ledger.evm import Ledger, LedgerError
from fedswarm.ledger.hedera import WEIBAR_PER_TINYBAR, ValueUnits
from fedswarm.ledger.unitsrelay import (
    DEFAULT_GAS_PRICE_TINYBAR,
    HashBook,
    RelayRpcError,
    UnitsRelay,
    decode_raw_transaction,
    make_server,
    weibar_to_tinybar,
)
from fedswarm.tools import ToolMissing, tool_path

pytestmark = pytest.mark.slow
F = WEIBAR_PER_TINYBAR
GAS_PRICE = DEFAULT_GAS_PRICE_TINYBAR * F  # weibar per gas, what eth_gasPrice answers

try:
    tool_path("anvil")
except ToolMissing:
    pytest.skip("anvil not installed: run `make tools`", allow_module_level=True)


@pytest.fixture(scope="module")
def net(tmp_path_factory):
    d = tmp_path_factory.mktemp("relay")
    proc, info = start_anvil(d / "anvil")
    chain = info["chain"]
    relay = UnitsRelay(chain["rpc_url"], chain["chain_id"], hashes=HashBook(d / "hashes.jsonl"))
    relay.prepare()
    server = make_server(relay)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    yield {"chain": chain, "relay": relay, "url": url, "w3": Web3(Web3.HTTPProvider(url)),
           "anvil": Web3(Web3.HTTPProvider(chain["rpc_url"])), "hashes": d / "hashes.jsonl"}
    server.shutdown()
    server.server_close()
    proc.terminate()
    proc.wait(15)


def rich_account(net, tinybar: int = 10**12):
    acct = Account.create()
    net["anvil"].provider.make_request("anvil_setBalance", [acct.address, hex(tinybar)])
    return acct


def send(net, acct, **tx) -> dict:
    """Sign ``tx`` locally and send it raw; the relay's JSON-RPC answer."""
    base = {"to": "0x000000000000000000000000000000000000dEaD", "value": 0, "gas": 21_000,
            "gasPrice": GAS_PRICE, "chainId": net["chain"]["chain_id"],
            "nonce": net["w3"].eth.get_transaction_count(acct.address, "pending")}
    raw = acct.sign_transaction({**base, **tx}).raw_transaction
    return net["w3"].provider.make_request("eth_sendRawTransaction", ["0x" + bytes(raw).hex()])


def test_value_conversion_refuses_sub_tinybar_and_truncates_the_rest():
    assert [weibar_to_tinybar(v) for v in (0, F, 15 * 10**9, 3 * F + F - 1)] == [0, 1, 1, 3]
    for bad in (1, F - 1, -F):
        with pytest.raises(RelayRpcError) as exc:
            weibar_to_tinybar(bad)
        assert exc.value.code == -32602 and "1 tinybar" in exc.value.message


def test_balances_and_gas_price_are_weibar_on_the_rpc(net):
    acct = rich_account(net, 123)
    assert net["w3"].eth.get_balance(acct.address) == 123 * F
    assert net["anvil"].eth.get_balance(acct.address) == 123
    assert net["w3"].eth.gas_price == GAS_PRICE
    assert net["w3"].eth.get_block("latest")["baseFeePerGas"] == GAS_PRICE


def test_raw_transactions_are_checked_like_the_relays_prechecks(net):
    acct = rich_account(net)
    err = send(net, acct, value=1)["error"]
    assert err["code"] == -32602 and "1 tinybar" in err["message"]
    assert send(net, acct, gasPrice=GAS_PRICE - F)["error"]["code"] == -32009
    err = send(net, acct, chainId=296)["error"]
    assert "ChainId (0x128) not supported" in err["message"]
    poor = rich_account(net, 1)
    assert send(net, poor)["error"]["message"] == "Insufficient funds for transfer"
    # 1.5 tinybar arrives as 1 tinybar: Hedera drops the sub-tinybar rest.
    to = Account.create().address
    ok = send(net, acct, to=to, value=15 * 10**9)
    net["w3"].eth.wait_for_transaction_receipt(ok["result"], timeout=30)
    assert net["anvil"].eth.get_balance(to) == 1 and net["w3"].eth.get_balance(to) == F
    # An EIP-1559 transaction: its fee caps are weibar too.
    base = {"to": to, "value": 2 * F, "gas": 21_000, "chainId": net["chain"]["chain_id"], "type": 2,
            "maxFeePerGas": GAS_PRICE, "maxPriorityFeePerGas": 0,
            "nonce": net["w3"].eth.get_transaction_count(acct.address, "pending")}
    h = net["w3"].eth.send_raw_transaction(acct.sign_transaction(base).raw_transaction)
    assert net["w3"].eth.wait_for_transaction_receipt(h, timeout=30)["effectiveGasPrice"] == GAS_PRICE
    assert net["anvil"].eth.get_balance(to) == 3
    err = send(net, acct, nonce=0)["error"]
    assert err["code"] == 32001 and "Nonce too low" in err["message"]
    # The relay holds no keys.
    for method in ("eth_sendTransaction", "eth_accounts", "eth_sign"):
        assert net["w3"].provider.make_request(method, [])["error"]["code"] == -32601


def test_the_clients_hashes_are_the_ones_the_chain_shows(net):
    acct = rich_account(net)
    escrow = EscrowV2(net["url"], net["chain"]["escrow_v2_address"], acct, units=ValueUnits.hedera())
    terms = JobTerms(acct.address, escrow.chain_time() + 3600, 60, 10, 100, 4)
    funded = escrow.fund(7, terms, [], amount=250)
    h = funded.receipt.tx_hash
    tx = net["w3"].eth.get_transaction(h)
    assert tx["hash"].to_0x_hex() == h and tx["value"] == 250 * F and tx["gasPrice"] == GAS_PRICE
    r = net["w3"].eth.get_transaction_receipt(h)
    assert r["effectiveGasPrice"] == GAS_PRICE
    assert funded.receipt.fee == r["gasUsed"] * DEFAULT_GAS_PRICE_TINYBAR  # contract units
    assert {lg["transactionHash"].to_0x_hex() for lg in r["logs"]} == {h}
    logs = net["w3"].eth.get_logs({"address": escrow.contract_address, "fromBlock": r["blockNumber"],
                                   "toBlock": r["blockNumber"]})
    assert logs and {lg["transactionHash"].to_0x_hex() for lg in logs} == {h}
    block = net["w3"].eth.get_block(r["blockNumber"])
    assert h in [t.to_0x_hex() for t in block["transactions"]]
    assert [e.name for e in escrow.read_events(from_block=r["blockNumber"])] == ["JobFunded"]
    assert escrow.job(funded.job_key).escrow == 250
    # The same signed bytes sent again are the same transaction; the map survives a restart.
    again = HashBook(net["hashes"])
    assert again.to_inner(h) == net["relay"].hashes.to_inner(h) != h
    assert again.to_outer(again.to_inner(h)) == h


def test_cancel_refunds_the_deposit_in_tinybar(net):
    acct = rich_account(net)
    escrow = EscrowV2(net["url"], net["chain"]["escrow_v2_address"], acct, units=ValueUnits.hedera())
    terms = JobTerms(acct.address, escrow.chain_time() + 3600, 60, 10, 100, 4)
    key = escrow.fund(8, terms, [], amount=777).job_key
    before = escrow.balance()
    cancelled = escrow.cancel(key)
    assert escrow.pending() == 777
    withdrawn = escrow.withdraw()
    assert escrow.balance() == before + 777 - cancelled.fee - withdrawn.fee
    assert net["w3"].eth.get_balance(acct.address) == escrow.balance() * F


def test_a_client_that_skips_the_conversion_is_refused_or_off_by_1e10(net):
    acct = rich_account(net)
    to = Account.create().address
    forgetful = Ledger(net["url"], net["chain"]["contract_address"], acct)  # native units: wrong here
    with pytest.raises(LedgerError, match="1 tinybar"):
        forgetful.transfer(to, 5)
    assert forgetful.balance() == 10**12 * F  # a balance 10^10 times what the account holds
    right = Ledger(net["url"], net["chain"]["contract_address"], acct, units=ValueUnits.hedera())
    right.transfer(to, 5)
    assert right.balance(to) == 5 == net["anvil"].eth.get_balance(to)


def test_typed_transactions_decode_with_their_sender():
    acct = Account.create()
    raw = acct.sign_transaction({"type": 2, "to": "0x000000000000000000000000000000000000dEaD",
                                 "value": 3 * F, "gas": 21_000, "maxFeePerGas": 2 * GAS_PRICE,
                                 "maxPriorityFeePerGas": 0, "nonce": 4, "chainId": 298}).raw_transaction
    tx = decode_raw_transaction(bytes(raw))
    assert (tx["from"], tx["chainId"], tx["nonce"], tx["value"], tx["maxFeePerGas"]) == (
        acct.address, 298, 4, 3 * F, 2 * GAS_PRICE)
    assert tx["gasPrice"] is None and keccak(bytes(raw)) != b""
