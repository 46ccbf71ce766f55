"""`fedswarm bench job`: real jobs on a loopback devnet, timed round by round.

One devnet (store, anvil, audit log), a bootstrap, a client and N trainers run as separate
processes; jobs are submitted through the client's REST API like a user would. The same jobs run
on a devnet mining a block per transaction and on one mining every 2 s like Hedera: settlement is
off the round's path, so the steady round wall should barely change (goal: ratio <= 1.25). Each
job's chain transactions are counted by kind from the escrow's events (goal: one funding,
settlement batches, one completion, one release, withdrawals; none per unit). Per cell (model x
mode) the bench reports the steady-state round wall time (rounds >= 1), the framework overhead
(round wall minus the slowest trainer's reported compute, which includes its download), CPU-seconds
per round by component (psutil over each process tree), idle and peak memory per trainer, and the
bytes the store moved per round. The workload is the one of ``docs/BENCHMARKS.md``:
MLP 64-256-256-10 (85k params) or hidden 2048 (4.35M), synthetic 10-class data labelled by a fixed
random teacher, 5,000 training samples per trainer, 1 epoch, batch 64, SGD lr 0.05 momentum 0.9.

The helpers here (:class:`JobNetwork`, :func:`write_dataset`, :func:`run_cell`) are reused by
``fedswarm bench all``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from fedswarm.roles.launcher import NodeProcess, start_node, start_nodes

# A generous peer timeout: on a loaded machine a 3 s timeout marks busy trainers offline and the
# client reassigns their slots, which measures the load, not the framework.
HEARTBEAT = ["--heartbeat", "1", "--peer-timeout", "10"]
PRICE = 10**15
MODELS = {"mlp85k": "mlp_bench.seq.json", "mlp4m": "mlp_bench_wide.seq.json"}
NOOP_GOAL_S = 1.0  # noop round overhead with 4 trainers
NOOP_ROUND_GOAL_S = 0.5  # noop steady round wall with 4 trainers at 2 s blocks
BLOCK_TIME_RATIO_GOAL = 1.25  # steady round wall at 2 s blocks / at a block per transaction
BLOCK_TIMES = (0.0, 2.0)
# Short windows so each job's escrow is released (and its release counted) within the run.
SETTLE_WINDOW_S = 20
CLAIM_WINDOW_S = 10
POLL_S = 0.25


class BenchError(RuntimeError):
    """A benchmark could not run (a node did not start, a job failed)."""


def examples_dir() -> Path:
    """The bundled ``fedswarm/examples`` folder (model specs of the bench workload)."""
    from importlib.resources import files

    return Path(str(files("fedswarm.examples")))


def write_dataset(path: Path, rows: int, features: int = 64, classes: int = 10, seed: int = 0) -> Path:
    """Synthetic classification CSV: Gaussian inputs labelled by a fixed random linear teacher."""
    import numpy as np

    rng = np.random.default_rng(seed)
    teacher = np.random.default_rng(1234).normal(size=(features, classes))  # fixed across runs
    x = rng.normal(size=(rows, features)).astype(np.float32)
    y = (x @ teacher).argmax(axis=1)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as fh:
        fh.write(",".join([*(f"f{i}" for i in range(features)), "y"]) + "\n")
        for row, lab in zip(x, y, strict=True):
            fh.write(",".join(f"{v:.5f}" for v in row) + f",{int(lab)}\n")
    return path


# -- process accounting ------------------------------------------------------------------------


def tree_cpu(pid: int) -> float:
    """CPU-seconds (user+system) of a process, its reaped children and its live descendants."""
    import psutil

    try:
        p = psutil.Process(pid)
        t = p.cpu_times()
        total = t.user + t.system + t.children_user + t.children_system
        for c in p.children(recursive=True):
            try:
                ct = c.cpu_times()
                total += ct.user + ct.system
            except psutil.Error:
                pass
        return total
    except psutil.Error:
        return 0.0


class CpuAccount:
    """CPU-seconds per component, summed over every process ever seen in its trees.

    A process's reaped children are not reliably charged to it (grandchildren get re-parented),
    so each (pid, start time) keeps its last observed user+system time; processes that live and
    die between two samples are missed (sample often).
    """

    def __init__(self) -> None:
        self.last: dict[str, dict[tuple[int, float], float]] = {}

    def sample(self, comps: dict[str, list[int]]) -> dict[str, float]:
        import psutil

        for name, pids in comps.items():
            seen = self.last.setdefault(name, {})
            for pid in pids:
                try:
                    root = psutil.Process(pid)
                    procs = [root, *root.children(recursive=True)]
                except psutil.Error:
                    continue
                for p in procs:
                    try:
                        t = p.cpu_times()
                        seen[(p.pid, p.create_time())] = t.user + t.system
                    except psutil.Error:
                        pass
        return {name: sum(self.last.get(name, {}).values()) for name in comps}


def tree_memory(pid: int, pss: bool = False) -> float:
    """RSS (or PSS, slower: reads smaps) in MB of a process and its live descendants."""
    import psutil

    total = 0
    try:
        procs = [psutil.Process(pid)]
        procs += procs[0].children(recursive=True)
    except psutil.Error:
        return 0.0
    for p in procs:
        with contextlib.suppress(psutil.Error):
            total += p.memory_full_info().pss if pss else p.memory_info().rss
    return total / 2**20


def warm_workers(pids: list[int]) -> int:
    """How many of these trainer processes have a live child (their training worker)."""
    import psutil

    n = 0
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            n += bool(psutil.Process(pid).children())
    return n


def io_chars(pid: int) -> int:
    """Bytes a process read plus wrote through syscalls (files and sockets alike)."""
    import psutil

    try:
        io = psutil.Process(pid).io_counters()
        return int(io.read_chars + io.write_chars)
    except (psutil.Error, AttributeError):
        return 0


def summary(values: list[float]) -> dict[str, float | None]:
    """Median, min and max (None when empty)."""
    if not values:
        return {"median": None, "min": None, "max": None}
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def _wait_cpu_quiet(timeout: float, busy_percent: float = 60.0) -> None:
    """Wait (at most ``timeout``) until the machine's CPU use drops below ``busy_percent``."""
    import psutil

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and psutil.cpu_percent(interval=1.0) >= busy_percent:
        pass


