"""`fedswarm demo`: a devnet, a bootstrap, a client and N trainers as separate processes on
127.0.0.1; one paid job from submit to decrypted result; a report; everything stopped.

Faults (``--faults``) are injected the way they happen for real: ``kill`` SIGKILLs a chosen
trainer once round 1 starts; ``poison``, ``lazy``, ``inflate-samples`` (reports 10**15 samples)
and ``reverse`` (global - 1.5 x its honest delta) each start one trainer that cheats,
``sybil-lazy`` two (one owner's keys sending the global weights plus tiny noise) and ``copy`` a
copier plus the honest trainer it copies from (they share a folder); cheaters are the cheapest,
so they get picked. ``client-restart`` SIGKILLs the client mid-round and starts it again on the
same home, ``never-settle`` runs a client that never settles so trainers claim. The cheating
trainers and the non-paying client are ``fedswarm.testing`` doubles, started through its node
entry point (``roles.launcher``'s ``fault=``); the nodes themselves know nothing of faults. The
report's ``trainers[].fault`` names each trainer's injected behaviour (null: honest).

``wallet=True`` (``--wallet``): the job is submitted and paid by a separate, faucet-funded
wallet through the HTTP API the browser uses, and its result is opened with the
wallet-derived key (:mod:`.wallet_demo`, which adds its own checks to the report).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import signal
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from fedswarm.demo import chain
from fedswarm.devnet.services import DEFAULT_BLOCK_TIME_S
from fedswarm.ledger.escrow_books import JobBooks
from fedswarm.roles.launcher import NodeProcess, start_node, start_nodes

DEFAULT_PRICE = 10**15
# Trainer faults -> the doubles they start (the copier's source trains honestly and shares).
TRAINER_FAULT_NODES = {"poison": ["poison"], "lazy": ["lazy"], "sybil-lazy": ["sybil-lazy", "sybil-lazy"],
                       "copy": ["copy", "copy-source"], "inflate-samples": ["inflate-samples"],
                       "reverse": ["reverse"]}
HONEST_DOUBLES = {"copy-source"}  # doubles whose own work is honest (and must be paid)
FAULTS = {"kill", "client-restart", "never-settle", *TRAINER_FAULT_NODES}


class DemoError(RuntimeError):
    pass


def bundled_dataset(name: str, dest: Path) -> tuple[Path, str, str]:
    """Write a scikit-learn dataset (shipped offline) as CSV; returns (path, label, example)."""
    import numpy as np
    from sklearn import datasets

    loaders = {"breast_cancer": datasets.load_breast_cancer, "digits": datasets.load_digits}
    if name not in loaders:
        raise DemoError(f"unknown bundled dataset {name!r}; use breast_cancer, digits or a file path")
    ds = loaders[name]()
    names = [f"f{i}" if name == "digits" else str(n).replace(" ", "_") for i, n in enumerate(ds.feature_names)]
    labels = [str(ds.target_names[t]) for t in ds.target] if name == "breast_cancer" else [str(t) for t in ds.target]
    path = dest / f"{name}.csv"
    with path.open("w") as fh:
        fh.write(",".join([*names, "label"]) + "\n")
        for row, lab in zip(np.asarray(ds.data), labels, strict=True):
            fh.write(",".join(repr(float(v)) for v in row) + f",{lab}\n")
    return path, "label", name


def run_demo(trainers: int = 3, rounds: int = 5, dataset: str = "breast_cancer", label: str | None = None,
             model: str | None = None, faults: list[str] | None = None, strategy: str = "fedavg",
             workdir: Path | None = None, quiet: bool = False, standby: int | None = None,
             block_time: float = DEFAULT_BLOCK_TIME_S, wallet: bool = False) -> dict[str, Any]:
    """Run the whole demo and return its report (``ok`` false if the job failed or its escrow
    does not balance to the wei once released).

    ``block_time``: seconds between the devnet's blocks (default 2 s like Hedera; 0: a block
    per transaction). The job's windows are short (settle 30 s, 15 s with never-settle; claim:
    the devnet's 10 s minimum) and the demo waits for the escrow's release before reporting.

    ``standby``: honest trainers beyond ``trainers`` that redo units lost or rejected within
    their round (default 1, plus one per three cheating trainers: their slots need redoing)."""
    from rich.console import Console

    from fedswarm.devnet import Devnet

    faults = faults or []
    bad = set(faults) - FAULTS
    if bad:
        raise DemoError(f"unknown fault(s) {sorted(bad)}; known: {', '.join(sorted(FAULTS))}")
    console = Console(stderr=True, quiet=quiet)
    t_start = time.time()
    root = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="fedswarm-demo-"))
    root.mkdir(parents=True, exist_ok=True)
    nodes: list[NodeProcess] = []
    devnet = None
    report: dict[str, Any] = {"ok": False, "faults": {"injected": faults, "observed": []}}
    try:
        with console.status("starting the devnet (object store, anvil + escrow contract, topic log)"):
            devnet = Devnet.start(root / "devnet", block_time=block_time)
        dn = ["--devnet-home", str(root / "devnet")]
        # 1 s heartbeats, 8 s of silence before a peer counts as gone: generous enough that a
        # busy 2-core machine does not make live trainers look dead.
        hb = ["--heartbeat", "1", "--peer-timeout", "8"]
        doubles = trainer_doubles(faults, trainers)
        cheating = [d for d in doubles if d not in HONEST_DOUBLES]
        standby = 1 + len(cheating) // 3 if standby is None else standby
        with console.status(f"starting bootstrap, client and {trainers + standby} trainers"):
            boot = start_node("bootstrap", root / "bootstrap", extra_args=hb)
            # never-settle: the testing layer's client that never pays (its trainers claim).
            client_fault = {"fault": "never-settle"} if "never-settle" in faults else {}
            # --wallet: the client is a delegate advertising its public API (here its own address)
            delegate = _delegate_args() if wallet else []
            specs: list[tuple[str, Path, dict[str, Any]]] = [
                ("client", root / "client", {"bootstrap": boot.addr, "extra_args": [*dn, *hb, *delegate],
                                             **client_fault})]
            share = {"FEDSWARM_FAULT_SHARE_DIR": str(root / "fault-share")}
            for i in range(trainers + standby):  # the standbys are the dearest
                extra = [*dn, *hb, "--no-gpu"]
                price = DEFAULT_PRICE + 1000 * i
                kw: dict[str, Any] = {"bootstrap": boot.addr}
                if i < len(doubles):
                    kw["fault"] = doubles[i]  # the testing layer's faulty trainer
                    kw["env"] = share
                    price = DEFAULT_PRICE - 1000 * (len(doubles) - i)  # cheapest: they get picked
                extra += ["--price-wei", str(price)]
                specs.append(("trainer", root / f"trainer{i}", {**kw, "extra_args": extra}))
            started = start_nodes(specs)
        nodes = [boot, *started]
        client = started[0]
        trainer_nodes = started[1:]
        _wait_mesh(client, trainers + standby)
        console.print(f"[green]network up[/]: bootstrap, client, {len(trainer_nodes)} trainers "
                      f"(devnet at {root / 'devnet'})")

        if Path(dataset).is_file():
            data_path, lab, example = Path(dataset), label, None
        else:
            data_path, lab, example = bundled_dataset(dataset, root)
        terms = {"rounds": rounds, "trainers": trainers, "standby": standby, "strategy": strategy,
                 "label": lab, "round_deadline_s": 60.0, "price_cap_wei": 10**16,
                 **chain.windows(devnet, "never-settle" in faults),
                 # More trainers split the data into smaller chunks: more local epochs keep each
                 # round's optimiser steps near the three-trainer demo's (2 epochs up to 5 trainers).
                 "local_epochs": 2 * max(1, trainers // 3), "batch_size": 32, "lr": 0.005}
        wallet_run = None
        if wallet:
            from fedswarm.demo.wallet_demo import WalletRun

            wallet_run = WalletRun(client.api, devnet, client.info["address"])
            wallet_run.check_delegate(boot.api, client.peer_id, delegate[-1])
            job_id = wallet_run.submit_and_pay(data_path, terms, model or example, console)
        else:
            job_id = _submit(client, data_path, model or example, terms)
        console.print(f"submitted [bold]{job_id}[/] ({data_path.name}, {rounds} rounds, {trainers} trainers)")
        restarted = _follow_with_faults(client, job_id, faults, trainer_nodes, report, console, root, boot, dn + hb)
        if restarted is not client:  # the client was restarted: stop the new process at the end
            nodes[nodes.index(client)] = restarted
            client = restarted
        job = httpx.get(f"{client.api}/api/v1/jobs/{job_id}", timeout=30).json()
        books = _settle_chain(job, devnet, client, trainer_nodes, faults, report, console)
        wallet_block = wallet_run.report(job, root) if wallet_run else None
        report.update(_job_report(job, devnet, trainer_nodes, client, root, books,
                                  wallet_block["result"] if wallet_block else None))
        if wallet_block:
            report.update({k: v for k, v in wallet_block.items() if k not in ("result", "ok", "checks")})
            report["wallet_checks"] = wallet_block["checks"]
        report["review"] = _review_report(job, devnet)
        _observe_faults(job, faults, trainer_nodes, report)
        report["ok"] = (job["state"] == "done" and report["result"]["decrypted"] and report["audit"]["verified"]
                        and report["escrow"]["balanced"] and (wallet_block is None or wallet_block["ok"]))
        report["wall_seconds"] = round(time.time() - t_start, 1)
        _print_report(console, report)
        return report
    except Exception as exc:
        report["error"] = f"{type(exc).__name__}: {exc}"
        report["wall_seconds"] = round(time.time() - t_start, 1)
        console.print(f"[red]demo failed[/]: {report['error']}")
        return report
    finally:
        for n in reversed(nodes):
            n.stop()
        if devnet is not None:
            devnet.stop()
        if workdir is None:
            shutil.rmtree(root, ignore_errors=True)


def _delegate_args() -> list[str]:
    """``--api``/``--public-api`` for a delegate client: a free port, advertised as its URL."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return ["--api", f"127.0.0.1:{port}", "--public-api", f"http://127.0.0.1:{port}"]


