"""`fedswarm job ...` (talks to a client node's API) and `fedswarm demo`: top-level commands, above
the API they call."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from fedswarm.config import ConfigError


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    job = sub.add_parser("job", help="submit and follow training jobs on a client node")
    jsub = job.add_subparsers(dest="job_cmd", required=True)

    def api_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--api", default=None, help="client node API URL (default: from --home's node.json)")
        p.add_argument("--home", type=Path, default=None, help="client node home (default ~/.fedswarm/client)")
        p.add_argument("--token", default=None, help="API token (env FEDSWARM_API_TOKEN)")

    s = jsub.add_parser("submit", help="submit DATA with a model spec and terms")
    s.add_argument("data", type=Path, help="dataset file: CSV, Parquet or NPZ")
    s.add_argument("--model", required=True, help="model spec JSON file, or a bundled example name (breast_cancer, digits)")
    s.add_argument("--weights", type=Path, default=None, help="initial weights (safetensors) for an exported graph")
    s.add_argument("--label", default=None, help="label column (default: the last column / array y)")
    s.add_argument("--rounds", type=int, default=5)
    s.add_argument("--epochs", type=int, default=1, help="local epochs per round")
    s.add_argument("--batch-size", type=int, default=32)
    s.add_argument("--lr", type=float, default=0.01)
    s.add_argument("--strategy", default="fedavg", help="fedavg, fedavgm, fedadam, fedyogi, fedprox, median, trimmed_mean, krum, multikrum, clipped_fedavg")
    s.add_argument("--strategy-params", default="{}", help='JSON, e.g. \'{"f": 1}\'')
    s.add_argument("--trainers", type=int, default=3)
    s.add_argument("--standby", type=int, default=1)
    s.add_argument("--price-cap-wei", type=int, default=10**16)
    s.add_argument("--round-deadline", type=float, default=120.0, help="seconds per round")
    s.add_argument("--settle-window", type=int, default=3600, help="seconds before trainers may claim unsettled units")
    s.add_argument("--reexec-fraction", type=float, default=0.1,
                   help="base share of units the client re-executes itself, besides the reference (0-1)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--wait", action="store_true", help="follow the job with progress bars until it ends")
    api_args(s)
    s.set_defaults(func=cmd_submit)

    st = jsub.add_parser("status", help="state, rounds, trainers and payments of a job")
    st.add_argument("job_id")
    st.add_argument("--json", action="store_true")
    st.add_argument("--wait", action="store_true", help="follow with progress bars until the job ends")
    api_args(st)
    st.set_defaults(func=cmd_status)

    ls = jsub.add_parser("list", help="all jobs of the client node")
    ls.add_argument("--json", action="store_true")
    api_args(ls)
    ls.set_defaults(func=cmd_list)

    f = jsub.add_parser("fetch", help="download, verify and decrypt a job's final weights")
    f.add_argument("job_id")
    f.add_argument("-o", "--output", type=Path, required=True, help="where to write the .safetensors file")
    f.add_argument("--key-home", type=Path, default=None, help="home holding the user's box key (default: --home)")
    f.add_argument("--wallet-key", default=None, metavar="HEX",
                   help="a wallet user's job: the wallet's private key (or env FEDSWARM_WALLET_KEY); signs in "
                        "with it and derives the result key as the browser does (origin and chain from the job)")
    api_args(f)
    f.set_defaults(func=cmd_fetch)

    c = jsub.add_parser("cancel", help="cancel a job (refunds what is not owed to trainers)")
    c.add_argument("job_id")
    api_args(c)
    c.set_defaults(func=cmd_cancel)

    d = sub.add_parser("demo", help="run a whole paid training job on a local devnet, then stop everything")
    d.add_argument("--trainers", type=int, default=3)
    d.add_argument("--rounds", type=int, default=5)
    d.add_argument("--dataset", default="breast_cancer", help="breast_cancer, digits, or a CSV/Parquet/NPZ file")
    d.add_argument("--label", default=None, help="label column when --dataset is a file")
    d.add_argument("--model", default=None, help="model spec (default: the bundled example for the dataset)")
    d.add_argument("--faults", default="", help="comma list: kill, poison, lazy, sybil-lazy, copy, inflate-samples, reverse, "
                   "client-restart, never-settle")
    d.add_argument("--strategy", default="fedavg")
    d.add_argument("--workdir", type=Path, default=None, help="keep everything here (default: a temp dir)")
    d.add_argument("--block-time", type=float, default=2.0, metavar="SECONDS",
                   help="devnet block time like Hedera (default 2; 0: a block per transaction)")
    d.add_argument("--wallet", action="store_true",
                   help="the job is submitted and paid by a separate devnet-funded wallet through the HTTP API the "
                        "browser uses; its result is sealed to and opened with the wallet-derived key")
    d.add_argument("--json", action="store_true", help="print one JSON report")
    d.set_defaults(func=cmd_demo)


# ------------------------------------------------------------------ API client helpers


def api_base(args: argparse.Namespace) -> str:
    if args.api:
        return args.api.rstrip("/")
    from fedswarm.config import load_settings, read_node_info

    home = load_settings(FEDSWARM_HOME=args.home).node_home("client")
    return read_node_info(home)["api"]


def _headers(args: argparse.Namespace) -> dict[str, str]:
    """The credential for the client node's API: ``--token``, else ``FEDSWARM_API_TOKEN``, else
    the node's per-start local secret (HOME/api-secret, 0600) when we can read it: the guard
    takes it as the token, so the node's owner gets ``/command train`` and the decrypted
    result from the CLI without configuring one."""
    import os

    token = getattr(args, "token", None) or os.environ.get("FEDSWARM_API_TOKEN") or _local_secret(args)
    return {"Authorization": f"Bearer {token}"} if token else {}


def _local_secret(args: argparse.Namespace) -> str | None:
    """The local secret of the node at ``--home``, only if that node is the one we call: the
    secret is never sent to another API (an explicit ``--api`` elsewhere gets none)."""
    from fedswarm.api.guard import read_local_secret
    from fedswarm.config import load_settings, read_node_info

    home = load_settings(FEDSWARM_HOME=getattr(args, "home", None)).node_home("client")
    try:
        node_api = str(read_node_info(home)["api"]).rstrip("/")
    except (ConfigError, KeyError, TypeError, OSError, ValueError):
        return None
    api = getattr(args, "api", None)
    if api and api.rstrip("/") != node_api:
        return None
    return read_local_secret(home)


def _call(method: str, url: str, args: argparse.Namespace, **kw: Any) -> Any:
    try:
        r = httpx.request(method, url, headers=_headers(args), timeout=kw.pop("timeout", 60), **kw)
    except httpx.HTTPError as exc:
        raise ConfigError(f"cannot reach the client node at {url}: {exc}") from None
    if r.status_code >= 400:
        # imported here: the demo package is heavy, and most calls succeed
        from fedswarm.demo.wallet_user import error_text

        raise ConfigError(error_text(r))
    return r


def cmd_submit(args: argparse.Namespace) -> int:
    from fedswarm.examples import example_specs

    base = api_base(args)
    terms = {"rounds": args.rounds, "local_epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr,
             "strategy": args.strategy, "strategy_params": json.loads(args.strategy_params),
             "trainers": args.trainers, "standby": args.standby, "price_cap_wei": args.price_cap_wei,
             "round_deadline_s": args.round_deadline, "settle_window_s": args.settle_window,
             "reexec_fraction": args.reexec_fraction, "label": args.label, "seed": args.seed}
    if not args.data.is_file():
        raise ConfigError(f"dataset {args.data} does not exist")
    files: dict[str, Any] = {"dataset": (args.data.name, args.data.read_bytes())}
    data: dict[str, str] = {"terms": json.dumps(terms)}
    if args.model in example_specs():
        data["example"] = args.model
    else:
        mp = Path(args.model)
        if not mp.is_file():
            raise ConfigError(f"model {args.model} is neither a file nor a bundled example ({', '.join(example_specs())})")
        files["model"] = (mp.name, mp.read_bytes())
    if args.weights:
        files["weights"] = (args.weights.name, args.weights.read_bytes())
    out = _call("POST", f"{base}/api/v1/jobs", args, files=files, data=data).json()
    print(out["job_id"])
    if args.wait:
        return follow(base, out["job_id"], args)
    return 0


def follow(base: str, job_id: str, args: argparse.Namespace, quiet: bool = False) -> int:
    """Progress bars (round, units, accuracy) until the job ends; exit code 0 only if done."""
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    console = Console(stderr=True, quiet=quiet)
    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                  TimeElapsedColumn(), console=console, transient=False) as prog:
        rounds_bar = prog.add_task("rounds", total=None)
        units_bar = prog.add_task("units this round", total=None)
        while True:
            job = _call("GET", f"{base}/api/v1/jobs/{job_id}", args).json()
            rd = job["rounds_detail"]
            acc = next((r["val_accuracy"] for r in reversed(rd) if r["val_accuracy"] is not None), None)
            prog.update(rounds_bar, total=job["rounds"], completed=sum(r["state"] == "settled" for r in rd),
                        description=f"[bold]{job['state']}[/] rounds" + (f" · accuracy {acc:.3f}" if acc is not None else ""))
            cur = [u for u in job["units"] if u["round"] == job["current_round"]]
            prog.update(units_bar, total=max(job["trainers"], 1),
                        completed=sum(u["state"] in ("delivered", "checked") for u in cur))
            if job["state"] in ("done", "failed", "cancelled"):
                break
            time.sleep(0.5)
    if job["state"] != "done":
        print(f"job {job_id} {job['state']}: {job.get('error') or ''}", file=sys.stderr)
        return 1
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    base = api_base(args)
    if args.wait:
        return follow(base, args.job_id, args)
    job = _call("GET", f"{base}/api/v1/jobs/{args.job_id}", args).json()
    if args.json:
        print(json.dumps(job, indent=2))
        return 0
    from rich.console import Console
    from rich.table import Table

    con = Console()
    con.print(f"[bold]{job['job_id']}[/]  state [bold]{job['state']}[/]  round {job['current_round']}/{job['rounds']}"
              + (f"  error: {job['error']}" if job.get("error") else ""))
    t = Table("round", "val loss", "val acc", "units", "accepted", "rejected", "reassigned", "seconds")
    for r in job["rounds_detail"]:
        t.add_row(str(r["round"]), _fmt(r["val_loss"]), _fmt(r["val_accuracy"]), str(r["units"]), str(r["accepted"]),
                  str(r["rejected"]), str(r["reassigned"]), f"{r['seconds']:.1f}")
    con.print(t)
    t2 = Table("trainer", "address", "price (wei)", "committed", "accepted", "rejected", "paid (wei)")
    for tr in job["trainers_detail"]:
        t2.add_row(tr["peer_id"][:20] + "…", tr["address"], str(tr["price_wei"]), str(tr["units_committed"]),
                   str(tr["units_accepted"]), str(tr["units_rejected"]), str(tr["paid_wei"]))
    con.print(t2)
    refund = refund_line(job.get("escrow"))
    if refund:
        con.print(refund)
    return 0


def refund_line(esc: dict[str, Any] | None) -> str | None:
    """When the payer's unpaid escrow comes back, and how much came back once released."""
    if not esc or not esc.get("job_key"):
        return None
    where = f"escrow {esc.get('contract')} job 0x{str(esc['job_key']).removeprefix('0x')}"
    refunded = int(esc.get("refunded_wei") or 0)
    if esc.get("released"):
        return f"refund: {refunded} wei back to the payer; escrow released ({where})"
    at = esc.get("refund_available_at")
    if at:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(int(at)))
        so_far = f"{refunded} wei refunded so far; " if refunded else ""
        return (f"refund: {so_far}the rest not paid returns at release, from {stamp} "
                f"(anyone may then run `fedswarm ledger release 0x{str(esc['job_key']).removeprefix('0x')}`)")
    return f"refund: unpaid escrow returns after the job closes and its settle and claim windows pass ({where})"


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.4f}"