# -- the network -------------------------------------------------------------------------------


@dataclass
class JobNetwork:
    """A devnet plus bootstrap, client and trainers as processes; :meth:`stop` stops all by pid."""

    root: Path
    trainers: int = 4
    trainer_args: list[str] = field(default_factory=list)  # extra `fedswarm node trainer` flags
    block_time: float = 2.0  # the devnet's seconds per block (0: a block per transaction)
    # Trainers started at once. Dozens of Python processes (and their torch workers) starting
    # together on a 2-core machine starve every handshake: larger networks start in batches.
    batch: int = 8
    devnet: Any = None
    bootstrap: NodeProcess | None = None
    client: NodeProcess | None = None
    trainer_nodes: list[NodeProcess] = field(default_factory=list)
    started_s: float = 0.0
    account: CpuAccount = field(default_factory=CpuAccount)

    def start(self) -> JobNetwork:
        """Start everything and wait until the client sees every trainer online."""
        from fedswarm.devnet import Devnet

        t0 = time.monotonic()
        try:
            self.devnet = Devnet.start(self.root / "devnet", block_time=self.block_time)
            dn = ["--devnet-home", str(self.root / "devnet")]
            self.bootstrap = start_node("bootstrap", self.root / "bootstrap", extra_args=HEARTBEAT)
            specs: list[tuple[str, Path, dict[str, Any]]] = []
            for i in range(self.trainers):
                extra = [*dn, *HEARTBEAT, "--no-gpu", "--price-wei", str(PRICE + 1000 * i), *self.trainer_args]
                specs.append(("trainer", self.root / f"trainer{i}", {"bootstrap": self.bootstrap.addr, "extra_args": extra}))
            client_spec = ("client", self.root / "client", {"bootstrap": self.bootstrap.addr, "extra_args": [*dn, *HEARTBEAT]})
            for start in range(0, self.trainers, self.batch):
                batch = specs[start : start + self.batch]
                started = start_nodes([client_spec, *batch] if start == 0 else batch, timeout=60 + 10 * len(batch))
                if start == 0:
                    self.client, started = started[0], started[1:]
                self.trainer_nodes += started
                self.wait_mesh(60 + 5 * len(self.trainer_nodes), count=len(self.trainer_nodes))
                if start + self.batch < self.trainers:
                    _wait_cpu_quiet(60.0)
            time.sleep(3.0)  # heard is not dialled: let the trainers' direct connections settle
        except BaseException:
            self.stop()
            raise
        self.started_s = time.monotonic() - t0
        return self

    def wait_mesh(self, timeout: float, count: int | None = None) -> None:
        """Wait until the client sees ``count`` (default: all) trainers online."""
        assert self.client is not None
        want = self.trainers if count is None else count
        deadline = time.monotonic() + timeout
        online = 0
        while time.monotonic() < deadline:
            try:
                rows = httpx.get(f"{self.client.api}/api/v1/trainers", timeout=10).json()["trainers"]
                online = sum(bool(r["online"]) for r in rows)
                if online >= want:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise BenchError(f"the client saw {online} of {want} trainers within {timeout:.0f} s")

    def components(self) -> dict[str, list[int]]:
        """Component name -> pids (trainers grouped; each pid counted with its descendants)."""
        out: dict[str, list[int]] = {}
        if self.client:
            out["client"] = [self.client.popen.pid]
        out["trainers"] = [t.popen.pid for t in self.trainer_nodes]
        if self.bootstrap:
            out["bootstrap"] = [self.bootstrap.popen.pid]
        if self.devnet is not None:
            out["devnet"] = list(self.devnet.pids.values())
        return out

    def cpu(self) -> dict[str, float]:
        return self.account.sample(self.components())

    def store_pid(self) -> int | None:
        if self.devnet is None:
            return None
        pids = self.devnet.pids
        return next((pid for name, pid in pids.items() if "store" in name), None)

    def stop(self) -> None:
        """Stop every node (SIGTERM then SIGKILL, by pid) and the devnet; safe to call twice."""
        for n in reversed([*self.trainer_nodes, *([self.client] if self.client else []),
                           *([self.bootstrap] if self.bootstrap else [])]):
            with contextlib.suppress(Exception):  # keep stopping the others
                n.stop()
        if self.devnet is not None:
            self.devnet.stop()