def trainer_doubles(faults: list[str], trainers: int) -> list[str]:
    """The ``fault=`` of the first trainers started (the rest are honest); DemoError when the
    chosen trainers cannot hold them all and still leave the standby honest."""
    doubles = [d for f in faults for d in TRAINER_FAULT_NODES.get(f, [])]
    if len(doubles) > trainers:
        raise DemoError(f"faults {', '.join(faults)} need {len(doubles)} trainers; run with --trainers {len(doubles)} or more")
    return doubles


def _wait_mesh(client: NodeProcess, trainers: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = httpx.get(f"{client.api}/api/v1/trainers", timeout=10).json()["trainers"]
        if sum(r["online"] for r in rows) >= trainers:
            return
        time.sleep(0.2)
    raise DemoError(f"the client saw fewer than {trainers} trainers within {timeout} s")


def _submit(client: NodeProcess, data: Path, model: str | None, terms: dict[str, Any]) -> str:
    files = {"dataset": (data.name, data.read_bytes())}
    form = {"terms": json.dumps(terms)}
    if model and Path(model).is_file():
        files["model"] = (Path(model).name, Path(model).read_bytes())  # type: ignore[assignment]
    else:
        form["example"] = model or "breast_cancer"
    r = httpx.post(f"{client.api}/api/v1/jobs", files=files, data=form, timeout=120)
    if r.status_code != 200:
        raise DemoError(f"submission refused: {r.json().get('error', r.text)}")
    return r.json()["job_id"]


def _follow_with_faults(client: NodeProcess, job_id: str, faults: list[str], trainers: list[NodeProcess],
                        report: dict[str, Any], console: Any, root: Path, boot: NodeProcess,
                        client_args: list[str]) -> NodeProcess:
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    killed = restarted = False
    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                  TimeElapsedColumn(), console=console) as prog:
        bar = prog.add_task("rounds", total=None)
        deadline = time.monotonic() + 900
        while time.monotonic() < deadline:
            try:
                job = httpx.get(f"{client.api}/api/v1/jobs/{job_id}", timeout=30).json()
            except httpx.HTTPError:
                time.sleep(0.5)
                continue
            rd = job["rounds_detail"]
            acc = next((r["val_accuracy"] for r in reversed(rd) if r["val_accuracy"] is not None), None)
            prog.update(bar, total=job["rounds"], completed=sum(r["state"] == "settled" for r in rd),
                        description=f"{job['state']:9} rounds" + (f" · val accuracy {acc:.3f}" if acc is not None else ""))
            if job["state"] in ("done", "failed", "cancelled"):
                return client
            in_round1 = job["state"] == "running" and job["current_round"] >= 1 and any(
                u["round"] == job["current_round"] for u in job["units"])
            if "kill" in faults and not killed and in_round1:
                victim = _victim(job, trainers)
                if victim is not None:
                    victim.popen.send_signal(signal.SIGKILL)
                    killed = True
                    report["faults"]["observed"].append(
                        f"kill: SIGKILLed trainer {victim.peer_id} in round {job['current_round']}")
                    report["faults"]["killed_peer"] = victim.peer_id
            if "client-restart" in faults and not restarted and in_round1:
                client.popen.send_signal(signal.SIGKILL)
                client.popen.wait(10)
                time.sleep(1.0)
                client = start_node("client", client.home, bootstrap=boot.addr, extra_args=client_args,
                                    fault=client.fault)  # the same double, if it was one
                restarted = True
                report["faults"]["observed"].append(
                    f"client-restart: client SIGKILLed in round {job['current_round']} and restarted")
            time.sleep(0.3)
    raise DemoError("the job did not finish within 15 minutes")


