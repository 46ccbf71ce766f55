"""The browser UI end to end: Chromium (Playwright) against a real devnet, bootstrap, client and
trainers. Submits the breast-cancer job through the New job page, follows it to "done" on the
Job page, downloads the result and checks it against the stored ciphertext; a bad CSV shows its
error. Screenshots of every page at 1280x800 and 390x844 go to ``test-artifacts/ui/``.
"""

from __future__ import annotations

import hashlib
import io
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from .harness import ui_network

pytestmark = [pytest.mark.slow, pytest.mark.browser]

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "test-artifacts" / "ui"
EXAMPLE_SPEC = REPO / "src" / "fedswarm" / "examples" / "breast_cancer.seq.json"
VIEWPORTS = {"desktop": {"width": 1280, "height": 800}, "phone": {"width": 390, "height": 844}}
TRAINERS = 3
ROUNDS = 3


@pytest.fixture(scope="module")
def network(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """Devnet + bootstrap + client + TRAINERS+1 trainers (one standby), like `fedswarm demo`,
    and a broken CSV for the error path."""
    with ui_network(tmp_path_factory.mktemp("ui"), TRAINERS) as net:
        bad = net["root"] / "broken.csv"
        bad.write_text("a,b,c\n1,2\n3,4,5,6\n")
        yield {**net, "bad_csv": bad}


@pytest.fixture(scope="module")
def artifacts() -> Path:
    shutil.rmtree(ARTIFACTS, ignore_errors=True)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS


def shoot(page: Any, name: str, artifacts: Path) -> None:
    page.screenshot(path=str(artifacts / f"{name}.png"), full_page=True)


def new_page(browser: Any, api: str, viewport: str = "desktop") -> Any:
    ctx = browser.new_context(viewport=VIEWPORTS[viewport], accept_downloads=True, base_url=api)
    # Any request leaving the node (a CDN, a font) is a bug: fail it loudly.
    external: list[str] = []
    ctx.route("**/*", lambda route: route.continue_() if route.request.url.startswith(api)
              else (external.append(route.request.url), route.abort()))
    page = ctx.new_page()
    page.external_requests = external  # type: ignore[attr-defined]
    page.set_default_timeout(30_000)
    return page


def test_network_and_settings_pages(browser: Any, network: dict[str, Any], artifacts: Path) -> None:
    from playwright.sync_api import expect

    api = network["client"].api
    page = new_page(browser, api)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto("/")
    expect(page.get_by_role("heading", name="Network")).to_be_visible()
    rows = page.locator("[data-testid=trainers-table] tbody tr")
    expect(rows).to_have_count(TRAINERS + 1)
    expect(page.locator("[data-testid=trainers-table]")).to_contain_text("online")
    expect(page.locator("[data-testid=trainers-table]")).to_contain_text("cpu")
    shoot(page, "network-desktop", artifacts)

    # Keyboard: Tab from the skip link reaches the nav; Enter on "Settings" opens it.
    page.keyboard.press("Tab")
    expect(page.locator(".skip")).to_be_focused()
    page.get_by_role("link", name="Settings").focus()
    page.keyboard.press("Enter")
    expect(page.get_by_role("heading", name="This node")).to_be_visible()
    ident = httpx.get(f"{api}/api/v1/node", timeout=10).json()
    expect(page.get_by_test_id("wallet")).to_have_text(ident["address"])
    expect(page.get_by_test_id("balance")).to_contain_text("ETH")
    expect(page.locator("[data-testid=node-facts]")).to_contain_text("anvil")
    # The token is labelled, kept in localStorage and sent as a Bearer token on mutations.
    page.get_by_label("API token").fill("s3cret-token")
    page.get_by_role("button", name="Save token").click()
    assert page.evaluate("localStorage.getItem('fedswarm.apiToken')") == "s3cret-token"
    shoot(page, "settings-desktop", artifacts)
    page.get_by_role("button", name="Clear").click()
    assert page.evaluate("localStorage.getItem('fedswarm.apiToken')") is None
    assert not errors, errors
    assert not page.external_requests, page.external_requests
    page.context.close()


def test_bad_csv_shows_error(browser: Any, network: dict[str, Any], artifacts: Path) -> None:
    from playwright.sync_api import expect

    page = new_page(browser, network["client"].api)
    page.goto("/#/new")
    page.get_by_label("Dataset (CSV, Parquet or NPZ)").set_input_files(str(network["bad_csv"]))
    err = page.get_by_test_id("dataset-error")
    expect(err).to_contain_text("malformed CSV row")
    expect(page.get_by_label("Dataset (CSV, Parquet or NPZ)")).to_have_attribute("aria-invalid", "true")
    # Bad terms are refused inline too, before anything is sent.
    page.get_by_label("Rounds").fill("0")
    page.get_by_role("button", name="Get quote").click()
    expect(page.get_by_test_id("form-error")).to_contain_text("rounds")
    expect(page.get_by_role("button", name="Confirm & pay")).to_be_disabled()
    shoot(page, "new-job-error-desktop", artifacts)
    # Confirming without a usable dataset never reaches the node: no job appears.
    assert httpx.get(f"{network['client'].api}/api/v1/jobs", timeout=10).json()["jobs"] == []
    page.context.close()


# Generous: the submit dry-runs the model in a child process and the job trains for real; on a
# loaded 2-core machine that takes minutes (a quiet one: about a minute).
@pytest.mark.timeout(900)
def test_submit_watch_download(browser: Any, network: dict[str, Any], artifacts: Path) -> None:
    from playwright.sync_api import expect

    from fedswarm import crypto
    from fedswarm.identity import load_identity

    client = network["client"]
    page = new_page(browser, client.api)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("console", lambda msg: print("browser console:", msg.type, msg.text))
    page.goto("/#/new")
    page.get_by_label("Dataset (CSV, Parquet or NPZ)").set_input_files(str(network["dataset"]))
    expect(page.get_by_test_id("columns-ok")).to_contain_text("31 columns")
    page.get_by_label("Label column").fill("label")
    page.get_by_label("…or a model file").set_input_files(str(EXAMPLE_SPEC))
    page.get_by_label("Bundled example").select_option("")  # use the uploaded spec file
    page.get_by_label("Rounds").fill(str(ROUNDS))
    page.get_by_label("Trainers", exact=True).fill(str(TRAINERS))
    page.get_by_label("Local epochs").fill("2")
    page.get_by_text("Advanced terms").click()
    # A generous bid window: on a loaded 2-core machine trainers may answer slowly.
    page.get_by_label("Bid window (s)").fill("10")
    page.get_by_label("Round deadline (s)").fill("90")
    page.get_by_role("button", name="Get quote").click()
    expect(page.locator("[data-testid=quote-table] tbody tr")).to_have_count(TRAINERS + 1)  # + standby
    # (3 selected + 1 standby) x 3 rounds at 1e15..1e15+3000 wei each
    expect(page.get_by_test_id("quote-total")).to_have_attribute("data-raw", str(sum(10**15 + 1000 * i for i in range(4)) * ROUNDS))
    shoot(page, "new-job-desktop", artifacts)
    page.get_by_role("button", name="Confirm & pay").click()

    try:
        expect(page).to_have_url(re.compile(r"#/job/job-"), timeout=240_000)
    except AssertionError:
        shoot(page, "submit-stuck-desktop", artifacts)
        raise
    job_id = page.url.rsplit("/", 1)[-1]
    expect(page.get_by_test_id("stepper")).to_be_visible()
    state = page.get_by_test_id("job-state")
    expect(state).to_have_text(re.compile(r"^(done|failed|cancelled)$"), timeout=480_000)
    if state.inner_text() != "done":
        shoot(page, "job-failed-desktop", artifacts)
        raise AssertionError(f"job ended {state.inner_text()}: {page.get_by_test_id('job-error').inner_text()}")
    expect(page.locator("[data-testid=stepper] li.done")).to_have_count(6)
    # The chart has a point for every round, for both series.
    expect(page.locator("[data-testid=rounds-chart] circle.pt.acc")).to_have_count(ROUNDS)
    expect(page.locator("[data-testid=rounds-chart] circle.pt.loss")).to_have_count(ROUNDS)
    rows = page.locator("[data-testid=job-trainers] tbody tr")
    expect(rows.first).to_be_visible()
    expect(page.get_by_test_id("audit-status")).to_have_attribute("data-verified", "true", timeout=30_000)
    expect(page.locator("[data-testid=audit-table]")).to_contain_text("round_settled")
    job = httpx.get(f"{client.api}/api/v1/jobs/{job_id}", timeout=30).json()
    assert job["state"] == "done" and len(job["rounds_detail"]) == ROUNDS
    accepted = sum(t["units_accepted"] for t in job["trainers_detail"])
    assert accepted >= TRAINERS * ROUNDS
    expect(page.get_by_test_id("result-sha256")).to_have_text(job["result"]["sha256"])
    shoot(page, "job-desktop", artifacts)

    with page.expect_download() as dl_info:
        page.get_by_test_id("download").click()
    saved = artifacts / f"{job_id}.safetensors"
    dl_info.value.save_as(str(saved))
    got = saved.read_bytes()
    # The job's hash is of the ciphertext in the store: fetch it independently, check that
    # hash, decrypt it with the client's key and compare with what the browser downloaded.
    link = httpx.get(f"{client.api}/api/v1/jobs/{job_id}/result/link", timeout=30).json()
    buf = io.BytesIO(httpx.get(link["url"], timeout=60).content)
    assert hashlib.sha256(buf.getvalue()).hexdigest() == job["result"]["sha256"]
    plain = crypto.decrypt_from_box(buf.getvalue(), load_identity(client.home).box_key, job_id, "result")
    assert hashlib.sha256(got).hexdigest() == hashlib.sha256(plain).hexdigest()
    assert got[8:9] == b"{"  # a safetensors file: 8-byte header length, then its JSON header

    page.get_by_role("link", name="History").click()
    row = page.locator("[data-testid=history-table] tbody tr", has_text=job_id)
    expect(row).to_contain_text("done")
    final = job["final_metrics"]["accuracy"]
    expect(row).to_contain_text(f"{final:.4f}")
    assert final >= 0.9
    shoot(page, "history-desktop", artifacts)
    assert not errors, errors
    assert not page.external_requests, page.external_requests
    page.context.close()

    # Every page at phone size too; nothing may overflow the 390 px viewport sideways.
    phone = new_page(browser, client.api, "phone")
    ready = {"network": "trainers-table", "new-job": "quote", "job": "rounds-chart",
             "history": "history-table", "settings": "node-facts"}
    for name, url in [("network", "/#/network"), ("new-job", "/#/new"), ("job", f"/#/job/{job_id}"),
                      ("history", "/#/history"), ("settings", "/#/settings")]:
        phone.goto(url)
        phone.get_by_test_id(ready[name]).wait_for(state="attached")
        if name == "job":
            expect(phone.get_by_test_id("job-state")).to_have_text("done")
        width = phone.evaluate("document.documentElement.scrollWidth")
        assert width <= 390, f"{name} page is {width}px wide on a 390px phone"
        shoot(phone, f"{name}-phone", artifacts)
    phone.context.close()