# -- one job -----------------------------------------------------------------------------------


def submit(client: NodeProcess, data: Path, spec: Path, terms: dict[str, Any]) -> str:
    """Submit a job through the client's REST API; returns its id."""
    files = {"dataset": (data.name, data.read_bytes()), "model": (spec.name, spec.read_bytes())}
    r = httpx.post(f"{client.api}/api/v1/jobs", files=files, data={"terms": json.dumps(terms)}, timeout=300)
    if r.status_code != 200:
        raise BenchError(f"submission refused: {r.text[:300]}")
    return str(r.json()["job_id"])


def run_cell(net: JobNetwork, data: Path, model: str, mode: str, rounds: int, reexec: float = 0.0,
             timeout: float = 1800) -> dict[str, Any]:
    """Run one job on ``net`` and measure it; returns the cell's JSON-ready result.

    On a loaded machine a bid can miss the bid window; such a job fails before any round, so
    it is resubmitted once (``bid_retries`` in the result says so).
    """
    try:
        return _run_cell(net, data, model, mode, rounds, reexec, timeout)
    except BenchError as exc:
        if "no trainers" not in str(exc):
            raise
    out = _run_cell(net, data, model, mode, rounds, reexec, timeout)
    out["bid_retries"] = 1
    return out


def _run_cell(net: JobNetwork, data: Path, model: str, mode: str, rounds: int, reexec: float,
              timeout: float) -> dict[str, Any]:
    assert net.client is not None
    spec = examples_dir() / MODELS[model]
    terms = {"rounds": rounds, "trainers": net.trainers, "standby": 0, "label": "y", "local_epochs": 1,
             "batch_size": 64, "lr": 0.05, "mode": mode, "reexec_fraction": reexec, "round_deadline_s": 600.0,
             "bid_window_s": 10.0, "price_cap_wei": 10**16, "settle_window_s": SETTLE_WINDOW_S,
             "claim_window_s": CLAIM_WINDOW_S}
    trainer_pids = [t.popen.pid for t in net.trainer_nodes]
    warm = warm_workers(trainer_pids)
    idle_rss = [tree_memory(p) for p in trainer_pids]
    idle_pss = [tree_memory(p, pss=True) for p in trainer_pids]
    peak_rss = list(idle_rss)
    peak_pss = list(idle_pss)
    store = net.store_pid()
    cpu0, io0 = net.cpu(), io_chars(store) if store else 0
    snaps: dict[int, tuple[dict[str, float], int]] = {}
    t_submit = time.time()
    job_id = submit(net.client, data, spec, terms)
    deadline = time.monotonic() + timeout
    last_pss = 0.0
    t_first: float | None = None  # when the poll first saw a finished round
    job: dict[str, Any] = {}
    while time.monotonic() < deadline:
        try:
            job = httpx.get(f"{net.client.api}/api/v1/jobs/{job_id}", timeout=30).json()
        except httpx.HTTPError:
            time.sleep(POLL_S)
            continue
        rd = job.get("rounds_detail", [])
        if t_first is None and any(x["state"] != "open" for x in rd):
            t_first = time.time()
        if rd:
            r = max(x["round"] for x in rd)
            if r not in snaps:
                snaps[r] = (net.cpu(), io_chars(store) if store else 0)
        peak_rss = [max(a, tree_memory(p)) for a, p in zip(peak_rss, trainer_pids, strict=True)]
        if time.monotonic() - last_pss > 1.0:  # smaps reads are costly: once a second
            peak_pss = [max(a, tree_memory(p, pss=True)) for a, p in zip(peak_pss, trainer_pids, strict=True)]
            last_pss = time.monotonic()
        if job.get("state") in ("done", "failed", "cancelled"):
            break
        time.sleep(POLL_S)
    cpu1, io1 = net.cpu(), io_chars(store) if store else 0
    if job.get("state") != "done":
        raise BenchError(f"job {job_id} ({model}, {mode}) ended {job.get('state', 'unfinished')}: {job.get('error')}")
    out = measure_job(job, t_submit, model, mode, reexec, cpu0, cpu1, io0, io1, snaps,
                      idle_rss, peak_rss, idle_pss, peak_pss)
    if out["time_to_first_round_s"] is None and t_first is not None:
        out["time_to_first_round_s"] = t_first - t_submit
    out["bid_window_s"] = terms["bid_window_s"]
    out["block_time"] = net.block_time
    out["job_key"] = (job.get("escrow") or {}).get("job_key")
    # Cold: no trainer had a warm worker when the job came (a torch import is in the first round).
    out["warm_workers"] = warm
    out["start"] = "warm" if warm == len(trainer_pids) else "cold" if warm == 0 else "mixed"
    return out