def _victim(job: dict[str, Any], trainers: list[NodeProcess]) -> NodeProcess | None:
    """A trainer holding a unit of the current round (not a cheater: they are tested apart)."""
    busy = {u["trainer_peer"] for u in job["units"] if u["round"] == job["current_round"]}
    for t in trainers:
        if t.peer_id in busy and t.fault is None:
            return t
    return None


def _observe_faults(job: dict[str, Any], faults: list[str], trainers: list[NodeProcess],
                    report: dict[str, Any]) -> None:
    """Say what the system did about each injected fault (from the job's own records)."""
    observed = report["faults"]["observed"]
    rejected = [u for u in job["units"] if u["verdict"] == "rejected"]
    cheaters = [t for t in trainers if t.fault is not None and t.fault not in HONEST_DOUBLES]
    for t in cheaters:
        mine = [u for u in rejected if u["trainer_peer"] == t.peer_id]
        paid = next((x["paid_wei"] for x in report["trainers"] if x["peer_id"] == t.peer_id), 0)
        reasons = sorted({_reason_text(u["reason"])[:80] for u in mine})
        observed.append(f"{t.fault}: {len(mine)} units of {t.peer_id} rejected ({'; '.join(reasons)}), "
                        f"paid {paid} wei")
    reassigned = sum(r["reassigned"] for r in job["rounds_detail"])
    if reassigned:
        observed.append(f"{reassigned} units reassigned to standby or healthy trainers within their round")
    killed = report["faults"].get("killed_peer")
    if killed:
        paid = next((x for x in report["trainers"] if x["peer_id"] == killed), None)
        observed.append(f"kill: the dead trainer was paid {paid['paid_wei'] if paid else 0} wei for "
                        f"{paid['units_accepted'] if paid else 0} units settled before it died")