def cmd_list(args: argparse.Namespace) -> int:
    jobs = _call("GET", f"{api_base(args)}/api/v1/jobs", args).json()["jobs"]
    if args.json:
        print(json.dumps(jobs, indent=2))
        return 0
    from rich.console import Console
    from rich.table import Table

    t = Table("job", "state", "dataset", "round", "escrow (wei)", "final acc")
    for j in jobs:
        t.add_row(j["job_id"], j["state"], j["dataset"], f"{j['current_round']}/{j['rounds']}", str(j["deposited_wei"]),
                  _fmt(j["final_accuracy"]))
    Console().print(t)
    return 0


def cmd_fetch(args: argparse.Namespace) -> int:
    """Download the encrypted result by a presigned URL, check its sha256, decrypt locally."""
    import os

    from fedswarm import crypto
    from fedswarm.config import load_settings
    from fedswarm.identity import load_identity
    from fedswarm.learning.weights import load_weights_bytes
    from fedswarm.storage.download import download_bytes

    wallet_key = args.wallet_key or os.environ.get("FEDSWARM_WALLET_KEY")
    if wallet_key:
        from fedswarm.demo.wallet_user import WalletUser

        user = WalletUser(api_base(args), wallet_key.strip())
        user.sign_in()
        out = user.fetch_result(args.job_id, args.output)
        print(f"{out['path']} sha256 {out['sha256']} (decrypted with the wallet-derived key)")
        return 0
    link = _call("GET", f"{api_base(args)}/api/v1/jobs/{args.job_id}/result/link", args).json()
    data = download_bytes(link["url"], max_bytes=4 << 30, sha256=link["sha256"])
    key_home = args.key_home or load_settings(FEDSWARM_HOME=args.home).node_home("client")
    ident = load_identity(key_home)
    try:
        plain = crypto.decrypt_from_box(data, ident.box_key, args.job_id, "result")
    except crypto.DecryptionError:
        raise ConfigError(f"the result of {args.job_id} is not encrypted to the key in {key_home}") from None
    load_weights_bytes(plain)  # a valid safetensors file, or a clear error
    args.output.write_bytes(plain)
    print(f"{args.output} sha256 {crypto.sha256_bytes(plain)}")
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    out = _call("POST", f"{api_base(args)}/api/v1/jobs/{args.job_id}/cancel", args).json()
    print(f"{out['job_id']}: cancel requested")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from fedswarm.demo import run_demo

    report = run_demo(trainers=args.trainers, rounds=args.rounds, dataset=args.dataset, label=args.label,
                      model=args.model, faults=[f for f in args.faults.split(",") if f], strategy=args.strategy,
                      workdir=args.workdir, quiet=args.json, block_time=args.block_time, wallet=args.wallet)
    if args.json:
        print(json.dumps(report, indent=2))
    return 0 if report.get("ok") else 1