def measure_job(job: dict[str, Any], t_submit: float, model: str, mode: str, reexec: float,
                cpu0: dict[str, float], cpu1: dict[str, float], io0: int, io1: int,
                snaps: dict[int, tuple[dict[str, float], int]], idle_rss: list[float], peak_rss: list[float],
                idle_pss: list[float], peak_pss: list[float]) -> dict[str, Any]:
    """Turn a finished job's detail and the process samples into the cell's figures."""
    rd = sorted(job["rounds_detail"], key=lambda r: r["round"])
    units = job.get("units", [])
    per_round = []
    # A round's wall runs from its first assignment to the next round's (settlement is off the
    # round's path: the next round starts once this one is checked); the last round's ends when
    # it is checked. "seconds" in the job detail runs to settlement, kept as settled_s.
    starts = {r["round"]: min((u["assigned_at"] for u in units if u["round"] == r["round"] and u.get("assigned_at")),
                              default=None) for r in rd}
    for i, r in enumerate(rd):
        secs = [u["seconds"] for u in units if u["round"] == r["round"] and u.get("seconds") is not None]
        slowest = max(secs) if secs else 0.0
        nxt = starts.get(rd[i + 1]["round"]) if i + 1 < len(rd) else None
        here = starts.get(r["round"])
        wall = (nxt - here) if nxt is not None and here is not None else r.get("check_seconds", r["seconds"])
        per_round.append({"round": r["round"], "wall_s": wall, "slowest_trainer_s": slowest,
                          "overhead_s": wall - slowest, "units": r["units"], "settled_s": r["seconds"]})
    first = min(r["round"] for r in rd)
    steady = [p for p in per_round if p["round"] >= first + 1] or per_round
    rounds = len(rd)
    # CPU per steady round: between the first sightings of round first+1 and of the last round.
    last = max(snaps) if snaps else first
    if first + 1 in snaps and last > first + 1:
        c_a, c_b = snaps[first + 1][0], snaps[last][0]
        n = last - (first + 1)
        cpu_round = {k: (c_b[k] - c_a[k]) / n for k in c_b}
        io_round = (snaps[last][1] - snaps[first + 1][1]) / n
        cpu_basis = f"rounds {first + 1}..{last - 1}"
    else:
        cpu_round = {k: (cpu1[k] - cpu0[k]) / rounds for k in cpu1}
        io_round = (io1 - io0) / rounds
        cpu_basis = "whole job / rounds"
    events = job.get("events", [])
    first_done = next((e["ts"] for e in events if e["msg"].startswith(f"round {first}:")), None)
    walls = [p["wall_s"] for p in steady]
    computes = [p["slowest_trainer_s"] for p in steady]
    return {
        "model": model, "mode": mode, "reexec_fraction": reexec, "job_id": job["job_id"],
        "num_params": job.get("num_params"), "rounds": rounds, "trainers": job["trainers"],
        "round_wall_s": summary(walls),
        "overhead_s": summary([p["overhead_s"] for p in steady]),
        "slowest_trainer_s": summary(computes),
        "utilisation": (sum(computes) / sum(walls)) if sum(walls) > 0 else None,
        "time_to_first_round_s": (first_done - t_submit) if first_done else None,
        "first_round_wall_s": per_round[0]["wall_s"],
        "job_wall_s": time.time() - t_submit,
        "cpu_s_per_round": cpu_round, "cpu_basis": cpu_basis,
        "cpu_s_job": {k: cpu1[k] - cpu0[k] for k in cpu1},
        # The store's syscalls see each byte twice (socket + file): halve it.
        "store_bytes_per_round": io_round / 2,
        "model_bytes": 4 * int(job.get("num_params") or 0),
        "trainer_rss_mb": {"idle": summary(idle_rss), "peak": summary(peak_rss)},
        "trainer_pss_mb": {"idle": summary(idle_pss), "peak": summary(peak_pss)},
        "per_round": per_round,
        "final_accuracy": job.get("final_metrics", {}).get("accuracy"),
    }