def _reason_text(reason: str | None) -> str:
    """The human sentence of a unit's reason (a rejection's reason is its evidence JSON)."""
    try:
        return str(json.loads(reason or "")["reason"])
    except (ValueError, KeyError, TypeError):
        return (reason or "").split(" (")[0]


def _settle_chain(job: dict[str, Any], devnet: Any, client: NodeProcess, trainers: list[NodeProcess],
                  faults: list[str], report: dict[str, Any], console: Any) -> JobBooks | None:
    """Follow the job's money on escrow v2 to the end: claims (never-settle), the release, the
    trainers' withdrawals; returns its books (None if it was never funded)."""
    escrow = chain.reader(devnet)
    key = chain.job_key(job, escrow, client.info["address"])
    if key is None:
        return None
    if "never-settle" in faults:
        report["faults"]["observed"].append(chain.wait_claims(escrow, key, job, console))
    chain.wait_release(escrow, key, devnet, console)
    chain.wait_withdrawals(escrow, [t.info["address"] for t in trainers if t.popen.poll() is None], console)
    return chain.read_books(escrow, key)


def _job_report(job: dict[str, Any], devnet: Any, trainers: list[NodeProcess], client: NodeProcess,
                root: Path, books: JobBooks | None, result: dict[str, Any] | None = None) -> dict[str, Any]:
    """The JSON report, with money read from escrow v2 and audit facts from the topic log."""
    delivered: dict[str, int] = {}  # units the client received, by trainer peer (no chain tx in v2)
    for u in job.get("units", []):
        if u.get("state") in ("delivered", "checked"):
            delivered[u["trainer_peer"]] = delivered.get(u["trainer_peer"], 0) + 1
    per: dict[str, dict[str, Any]] = {}
    for t in trainers:
        on_chain = books.trainers.get(t.info["address"].lower()) if books else None
        per[t.info["address"].lower()] = {
            "peer_id": t.peer_id, "address": t.info["address"], "fault": None if t.fault in HONEST_DOUBLES else t.fault,
            "price_wei": on_chain.price if on_chain else None, "units_committed": delivered.get(t.peer_id, 0),
            "units_accepted": on_chain.accepted if on_chain else 0, "units_rejected": on_chain.rejected if on_chain else 0,
            "units_claimed": on_chain.claimed if on_chain else 0, "paid_wei": on_chain.paid if on_chain else 0,
            "withdrawn_wei": on_chain.withdrawn if on_chain else 0}
    for t in trainers:  # chunks fetched vs reused from the trainer's cache (a killed one is gone)
        try:
            stats = httpx.get(f"{t.api}/status", timeout=5).json()["trainer"]["stats"]
        except (httpx.HTTPError, KeyError, ValueError):
            continue
        per[t.info["address"].lower()].update(chunks_downloaded=stats.get("chunks_downloaded", 0),
                                              chunks_cached=stats.get("chunks_cached", 0))
    # The result: decrypt with the user's key (the client's, unless a wallet's run opened it),
    # and check another key fails.
    result = result or _check_result(job, client, root)
    audit = _check_audit(job, devnet)
    return {
        "job_id": job["job_id"], "state": job["state"], "error": job.get("error"),
        "rounds": [{k: r[k] for k in ("round", "val_loss", "val_accuracy", "units", "accepted", "rejected",
                                      "reassigned", "seconds")} for r in job["rounds_detail"]],
        "final": {"val_accuracy": job["final_metrics"].get("accuracy"), "val_loss": job["final_metrics"].get("loss")},
        "trainers": [v for v in per.values() if v["units_committed"] or v["paid_wei"]],
        "escrow": chain.escrow_block(books, devnet) if books else chain.EMPTY_ESCROW,
        "chain": chain.chain_block(books, devnet, len(job.get("units", []))) if books else None,
        "audit": audit, "result": result,
    }


