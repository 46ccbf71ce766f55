"""A wallet user end to end in Chromium: a real devnet, bootstrap, client and trainers, and an
injected EIP-1193 wallet that forwards to anvil for a funded account that is not the node's.

The user drives the client as a DELEGATE: the page is served by the bootstrap (another
origin), the client (started with ``--public-api``) is picked on the network page, and every
API call crosses origins with ``Authorization: Wallet <token>`` and CORS. Before sign-in the
page learns the delegate's chain (the wallet, on another chain, is offered the switch).
connect → sign in → upload (once, with the wallet-derived result key) → quote → the trainers
bid → the wallet pays the node's funding call → rounds on the chart → the result downloaded,
checked and decrypted in the browser (its sha256 is the recorded plaintext's) → the refund
withdrawn to the wallet. On chain: the client node's balance moved by its gas only, the
wallet's by exactly deposit - refund + its own gas. Without the wallet token the delegate's
job routes are unreadable from that page and changes are refused. A second wallet, signed in
on the client's own page (same origin, its cookie), sees 403 on the job, and no request of
either page leaves 127.0.0.1. One job, 2 rounds, 2 trainers + 1 standby.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from .harness import Wallet, guard_requests, install_wallet, ui_network

pytestmark = [pytest.mark.slow, pytest.mark.browser]

TRAINERS = 2
ROUNDS = 2
# anvil's default accounts (mnemonic "test test ... junk") are unlocked on anvil itself; the
# devnet uses 0 (deployer) and 1 (faucet), nodes have keys of their own.
USER_INDEX, STRANGER_INDEX = 5, 6


@pytest.fixture(scope="module")
def network(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """Devnet + bootstrap + client + TRAINERS+1 trainers (one standby)."""
    with ui_network(tmp_path_factory.mktemp("wallet-ui"), TRAINERS) as net:
        yield net


def rpc(url: str, method: str, *params: Any) -> Any:
    body = httpx.post(url, json={"jsonrpc": "2.0", "id": 1, "method": method, "params": list(params)}, timeout=30).json()
    assert "error" not in body, body
    return body["result"]


def balance(url: str, address: str) -> int:
    return int(rpc(url, "eth_getBalance", address, "latest"), 16)


def sent_by(url: str, address: str, first_block: int) -> tuple[int, int]:
    """(fees, value) of every transaction ``address`` sent from ``first_block`` on."""
    fees = value = 0
    for n in range(first_block, int(rpc(url, "eth_blockNumber"), 16) + 1):
        for tx in rpc(url, "eth_getBlockByNumber", hex(n), True)["transactions"]:
            if tx["from"].lower() != address.lower():
                continue
            receipt = rpc(url, "eth_getTransactionReceipt", tx["hash"])
            fees += int(receipt["gasUsed"], 16) * int(receipt["effectiveGasPrice"], 16)
            value += int(tx["value"], 16)
    return fees, value


def wallet_page(browser: Any, api: str, wallet: Wallet, delegate: str | None = None) -> Any:
    """A page of the node at ``api`` with ``wallet`` connected and signed in; with ``delegate``
    the page first picks that client node on its network page and signs in there."""
    from playwright.sync_api import expect

    ctx = browser.new_context(base_url=api, accept_downloads=True, viewport={"width": 1280, "height": 900})
    outside = guard_requests(ctx)  # anything but 127.0.0.1 is aborted and recorded
    install_wallet(ctx, wallet)
    page = ctx.new_page()
    page.outside = outside  # type: ignore[attr-defined]
    page.errors = []  # type: ignore[attr-defined]
    page.on("pageerror", lambda exc: page.errors.append(str(exc)))
    page.on("console", lambda msg: print("browser console:", msg.type, msg.text) if msg.type in ("error", "warning") else None)
    page.set_default_timeout(30_000)
    page.goto("/")
    if delegate is not None:
        page.goto("/#/network")
        page.get_by_test_id("delegate-select").select_option(delegate)
        page.get_by_role("button", name="Use this delegate").click()
        assert page.evaluate("localStorage.getItem('fedswarm.delegate')") == delegate
    page.get_by_role("button", name="Connect wallet").click()
    if delegate is not None:
        # The wallet is on another chain: the delegate told the page its chain before sign-in.
        expect(page.get_by_role("button", name=re.compile(r"^Switch to devnet"))).to_be_visible()
    page.get_by_role("button", name="Sign in with wallet").click()
    expect(page.get_by_test_id("session-address")).to_contain_text("signed in as")
    return page


def wallet_token(page: Any, base: str) -> str:
    """The wallet session token the page keeps for the API at ``base``."""
    return str(page.evaluate("(k) => JSON.parse(sessionStorage.getItem(k)).token", f"fedswarm.wallet:{base}"))


@pytest.mark.timeout(900)
def test_wallet_user_in_the_browser(browser: Any, network: dict[str, Any]) -> None:
    from playwright.sync_api import expect

    client, url = network["client"], network["rpc"]
    accounts = rpc(url, "eth_accounts")
    user, stranger = accounts[USER_INDEX], accounts[STRANGER_INDEX]
    node = httpx.get(f"{client.api}/api/v1/node", timeout=10).json()
    operator, chain_id = node["address"], node["chain"]["id"]
    assert user.lower() != operator.lower()
    first_block = int(rpc(url, "eth_blockNumber"), 16) + 1
    operator_before, user_before = balance(url, operator), balance(url, user)

    boot = network["bootstrap"].api
    assert boot != client.api
    wallet = Wallet(address=user, chain_id=1, rpc_url=url)  # on mainnet's id: the page must switch it
    page = wallet_page(browser, boot, wallet, delegate=client.api)
    assert ("wallet_switchEthereumChain", [{"chainId": hex(chain_id)}]) in wallet.calls
    expect(page.get_by_test_id("wallet-network")).to_contain_text("devnet")
    expect(page.get_by_test_id("wallet-balance")).to_contain_text("ETH")

    page.goto("/#/new")
    expect(page.get_by_test_id("data-notice")).to_be_visible()
    page.get_by_label("Dataset (CSV, Parquet or NPZ)").set_input_files(str(network["dataset"]))
    expect(page.get_by_test_id("columns-ok")).to_contain_text("31 columns")
    page.get_by_label("Label column").fill("label")
    page.get_by_label("Bundled example").select_option("breast_cancer")
    page.get_by_label("Rounds").fill(str(ROUNDS))
    page.get_by_label("Trainers", exact=True).fill(str(TRAINERS))
    page.get_by_text("Advanced terms").click()
    page.get_by_label("Standby trainers").fill("1")
    page.get_by_label("Bid window (s)").fill("8")
    page.get_by_label("Round deadline (s)").fill("90")
    # Short money windows (the devnet's minimum): the unpaid escrow returns seconds after the end.
    page.get_by_label("Settle window (s)").fill("10")
    page.get_by_label("Claim window (s)").fill("10")
    page.get_by_role("button", name="Get quote").click()
    expect(page.locator("[data-testid=quote-table] tbody tr")).to_have_count(TRAINERS + 1)
    expect(page.get_by_test_id("quote-total")).to_contain_text("ETH")
    # Every text the progress line shows during the upload (only upload progress events write it).
    page.evaluate("""() => { const el = document.querySelector('[data-testid=upload-progress-text]'); window.progressSeen = [];
      new MutationObserver(() => window.progressSeen.push(el.textContent)).observe(el, {childList: true, characterData: true, subtree: true}); }""")
    page.get_by_role("button", name=re.compile("Submit")).click()
    expect(page).to_have_url(re.compile(r"#/job/job-"), timeout=240_000)
    seen = page.evaluate("window.progressSeen")
    assert any(re.fullmatch(r"100 % \(\d+\.\d MiB of \d+\.\d MiB\)", t) for t in seen), seen
    job_id = page.url.rsplit("/", 1)[-1]
    # Uploaded once: the column peek read the CSV in the browser.
    expect(page.get_by_test_id("pay-total")).to_contain_text("ETH", timeout=120_000)
    funding = httpx.get(f"{client.api}/api/v1/jobs/{job_id}/funding", timeout=10).json()
    assert funding["payer"].lower() == user.lower() and funding["operator"].lower() == operator.lower()
    page.get_by_role("button", name="Pay from wallet").click()
    expect(page.get_by_test_id("pay-tx")).to_have_text(re.compile(r"^0x[0-9a-f]{64}$"))
    assert len(wallet.sent) == 1 and wallet.sent[0]["to"] == funding["to"] and wallet.sent[0]["data"] == funding["data"]
    assert int(wallet.sent[0]["value"], 16) == int(funding["value"])

    state = page.get_by_test_id("job-state")
    expect(state).to_have_text(re.compile(r"^(done|failed|cancelled)$"), timeout=480_000)
    if state.inner_text() != "done":
        raise AssertionError(f"job ended {state.inner_text()}: {page.get_by_test_id('job-error').inner_text()}")
    expect(page.locator("[data-testid=rounds-chart] circle.pt.acc")).to_have_count(ROUNDS)
    assert page.locator("circle.pt.acc[data-round='0']").get_attribute("cx") == "48"
    job = httpx.get(f"{client.api}/api/v1/jobs/{job_id}", timeout=30).json()
    assert job["owner"].lower() == user.lower() and job["result"]["envelope"] == "fedswarm-wallet-v1"
    expect(page.get_by_test_id("trust-notice")).to_contain_text("keeps no plaintext copy")

    with page.expect_download() as dl:
        page.get_by_test_id("download").click()
    expect(page.get_by_test_id("result-plain-sha256")).to_have_text(job["result"]["plain_sha256"], timeout=60_000)
    saved = network["root"] / f"{job_id}.safetensors"
    dl.value.save_as(str(saved))
    assert dl.value.suggested_filename == f"{job_id}.safetensors"
    got = saved.read_bytes()
    assert hashlib.sha256(got).hexdigest() == job["result"]["plain_sha256"] and got[8:9] == b"{"
    # The node serves no plaintext of a wallet's result.
    assert httpx.get(f"{client.api}/api/v1/jobs/{job_id}/result", timeout=30).status_code == 409

    # The refund: credited to the wallet in the escrow once the reservations are released
    # (the windows above are the devnet's 10 s minimum), then withdrawn from the page.
    deadline = time.monotonic() + 180
    while not (job := httpx.get(f"{client.api}/api/v1/jobs/{job_id}", timeout=30).json())["refund"]["released_at"]:
        assert time.monotonic() < deadline, f"escrow not released: {job['refund']} {job['escrow']}"
        time.sleep(2)
    page.reload()
    expect(page.get_by_test_id("refund")).to_contain_text("released")
    withdraw = page.get_by_role("button", name="Withdraw to wallet")
    expect(withdraw).to_be_visible()
    # pending(address): what the escrow holds for the wallet (its refund)
    credited = int(rpc(url, "eth_call", {"to": funding["to"], "data": "0x5eebea20" + user[2:].lower().rjust(64, "0")}, "latest"), 16)
    assert credited > 0
    withdraw.click()
    expect(page.get_by_test_id("withdraw-status")).to_have_text("Nothing credited to your wallet in the escrow.", timeout=60_000)
    job = httpx.get(f"{client.api}/api/v1/jobs/{job_id}", timeout=30).json()
    deposited = int(job["deposited_wei"])
    op_fees, op_value = sent_by(url, operator, first_block)
    user_fees, user_value = sent_by(url, user, first_block)
    assert op_value == 0 and operator_before - balance(url, operator) == op_fees > 0  # gas only
    # the wallet paid the deposit and its own gas, and got the refund back: nothing else
    assert user_value == deposited
    assert user_before - balance(url, user) == deposited + user_fees - credited
    assert not page.errors, page.errors
    assert not page.outside, page.outside

    # Through the delegate, the wallet's own list; without its token the bootstrap's page can
    # read none of the delegate's job routes (no CORS answer), a wrong token is a 401, and a
    # change from that origin is refused before it runs.
    page.goto("/#/history")
    expect(page.locator("[data-testid=history-table] tbody tr")).to_have_count(1)
    expect(page.get_by_test_id("history-table")).to_contain_text(job_id)
    probe = page.evaluate("""async ([base, id, token]) => {
      const get = async (path, headers) => {
        try { return (await fetch(base + path, {headers, credentials: 'omit', cache: 'no-store'})).status; }
        catch (e) { return 'blocked'; }
      };
      const wallet = {Authorization: 'Wallet ' + token};
      return {detail: await get('/api/v1/jobs/' + id, wallet), list: await get('/api/v1/jobs', wallet),
              detailWithout: await get('/api/v1/jobs/' + id, {}), listWithout: await get('/api/v1/jobs', {}),
              wrongToken: await get('/api/v1/jobs', {Authorization: 'Wallet nope'}),
              chainWithout: await (await fetch(base + '/api/v1/node', {credentials: 'omit'})).json()};
    }""", [client.api, job_id, wallet_token(page, client.api)])
    assert probe["detail"] == probe["list"] == 200, probe
    assert probe["detailWithout"] == probe["listWithout"] == "blocked" and probe["wrongToken"] == 401, probe
    assert probe["chainWithout"] == {"chain": node["chain"]}, probe["chainWithout"]
    r = httpx.post(f"{client.api}/api/v1/jobs/{job_id}/cancel", headers={"Origin": boot}, timeout=10)
    assert r.status_code == 403 and "not allowed" in r.json()["error"], r.text
    assert "access-control-allow-origin" not in r.headers

    # Another wallet, on the client's own page (same origin): the job is not its to see.
    other = wallet_page(browser, client.api, Wallet(address=stranger, chain_id=chain_id, rpc_url=url))
    other.goto(f"/#/job/{job_id}")
    expect(other.get_by_test_id("job-load-error")).to_contain_text("belongs to another account")
    status = other.evaluate("""async (id) => {
      const s = JSON.parse(sessionStorage.getItem('fedswarm.wallet:' + location.origin));
      const r = await fetch('/api/v1/jobs/' + id, {headers: {Authorization: 'Wallet ' + s.token}, credentials: 'omit'});
      return r.status;
    }""", job_id)
    assert status == 403
    other.goto("/#/history")
    expect(other.get_by_test_id("history-table")).to_contain_text("none yet")
    assert not other.outside, other.outside
    other.context.close()
    page.context.close()