# -- the command -------------------------------------------------------------------------------


def default_cells(quick: bool) -> list[tuple[str, str, float]]:
    """(model, mode, reexec_fraction) of each cell; the last shows re-execution's cost."""
    if quick:
        return [("mlp85k", "noop", 0.0), ("mlp85k", "train", 0.0)]
    return [("mlp85k", "train", 0.0), ("mlp85k", "noop", 0.0), ("mlp4m", "train", 0.0),
            ("mlp4m", "noop", 0.0), ("mlp85k", "train", 0.1)]


def run(workdir: Path | None = None, quick: bool = False, trainers: int = 4) -> dict[str, Any]:
    """Run the cells on a devnet at each of BLOCK_TIMES (every cell at 2 s, the comparison
    cells at 0 too), count each job's chain transactions, stop everything; one JSON-ready dict."""
    import os

    from fedswarm.bench.job_chain import block_time_goals, count_transactions

    work = Path(tempfile.mkdtemp(prefix="fedswarm-bench-job-", dir=workdir))
    per_trainer = 1_000 if quick else 5_000
    rounds = 3 if quick else 5
    # Held-out validation takes 20%: size the file so each trainer gets `per_trainer` rows.
    data = write_dataset(work / "synthetic.csv", int(per_trainer * trainers / 0.8))
    cells: list[dict[str, Any]] = []
    started: dict[str, float] = {}
    for bt in BLOCK_TIMES:
        net = JobNetwork(work / f"block{bt:g}", trainers, block_time=bt)
        todo = default_cells(quick) if bt == max(BLOCK_TIMES) else comparison_cells()
        try:
            net.start()
            done = [run_cell(net, data, m, mode, rounds, rx) for m, mode, rx in todo]
            count_transactions(net, done)
        except BaseException:
            net.stop()
            print(f"fedswarm bench job: node logs kept under {work}", file=sys.stderr)
            raise
        net.stop()
        started[f"{bt:g}"] = net.started_s
        cells += done
    shutil.rmtree(work, ignore_errors=True)
    slow = [c for c in cells if c["block_time"] == max(BLOCK_TIMES)]
    noop = [c for c in slow if c["mode"] == "noop" and c["model"] == "mlp85k"]
    over = noop[0]["overhead_s"]["median"] if noop else None
    return {
        "quick": quick, "trainers": trainers, "samples_per_trainer": per_trainer, "rounds": rounds,
        "nproc": os.cpu_count(), "loadavg": list(os.getloadavg()), "network_start_s": started,
        "block_times": list(BLOCK_TIMES), "settle_window_s": SETTLE_WINDOW_S, "claim_window_s": CLAIM_WINDOW_S,
        "cells": cells,
        "goals": {"noop_overhead_s": over, "noop_overhead<1s": over is not None and over < NOOP_GOAL_S,
                  **block_time_goals(cells, BLOCK_TIMES, BLOCK_TIME_RATIO_GOAL, NOOP_ROUND_GOAL_S)},
    }