def _check_result(job: dict[str, Any], client: NodeProcess, root: Path) -> dict[str, Any]:
    from fedswarm import crypto
    from fedswarm.identity import load_identity
    from fedswarm.learning.weights import load_weights_bytes
    from fedswarm.storage.download import download_bytes

    out: dict[str, Any] = {"path": None, "sha256": None, "decrypted": False, "other_key_refused": False}
    if job["state"] != "done":
        return out
    link = httpx.get(f"{client.api}/api/v1/jobs/{job['job_id']}/result/link", timeout=30).json()
    data = download_bytes(link["url"], max_bytes=1 << 30, sha256=link["sha256"])
    plain = crypto.decrypt_from_box(data, load_identity(client.home).box_key, job["job_id"], "result")
    load_weights_bytes(plain)
    path = root / f"{job['job_id']}.safetensors"
    path.write_bytes(plain)
    try:
        crypto.decrypt_from_box(data, load_identity(root / "stranger").box_key, job["job_id"], "result")
    except crypto.DecryptionError:
        out["other_key_refused"] = True
    out.update(path=str(path), sha256=hashlib.sha256(plain).hexdigest(), decrypted=True)
    return out


def _check_audit(job: dict[str, Any], devnet: Any) -> dict[str, Any]:
    from fedswarm.ledger.audit import LocalAuditLog
    from fedswarm.ledger.verify import verify_messages

    topic = job.get("audit_topic")
    if not topic:
        return {"topic": None, "messages": 0, "verified": False}
    log = LocalAuditLog(devnet.state["audit"]["url"], None)
    raw: list[dict[str, Any]] = []
    after = 0
    while True:
        page = log.read(topic, after_seq=after, limit=100)
        if not page.messages:
            break
        raw.extend(page.messages)
        after = raw[-1]["sequence_number"]
    result = verify_messages(raw, bytes(48), topic_id=topic)
    states: dict[str, int] = {}
    for m in log.iter_messages(topic):
        try:
            state = str(m.json().get("state"))
        except Exception:
            continue
        states[state] = states.get(state, 0) + 1
    return {"topic": topic, "messages": len(raw), "verified": bool(result.ok), "states": states}


