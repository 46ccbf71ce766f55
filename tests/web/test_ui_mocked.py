"""The browser UI against a node mocked at the network layer (no devnet, seconds per test):
amounts, the wallet box, the result envelope opened with WebCrypto (the node's test vector),
the chart's geometry, in-place updates of the job page, the pay panel, downloads that fail,
the CSV column peek (no upload), delegates, and the single live region.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from .harness import (
    MockNode,
    Wallet,
    guard_requests,
    install_wallet,
)

pytestmark = [pytest.mark.browser]

REPO = Path(__file__).resolve().parents[2]
VECTOR = json.loads((REPO / "tests" / "fixtures" / "wallet_envelope_vector.json").read_text())
HEDERA_TESTNET = {"id": 296, "name": "hedera-testnet", "currency": "HBAR", "amount_decimals": 8, "value_decimals": 18,
                  "explorer_tx": "https://hashscan.io/testnet/transaction/{tx}", "contract": "0x" + "c0" * 20,
                  "operator": "0x" + "0e" * 20}
DEVNET = {"id": 31337, "name": "devnet", "currency": "ETH", "amount_decimals": 18, "value_decimals": 18,
          "explorer_tx": None, "contract": "0x" + "c0" * 20, "operator": "0x" + "0e" * 20}
USER = "0x" + "ab" * 20


def job(state: str = "running", current_round: int = 1, rounds: int = 3, **extra: Any) -> dict[str, Any]:
    done = list(range(current_round))
    detail = {
        "job_id": "job-1", "state": state, "dataset": "d.csv", "created": 1.0, "updated": 2.0, "rounds": rounds,
        "current_round": current_round, "trainers": 2, "deposited_wei": "40000000", "error": None, "final_accuracy": None,
        "terms": {"rounds": rounds, "trainers": 2, "local_epochs": 2, "strategy": "median", "price_cap_wei": "777",
                  "label": "target", "standby": 0, "batch_size": 16, "lr": 0.05, "bid_window_s": 4, "round_deadline_s": 60},
        "audit_topic": None, "owner": USER,
        "rounds_detail": [{"round": r, "state": "settled", "val_loss": 1.0 - 0.2 * r, "val_accuracy": 0.5 + 0.1 * r,
                           "seconds": 10.0 + r, "metrics": {}} for r in done],
        "units": [{"round": r, "trainer_peer": "peerA", "num_samples": 100 + r, "train_loss": 0.9 - 0.1 * r} for r in done],
        "trainers_detail": [{"peer_id": "peerA", "address": "0x" + "1a" * 20, "price_wei": "10000000", "standby": False,
                             "units_assigned": 2, "units_committed": 2, "units_accepted": 2, "units_rejected": 0, "paid_wei": "20000000",
                             "client_rejection_rate": 0.125, "client_units_judged": 24}],
        "operator_record": {"operator": "0x" + "0e" * 20, "rejection_rate": 0.25, "units_judged": 40},
        "paid_wei": "20000000", "escrow": {"job_key": "0x" + "11" * 32, "payer": USER, "refunded_wei": "0", "transactions": {}},
        "refund": None, "result": None, "final_metrics": {}, "events": [{"ts": 1.0, "msg": f"event {i}"} for i in range(3)],
    }
    detail.update(extra)
    return detail


def open_page(browser: Any, node: MockNode, wallet: Wallet | None = None, url: str = "/") -> Any:
    ctx = browser.new_context(base_url=node.origin, accept_downloads=True)
    node.install(ctx)
    outside = guard_requests(ctx)
    if wallet is not None:
        install_wallet(ctx, wallet)
    page = ctx.new_page()
    page.outside = outside  # type: ignore[attr-defined]
    page.errors = []  # type: ignore[attr-defined]
    page.on("pageerror", lambda exc: page.errors.append(str(exc)))
    page.set_default_timeout(10_000)
    page.goto(url)
    return page


def base_node(chain: dict[str, Any] = DEVNET) -> MockNode:
    node = MockNode()
    node.routes.update({
        "GET /api/v1/ui": {"role": "client", "pages": []},
        "GET /api/v1/node": {"address": "0x" + "0e" * 20, "balance_wei": "5", "network": "devnet", "chain": chain},
        "GET /api/v1/trainers": {"trainers": []},
        "GET /api/v1/peers": {"directory": [], "connected": []},
        "GET /api/v1/examples": {"examples": [{"name": "breast_cancer"}]},
        "GET /api/v1/jobs": {"jobs": []},
    })
    return node


def events_route(frames: list[dict[str, Any]]) -> Any:
    """Each connection gets the next job frame (the page reconnects after a stream ends)."""
    queue = list(frames)

    def answer(_req: Any) -> tuple[int, str, dict[str, str]]:
        body = f"event: job\ndata: {json.dumps(queue.pop(0))}\n\n" if queue else ": idle\n\n"
        return 200, body, {"Content-Type": "text/event-stream"}
    return answer


def test_format_amount_and_network_names(browser: Any) -> None:
    page = open_page(browser, base_node())
    got = page.evaluate("""async () => {
      const u = await import('/ui/static/units.js');
      const eth = {decimals: 18, currency: 'ETH'}, hbar = {decimals: 8, currency: 'HBAR'};
      return [u.formatAmount('12000000000018000', eth), u.formatAmount('123456789', hbar), u.formatAmount('0', eth),
              u.formatAmount('1000000000000000000000000', eth), u.formatAmount('1', eth), u.formatAmount('100000000', hbar),
              u.formatAmount('2500000000000000000', {decimals: 18, currency: 'HBAR'}), u.formatAmount(null, eth),
              u.networkName(296), u.networkName(295), u.networkName(297), u.networkName(31337, {id: 31337, name: 'devnet'}),
              u.networkName(5), u.explorerUrl({explorer_tx: 'https://hashscan.io/testnet/transaction/{tx}'}, '0x' + 'a'.repeat(64)),
              u.parseAmount('0.01', 18), u.parseAmount('1.5', 8), u.parseAmount('12', 8),
              (() => { try { u.parseAmount('0.000000001', 8); return 'parsed'; } catch (e) { return e.message; } })(),
              u.formatAmount('777', {decimals: 18, digits: 18, plain: true})];
    }""")
    assert got == ["0.012 ETH", "1.23456789 HBAR", "0 ETH", "1,000,000 ETH", "< 0.000001 ETH", "1 HBAR", "2.5 HBAR", "—",
                   "Hedera testnet", "Hedera mainnet", "Hedera previewnet", "devnet (chain 31337)", "chain 5",
                   "https://hashscan.io/testnet/transaction/0x" + "a" * 64,
                   "10000000000000000", "150000000", "1200000000", '"0.000000001" has more than 8 decimals',
                   "0.000000000000000777"]
    page.context.close()


def test_result_envelope_opens_with_the_node_vector(browser: Any) -> None:
    """The browser's WebCrypto derivation and decryption against the node's own test vector;
    a flipped byte, a wrong job id and a truncated file are refused."""
    page = open_page(browser, base_node())
    got = page.evaluate("""async (v) => {
      const r = await import('/ui/static/resultkey.js');
      const key = await r.keyFromSignature(v.signature);
      const data = r.hexToBytes(v.ciphertext);
      const plain = await r.openEnvelope(data, key, v.job_id);
      const fails = async (d, job) => { try { await r.openEnvelope(d, key, job); return 'opened'; } catch (e) { return e.constructor.name + ': ' + e.message; } };
      const flipped = data.slice(); flipped[60] ^= 1;
      return { message: r.resultKeyMessage(v.origin, v.chain_id), seed: key.seedHex, pub: key.publicHex,
               plainHex: r.bytesToHex(plain), plainSha: await r.sha256Hex(plain), sha: await r.sha256Hex(data),
               flipped: await fails(flipped, v.job_id), otherJob: await fails(data, 'job-other'),
               truncated: await fails(data.slice(0, data.length - 1), v.job_id) };
    }""", VECTOR)
    assert got["message"] == VECTOR["message"]
    assert got["seed"] == VECTOR["seed"] and got["pub"] == VECTOR["public"]
    assert got["sha"] == VECTOR["sha256"]
    assert got["plainHex"] == VECTOR["plaintext"] and got["plainSha"] == VECTOR["plain_sha256"]
    assert len(bytes.fromhex(VECTOR["plaintext"])) > VECTOR["segment_size"]  # several segments
    for case in ("flipped", "otherJob", "truncated"):
        assert got[case].startswith("EnvelopeError"), (case, got[case])
    page.context.close()


def test_chart_geometry_and_round_label(browser: Any) -> None:
    """Round 0 sits on the left axis and the last round on the right one; the stepper counts
    rounds from 1 and never shows the same number for two rounds."""
    from playwright.sync_api import expect

    node = base_node()
    detail = job(current_round=3, rounds=3, state="done")
    node.routes["GET /api/v1/jobs/job-1"] = detail
    node.routes["GET /api/v1/jobs/job-1/events"] = events_route([detail])
    page = open_page(browser, node, url="/#/job/job-1")
    expect(page.locator("circle.pt.loss")).to_have_count(3)
    cx = {int(c.get_attribute("data-round")): float(c.get_attribute("cx")) for c in page.locator("circle.pt.loss").all()}
    assert cx == {0: 48.0, 1: 320.0, 2: 592.0}  # L=48, W-R=592: evenly spaced from the left axis
    ticks = page.locator("text.tick.round")
    assert ticks.all_text_contents() == ["1", "2", "3"]
    assert float(ticks.first.get_attribute("x")) == 48.0
    labels = page.evaluate("""async () => {
      const p = await import('/ui/static/views/jobparts.js');
      return [0, 1, 2].map((r) => p.stepper({state: 'running', current_round: r, rounds: 3, rounds_detail: []})
        .querySelectorAll('li')[3].textContent);
    }""")
    assert labels == ["round 1 of 3", "round 2 of 3", "round 3 of 3"]
    assert not page.errors, page.errors
    page.context.close()


def test_events_update_in_place(browser: Any) -> None:
    """An event redraws the job page's numbers without collapsing open <details> or moving
    the focus; only the small status region is live."""
    from playwright.sync_api import expect

    node = base_node()
    frames = [job(current_round=1), job(current_round=2, events=[{"ts": 1.0, "msg": f"event {i}"} for i in range(5)])]
    node.routes["GET /api/v1/jobs/job-1"] = frames[0]
    node.routes["GET /api/v1/jobs/job-1/events"] = events_route(frames)
    page = open_page(browser, node, url="/#/job/job-1")
    expect(page.locator("[data-fact=rounds]")).to_have_text("1 / 3")
    assert page.evaluate("document.querySelector('main').hasAttribute('aria-live')") is False
    live = page.evaluate("[...document.querySelectorAll('[aria-live]')].map((e) => e.id)")
    assert live == ["status"]
    page.get_by_test_id("timeline").locator("summary").click()
    page.get_by_test_id("chart-data").locator("summary").click()
    page.locator("#cancel-btn").focus()
    expect(page.locator("[data-fact=rounds]")).to_have_text("2 / 3", timeout=15_000)
    expect(page.get_by_test_id("timeline").locator("summary")).to_have_text("Node timeline (5 events)")
    assert page.get_by_test_id("timeline").get_attribute("open") is not None
    assert page.get_by_test_id("chart-data").get_attribute("open") is not None
    assert page.evaluate("document.activeElement && document.activeElement.id") == "cancel-btn"
    expect(page.get_by_test_id("trainer-samples")).to_have_text("101")
    expect(page.get_by_test_id("trainer-loss")).to_contain_text("0.8000 (round 2)")
    expect(page.get_by_test_id("eta")).to_contain_text("s left")
    # what trainers see of this job's operator: the rate each bidder saw, and the operator's own
    expect(page.get_by_test_id("trainer-sees-rate")).to_have_text("12.5 % of 24 units")
    expect(page.get_by_test_id("operator-record")).to_contain_text("25.0 % of 40 units")
    assert not page.errors, page.errors
    page.context.close()


def test_failed_download_shows_an_error(browser: Any) -> None:
    from playwright.sync_api import expect

    node = base_node()
    detail = job(state="done", current_round=3, owner="node", result={"key": "k", "sha256": "ab" * 32})
    node.routes["GET /api/v1/jobs/job-1"] = detail
    node.routes["GET /api/v1/jobs/job-1/events"] = events_route([detail])
    node.routes["GET /api/v1/jobs/job-1/result"] = lambda _r: (502, {"error": "stored result is not the recorded one"}, {})
    page = open_page(browser, node, url="/#/job/job-1")
    page.get_by_test_id("download").click()
    expect(page.get_by_test_id("download-error")).to_contain_text("stored result is not the recorded one")
    page.context.close()


def signer(text: str) -> str:
    from eth_account import Account
    from eth_account.messages import encode_defunct

    return Account.sign_message(encode_defunct(text=text), private_key=VECTOR["wallet_private_key"]).signature.hex()


def test_wallet_connect_switch_sign_in_and_pay(browser: Any) -> None:
    """Connect through EIP-6963, see the network and an HBAR balance, be switched to the
    node's chain on sign-in, sign in, then pay a quote: the wallet gets the node's funding call
    untouched and the transaction links to HashScan."""
    from playwright.sync_api import expect

    node = base_node(HEDERA_TESTNET)
    addr = VECTOR["wallet_address"]
    w = Wallet(address=addr, chain_id=1, balance=25 * 10**17, sign=lambda t: "0x" + signer(t).removeprefix("0x"))
    node.routes["POST /api/v1/wallet/challenge"] = lambda req: (
        (400, {"error": "switch your wallet to chain 296"}, {}) if json.loads(req.post_data)["chain_id"] != 296
        else (200, {"message": f"127.0.0.1 wants you to sign in with your Ethereum account:\n{addr}\n\nhi", "nonce": "n0nce123",
                    "expires_at": 9e9}, {}))
    node.routes["POST /api/v1/wallet/session"] = {"token": "tok-123", "address": addr, "expires_at": 4102444800}
    node.routes["GET /api/v1/wallet/me"] = {"address": addr, "expires_at": 4102444800}
    funding = {"to": "0x" + "c0" * 20, "data": "0xdeadbeef", "value": "1230000000000000000", "chain_id": 296, "payer": addr,
               "operator": "0x" + "0e" * 20, "job_key": "0x" + "11" * 32, "total_wei": "123000000", "expires_at": 4102444800,
               "trainers": [{"address": "0x" + "1a" * 20, "peer_id": "peerA", "price_wei": "41000000", "units": 3, "standby": False}]}
    detail = job(state="awaiting-payment", current_round=0, funding=funding, deposited_wei="0")
    node.routes["GET /api/v1/jobs/job-1"] = detail
    node.routes["GET /api/v1/jobs/job-1/events"] = events_route([detail])
    node.routes["POST /api/v1/jobs/job-1/funding"] = {"ok": True}
    page = open_page(browser, node, wallet=w)
    page.get_by_role("button", name="Connect wallet").click()
    expect(page.get_by_test_id("wallet-network")).to_have_text("chain 1")
    expect(page.get_by_test_id("wallet-balance")).to_have_text("2.5 HBAR")
    expect(page.get_by_role("button", name="Switch to Hedera testnet")).to_be_visible()
    page.get_by_role("button", name="Sign in with wallet").click()
    expect(page.get_by_test_id("session-address")).to_contain_text("signed in as")
    assert ("wallet_switchEthereumChain", [{"chainId": "0x128"}]) in w.calls
    expect(page.get_by_test_id("wallet-network")).to_have_text("Hedera testnet")
    stored = page.evaluate("sessionStorage.getItem('fedswarm.wallet:' + location.origin)")
    assert json.loads(stored)["token"] == "tok-123"

    page.goto("/#/job/job-1")
    expect(page.get_by_test_id("pay-total")).to_have_text("1.23 HBAR")
    expect(page.locator("[data-testid=pay-table] tbody tr")).to_have_count(1)
    assert node.calls("GET", "/api/v1/jobs/job-1")[-1].headers.get("authorization") == "Wallet tok-123"
    page.get_by_role("button", name="Pay from wallet").click()
    expect(page.get_by_test_id("pay-tx")).to_have_text("0x" + "ab" * 32)
    assert w.sent == [{"from": addr, "to": funding["to"], "data": "0xdeadbeef", "value": hex(1230000000000000000)}]
    link = page.get_by_test_id("pay-tx").locator("xpath=..")
    assert link.get_attribute("href") == "https://hashscan.io/testnet/transaction/0x" + "ab" * 32
    assert not page.outside, page.outside  # the explorer link is only a link: nothing fetched
    expect(page.get_by_test_id("status")).to_have_text("Payment sent")
    page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_role("button", name="Sign in with wallet")).to_be_visible()
    assert not page.errors, page.errors
    page.context.close()


def test_csv_peek_upload_once_with_wallet_key_and_clone(browser: Any) -> None:
    """The label column comes from the CSV's first bytes (no /columns call); submitting uploads
    the dataset once with the wallet-derived result key; a clone prefills the terms."""
    from playwright.sync_api import expect

    node = base_node()
    addr = VECTOR["wallet_address"]
    w = Wallet(address=addr, chain_id=31337, balance=10**18, sign=lambda t: "0x" + signer(t).removeprefix("0x"))
    node.routes["POST /api/v1/jobs"] = {"job_id": "job-2", "state": "submitted"}
    node.routes["GET /api/v1/jobs/job-2"] = job(state="submitted", current_round=0)
    node.routes["GET /api/v1/jobs/job-2/events"] = events_route([])
    node.routes["POST /api/v1/quote"] = {"ok": True, "total_wei": "3000", "trainers": [{"peer_id": "p", "price_wei": "1000", "standby": False}]}
    node.routes["GET /api/v1/jobs/job-1"] = job()
    node.routes["POST /api/v1/wallet/challenge"] = {"message": f"x wants you to sign in with your Ethereum account:\n{addr}\n\nhi", "nonce": "n", "expires_at": 9e9}
    node.routes["POST /api/v1/wallet/session"] = {"token": "tok-9", "address": addr, "expires_at": 4102444800}
    node.routes["GET /api/v1/wallet/me"] = {"address": addr, "expires_at": 4102444800}
    page = open_page(browser, node, wallet=w)
    page.get_by_role("button", name="Connect wallet").click()
    page.get_by_role("button", name="Sign in with wallet").click()
    expect(page.get_by_test_id("session-address")).to_be_visible()
    page.goto("/#/new")
    expect(page.get_by_test_id("data-notice")).to_contain_text("trainer decrypts and sees the rows")
    csv = "a,b,target\n" + "\n".join(f"{i},{i * 2},{i % 2}" for i in range(2000)) + "\n"
    page.get_by_label("Dataset (CSV, Parquet or NPZ)").set_input_files(
        files=[{"name": "d.csv", "mimeType": "text/csv", "buffer": csv.encode()}])
    expect(page.get_by_test_id("columns-ok")).to_contain_text("3 columns detected: a, b, target")
    expect(page.get_by_label("Label column")).to_have_value("target")
    page.get_by_label("Bundled example").select_option("breast_cancer")
    page.get_by_role("button", name="Get quote").click()
    expect(page.get_by_test_id("quote-total")).to_have_text("< 0.000001 ETH")
    page.get_by_role("button", name=re.compile("Submit")).click()
    expect(page).to_have_url(re.compile(r"#/job/job-2"))
    assert node.calls("POST", "/api/v1/columns") == []
    posts = node.calls("POST", "/api/v1/jobs")
    assert len(posts) == 1 and len(posts[0].body) > len(csv)
    assert posts[0].headers.get("authorization") == "Wallet tok-9"
    from fedswarm.wallet_envelope import public_from_seed, seed_from_wallet_key

    pub = public_from_seed(seed_from_wallet_key(VECTOR["wallet_private_key"], node.origin, 31337)).hex()
    assert b'name="result_public_key"\r\n\r\n' + pub.encode() in posts[0].body
    assert b'name="result_key_origin"\r\n\r\n' + node.origin.encode() in posts[0].body
    page.goto("/#/new/job-1")
    expect(page.get_by_test_id("clone-note")).to_contain_text("Terms copied from job-1")
    expect(page.get_by_label("Rounds")).to_have_value("3")
    expect(page.get_by_label("Price cap per unit (ETH)")).to_have_value("0.000000000000000777")
    expect(page.get_by_label("Aggregation strategy")).to_have_value("median")
    # A malformed CSV: the error shows at once, nothing is sent.
    page.get_by_label("Dataset (CSV, Parquet or NPZ)").set_input_files(
        files=[{"name": "bad.csv", "mimeType": "text/csv", "buffer": b"a,b,c\n1,2\n3,4,5,6\n"}])
    expect(page.get_by_test_id("dataset-error")).to_contain_text("malformed CSV row 2")
    assert not page.errors, page.errors
    page.context.close()


def test_clients_delegates_and_missing_route(browser: Any) -> None:
    """Client nodes with their rejection rate; picking a delegate sends the API calls there;
    a node without the clients route says so instead of failing."""
    from playwright.sync_api import expect

    node = base_node()
    node.routes["GET /api/v1/clients"] = {"clients": [
        {"peer_id": "peer-del", "api": "http://127.0.0.1:8766", "online": True, "operator": "0x" + "aa" * 20,
         "rejection_rate": 0.125, "units_judged": 40},
        {"peer_id": "peer-plain", "api": None, "online": False, "operator": None, "rejection_rate": None, "units_judged": 0}]}
    delegate = base_node()
    delegate.origin = "http://127.0.0.1:8766"
    page = open_page(browser, node)
    delegate.install(page.context)
    rates = page.get_by_test_id("rejection-rate")
    expect(rates).to_have_count(2)
    assert rates.all_inner_texts() == ["12.5 % of 40 units", "no settled units"]
    page.get_by_test_id("delegate-select").select_option("http://127.0.0.1:8766")
    page.get_by_role("button", name="Use this delegate").click()
    assert page.evaluate("localStorage.getItem('fedswarm.delegate')") == "http://127.0.0.1:8766"
    page.get_by_role("link", name="History").click()
    expect(page.get_by_test_id("history-table")).to_be_visible()
    assert delegate.calls("GET", "/api/v1/jobs"), "the history came from the delegate"
    assert not node.calls("GET", "/api/v1/jobs")
    page.context.close()

    bare = base_node()
    page = open_page(browser, bare)
    expect(page.get_by_test_id("clients-missing")).to_be_visible()
    # No wallet in this browser: the page says so.
    page.get_by_role("button", name="Connect wallet").click()
    expect(page.get_by_test_id("wallet-error-msg")).to_contain_text("no browser wallet found")
    assert not page.errors, page.errors
    page.context.close()


def test_someone_elses_job(browser: Any) -> None:
    """A 403 on the job leaves only the error on the page (no controls for a job one cannot see);
    hidden controls stay hidden whatever the stylesheet says about buttons."""
    from playwright.sync_api import expect

    node = base_node()
    node.routes["GET /api/v1/jobs/job-9"] = lambda _r: (403, {"error": "job job-9 belongs to another account"}, {})
    node.routes["GET /api/v1/jobs/job-9/events"] = lambda _r: (403, {"error": "job job-9 belongs to another account"}, {})
    page = open_page(browser, node, url="/#/job/job-9")
    expect(page.get_by_test_id("job-load-error")).to_have_text("job job-9 belongs to another account")
    expect(page.get_by_role("button", name="Cancel job")).to_have_count(0)
    done = job(state="done", current_round=3, owner="node")
    node.routes["GET /api/v1/jobs/job-1"] = done
    node.routes["GET /api/v1/jobs/job-1/events"] = events_route([done])
    page.goto("/#/job/job-1")
    expect(page.get_by_test_id("job-state")).to_have_text("done")
    expect(page.get_by_role("button", name="Cancel job")).to_be_hidden()
    page.context.close()