def comparison_cells() -> list[tuple[str, str, float]]:
    """The cells run at every block time (the steady round wall is compared across them)."""
    return [("mlp85k", "noop", 0.0), ("mlp85k", "train", 0.0)]


def cell_row(c: dict[str, Any]) -> list[str]:
    """One table row for a cell (shared with `bench all`)."""
    def f(v: Any, d: int = 2) -> str:
        return "-" if v is None else f"{v:.{d}f}"
    rw, ov = c["round_wall_s"], c["overhead_s"]
    cpu = c["cpu_s_per_round"]
    return [f"{c['model']} {c['mode']}" + (f" reexec {c['reexec_fraction']}" if c["reexec_fraction"] else "")
            + (f" @{c['block_time']:g}s" if "block_time" in c else ""),
            f"{f(rw['median'])} ({f(rw['min'])}–{f(rw['max'])})", f(ov["median"]),
            f(c["utilisation"]), f"{f(c['time_to_first_round_s'], 1)} {c.get('start', '')}".strip(),
            " ".join(f"{k[:5]} {v:.2f}" for k, v in cpu.items()),
            f"{f(c['trainer_rss_mb']['idle']['median'], 0)}/{f(c['trainer_rss_mb']['peak']['max'], 0)}",
            f(c["store_bytes_per_round"] / 2**20, 1)]


CELL_HEADERS = ["cell", "round wall s (min–max)", "overhead s", "util.", "1st round s", "CPU-s/round",
                "trainer RSS MB idle/peak", "store MiB/round"]


def main(args: argparse.Namespace) -> int:
    """Entry point of ``fedswarm bench job [--json] [--quick] [--workdir DIR]``."""
    workdir = Path(args.workdir) if getattr(args, "workdir", None) else None
    if workdir:
        workdir.mkdir(parents=True, exist_ok=True)
    try:
        result = run(workdir, bool(getattr(args, "quick", False)))
    except BenchError as exc:
        print(f"fedswarm bench job: {exc}", file=sys.stderr)
        return 1
    if getattr(args, "json", False):
        print(json.dumps(result))
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(*CELL_HEADERS, title=f"fedswarm bench job: {result['trainers']} trainers, {result['rounds']} rounds"
                  + (" (quick)" if result["quick"] else ""))
    for c in result["cells"]:
        table.add_row(*cell_row(c))
    Console().print(table)
    g = result["goals"]
    con = Console()
    con.print(f"goal noop overhead < {NOOP_GOAL_S} s: {'met' if g['noop_overhead<1s'] else 'NOT met'}"
              f" ({g['noop_overhead_s']})")
    for name, ratio in g["block_time_ratio"].items():
        con.print(f"goal {name} steady round at 2 s blocks / at 0 <= {BLOCK_TIME_RATIO_GOAL}: "
                  f"{'met' if ratio is not None and ratio <= BLOCK_TIME_RATIO_GOAL else 'NOT met'} ({ratio})")
    con.print(f"goal noop steady round <= {NOOP_ROUND_GOAL_S} s with {result['trainers']} trainers at 2 s blocks: "
              f"{'met' if g['noop_round_ok'] else 'NOT met'} ({g['noop_round_s']})")
    for c in result["cells"]:
        con.print(f"chain transactions, {c['model']} {c['mode']} @{c['block_time']:g}s "
                  f"({c.get('units_total')} units): {c.get('transactions')}")
    con.print(f"goal no chain transaction per unit: {'met' if g['no_tx_per_unit'] else 'NOT met'}")
    return 0