def _review_report(job: dict[str, Any], devnet: Any) -> dict[str, Any]:
    """The client's review as the audit topic tells it: each round's summary (reference,
    re-executions, budget, cost) and each rejection's evidence with its hash, beside the reason
    hash the settlement put on chain for that unit (None when it could not be read)."""
    from fedswarm.ledger.audit import LocalAuditLog

    out: dict[str, Any] = {"rounds": [], "evidence": []}
    topic = job.get("audit_topic")
    if not topic:
        return out
    try:
        on_chain = chain.chain_reason_hashes(devnet, job)
    except Exception:  # the chain view is a cross-check only
        on_chain = {}
    for m in LocalAuditLog(devnet.state["audit"]["url"], None).iter_messages(topic):
        try:
            body = m.json()
        except Exception:
            continue
        if body.get("role") != "client":
            continue
        if body.get("state") == "round_reviewed":
            out["rounds"].append({k: v for k, v in body.items() if k not in ("v", "peer", "role", "job", "ts")})
        elif body.get("state") == "rejected" and "evidence" in body:
            key = (int(body["round"]), int(body["unit"]))
            out["evidence"].append({"round": key[0], "unit": key[1], "trainer": body.get("trainer"),
                                    "evidence": body["evidence"], "reason_hash": body.get("reason_hash"),
                                    "chain_reason_hash": on_chain.get(key)})
    return out


def _print_report(console: Any, report: dict[str, Any]) -> None:
    from rich.table import Table

    t = Table("round", "val loss", "val acc", "units", "accepted", "rejected", "reassigned", "seconds", title="rounds")
    for r in report["rounds"]:
        t.add_row(*[str(r[k]) if not isinstance(r[k], float) else f"{r[k]:.4f}" for k in
                    ("round", "val_loss", "val_accuracy", "units", "accepted", "rejected", "reassigned", "seconds")])
    console.print(t)
    t2 = Table("trainer", "committed", "accepted", "rejected", "paid (wei)", "withdrawn (wei)", title="trainers")
    for tr in report["trainers"]:
        t2.add_row(tr["peer_id"][:24] + "…", str(tr["units_committed"]), str(tr["units_accepted"]),
                   str(tr["units_rejected"]), str(tr["paid_wei"]), str(tr["withdrawn_wei"]))
    console.print(t2)
    esc, res, aud = report["escrow"], report["result"], report["audit"]
    console.print(f"escrow: deposited {esc['deposited_wei']} = paid {esc['paid_wei']} + refunded {esc['refunded_wei']}"
                  f" ({'balanced' if esc['balanced'] else 'NOT balanced'}; released: {esc['released']}, "
                  f"by {esc.get('released_by')}, refund at release {esc.get('released_refund_wei')})")
    ch = report.get("chain")
    if ch:
        console.print(f"chain: {ch['transactions']} for {ch['units']} units, gas {ch['gas'].get('total')}; a block every "
                      f"{ch['block_time']:g} s, settle window {ch['settle_window_s']} s, claim window {ch['claim_window_s']} s")
    console.print(f"audit topic {aud['topic']}: {aud['messages']} messages, chain {'verified' if aud['verified'] else 'NOT verified'}")
    console.print(f"result: {res['path']} sha256 {res['sha256']} (decrypted: {res['decrypted']}, other key refused: {res['other_key_refused']})")
    if report.get("payer"):
        console.print(f"wallet: payer {report['payer']} got back {report['payer_refund_wei']}; the node "
                      f"(operator {report['operator']}) spent {report['operator_spent_wei']} on gas; "
                      f"checks: {', '.join(k for k, v in report['wallet_checks'].items() if v)}"
                      + (f"; FAILED: {', '.join(k for k, v in report['wallet_checks'].items() if not v)}"
                         if not all(report['wallet_checks'].values()) else ""))
    for line in report["faults"]["observed"]:
        console.print(f"fault: {line}")
    final = report["final"]["val_accuracy"]
    console.print(f"[bold]{'OK' if report.get('ok') else 'FAILED'}[/]: final validation accuracy "
                  f"{final if final is None else round(final, 4)} in {report.get('wall_seconds')} s")
