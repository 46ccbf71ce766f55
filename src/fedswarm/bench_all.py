"""`fedswarm bench all` (`make bench`): fedswarm side by side with Flower, and the machine's limits.

The driver (see ``docs/BENCHMARKS.md``):

1. creates a Flower virtualenv under the work dir (``python -m venv``, ``torch==2.13.0`` first so
   flwr does not pull a CUDA build, then ``flwr[simulation]``) unless it is already there; if
   the registry cannot serve ``flwr``, the Flower columns say why and the fedswarm side still runs;
2. copies the Flower app of ``bench/flower_app`` (ServerApp + ClientApp, Flower's FedAvg, the
   same synthetic task, one torch thread) into the work dir;
3. runs the cells interleaved and repeated: a fedswarm job (4 trainers), Flower's deployment
   engine (SuperLink + 4 SuperNodes on 127.0.0.1, ``--insecure``, no runtime dependency
   installation) and Flower's simulation engine; the idle fedswarm network is paused (SIGSTOP)
   while Flower runs so it does not steal CPU from it;
4. measures the machine's limits (learning and storage benches) and a scale series (8/16/32
   trainer processes, noop, 3 rounds);
5. writes ``results.json`` and ``results.md`` under the work dir. Every process it starts is
   stopped by pid at the end, even on failure.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from fedswarm.roles.bench import (
    BenchError,
    CpuAccount,
    JobNetwork,
    run_cell,
    summary,
    tree_memory,
    write_dataset,
)

REPO = Path(__file__).resolve().parents[2]
APP_TEMPLATE = REPO / "bench" / "flower_app"
SIM_DRIVER = REPO / "bench" / "flower_sim.py"
HIDDEN = {"mlp85k": 256, "mlp4m": 2048}
TORCH_PIN = "torch==2.13.0"


# -- process bookkeeping -----------------------------------------------------------------------


class Tracker:
    """Remembers every process started (and their descendants) so all can be stopped by pid."""

    def __init__(self) -> None:
        self.roots: list[subprocess.Popen[bytes]] = []
        self.seen: dict[int, float] = {}  # pid -> create_time (guards against pid reuse)

    def spawn(self, argv: list[str], log: Path, env: dict[str, str] | None = None,
              cwd: Path | None = None) -> subprocess.Popen[bytes]:
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "ab") as fh:
            p = subprocess.Popen(argv, stdout=fh, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})},
                                 cwd=cwd, start_new_session=True)
        self.roots.append(p)
        self.refresh()
        return p

    def refresh(self) -> None:
        import psutil

        for r in self.roots:
            try:
                root = psutil.Process(r.pid)
                for p in [root, *root.children(recursive=True)]:
                    self.seen.setdefault(p.pid, p.create_time())
            except psutil.Error:
                pass

    def stop_all(self, timeout: float = 10.0) -> None:
        """SIGTERM every remembered process still alive (children first), then SIGKILL."""
        import psutil

        self.refresh()
        alive = []
        for pid, created in sorted(self.seen.items(), reverse=True):
            try:
                p = psutil.Process(pid)
                if abs(p.create_time() - created) < 0.01:
                    alive.append(p)
            except psutil.Error:
                pass
        for p in alive:
            try:
                p.send_signal(signal.SIGCONT)
                p.terminate()
            except psutil.Error:
                pass
        _, still = psutil.wait_procs(alive, timeout=timeout)
        for p in still:
            with contextlib.suppress(psutil.Error):
                p.kill()
        for r in self.roots:
            with contextlib.suppress(subprocess.TimeoutExpired):
                r.wait(5)
        self.roots.clear()
        self.seen.clear()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _signal_tree(pids: list[int], sig: int) -> None:
    import psutil

    for pid in pids:
        try:
            root = psutil.Process(pid)
            for p in [root, *root.children(recursive=True)]:
                p.send_signal(sig)
        except psutil.Error:
            pass


# -- Flower setup ------------------------------------------------------------------------------


def ensure_flower(work: Path) -> dict[str, Any]:
    """Create (or reuse) the Flower virtualenv; returns {ok, python, versions} or {ok: False, error}."""
    venv = work / "flower-venv"
    py = venv / "bin" / "python"
    ok_stamp = venv / ".fedswarm-bench-ok"
    log = work / "flower-install.log"
    if not ok_stamp.exists():
        try:
            # Can the registry serve flwr at all? (offline machines: say so, keep going)
            probe = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d",
                                    str(work / "pip-probe"), "flwr"], capture_output=True, text=True, timeout=300)
            if probe.returncode != 0:
                return {"ok": False, "error": "pip download flwr failed (no registry?): "
                        + (probe.stderr.strip().splitlines() or ["?"])[-1][:300]}
            with open(log, "ab") as fh:
                if not py.exists():
                    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, stdout=fh, stderr=fh)
                for req in ([TORCH_PIN], ["flwr[simulation]"]):
                    subprocess.run([str(py), "-m", "pip", "install", "-q", *req], check=True, stdout=fh,
                                   stderr=fh, timeout=3600)
            ok_stamp.touch()
        except (subprocess.SubprocessError, OSError) as exc:
            return {"ok": False, "error": f"installing Flower failed ({exc}); see {log}"}
    ver = subprocess.run([str(py), "-c", "import flwr, torch, ray; print(flwr.__version__, torch.__version__, "
                          "ray.__version__)"], capture_output=True, text=True, timeout=300)
    if ver.returncode != 0:
        return {"ok": False, "error": "the Flower virtualenv is broken: " + ver.stderr.strip()[-300:]}
    flwr_v, torch_v, ray_v = ver.stdout.split()
    return {"ok": True, "python": str(py), "bin": str(venv / "bin"), "flwr": flwr_v, "torch": torch_v, "ray": ray_v}


def write_app(work: Path) -> Path:
    """Copy the Flower app template into the work dir (Flower builds its FAB from there)."""
    dest = work / "flower_app"
    shutil.rmtree(dest, ignore_errors=True)
    shutil.copytree(APP_TEMPLATE, dest, ignore=shutil.ignore_patterns("__pycache__"))
    return dest


# -- one Flower run ----------------------------------------------------------------------------


def _read_rounds(path: Path) -> tuple[list[dict[str, Any]], dict[str, float]]:
    rounds, events = [], {}
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if "round" in rec:
                rounds.append(rec)
            elif "event" in rec:
                events[rec["event"]] = rec["t"]
    return rounds, events


def _flower_result(out_file: Path, t_launch: float, snaps: dict[int, dict[str, float]], cpu0: dict[str, float],
                   cpu1: dict[str, float], idle_pss: list[float], peak_pss: list[float], model: str,
                   mode: str) -> dict[str, Any]:
    rounds, events = _read_rounds(out_file)
    if not rounds:
        raise BenchError(f"Flower run wrote no rounds to {out_file}")
    per = [{"round": r["round"], "wall_s": r["end"] - r["start"], "slowest_client_s": r["slowest_client_s"] or 0.0,
            "overhead_s": r["end"] - r["start"] - (r["slowest_client_s"] or 0.0)} for r in rounds]
    steady = [p for p in per if p["round"] >= 2] or per
    n = len(rounds)
    if 1 in snaps and n in snaps and n > 1:
        cpu_round = {k: (snaps[n][k] - snaps[1][k]) / (n - 1) for k in snaps[n]}
    else:
        cpu_round = {k: (cpu1[k] - cpu0[k]) / n for k in cpu1}
    walls = [p["wall_s"] for p in steady]
    comp = [p["slowest_client_s"] for p in steady]
    nparams = _nparams(model)
    return {"model": model, "mode": mode, "rounds": n, "round_wall_s": summary(walls),
            "overhead_s": summary([p["overhead_s"] for p in steady]), "slowest_trainer_s": summary(comp),
            "utilisation": sum(comp) / sum(walls) if sum(walls) > 0 else None,
            "time_to_first_round_s": rounds[0]["end"] - t_launch,
            "serverapp_start_s": events.get("serverapp_start", t_launch) - t_launch,
            "cpu_s_per_round": cpu_round, "cpu_s_job": {k: cpu1[k] - cpu0[k] for k in cpu1},
            "trainer_pss_mb": {"idle": summary(idle_pss), "peak": summary(peak_pss)},
            "model_bytes_per_round": 2 * 4 * 4 * nparams, "per_round": per}


def _nparams(model: str) -> int:
    h = HIDDEN[model]
    return 64 * h + h + h * h + h + h * 10 + 10


def _monitor(proc: subprocess.Popen[bytes], out_file: Path, comps: dict[str, list[int]], trainer_pids: list[int],
             tracker: Tracker, timeout: float, pss_per_trainer_of_total: bool = False,
             account: CpuAccount | None = None, crash_log: Path | None = None) -> tuple[dict[int, dict[str, float]], dict[str, float], list[float]]:
    """Poll until ``proc`` exits: CPU at each round end, peak PSS per trainer; returns (snaps, cpu, peaks)."""
    snaps: dict[int, dict[str, float]] = {}
    account = account or CpuAccount()
    peaks = [0.0] * max(1, len(trainer_pids))
    deadline = time.monotonic() + timeout
    last_pss = 0.0
    while proc.poll() is None:
        if time.monotonic() > deadline:
            raise BenchError(f"Flower run did not finish within {timeout:.0f} s")
        # Flower's simulation logs a crash and then hangs on Ray: give up at once.
        if crash_log is not None and crash_log.exists() and "Simulation Runtime crashed" in crash_log.read_text(errors="replace"):
            raise BenchError(f"Flower simulation crashed; see {crash_log}")
        tracker.refresh()
        cpu_now = account.sample(comps)
        rounds, _ = _read_rounds(out_file)
        for r in rounds:
            if r["round"] not in snaps:
                snaps[r["round"]] = cpu_now
        if time.monotonic() - last_pss > 1.0:
            if pss_per_trainer_of_total:
                peaks = [max(peaks[0], tree_memory(trainer_pids[0], pss=True) / 4)]
            else:
                peaks = [max(a, tree_memory(p, pss=True)) for a, p in zip(peaks, trainer_pids, strict=True)]
            last_pss = time.monotonic()
        time.sleep(0.25)
    return snaps, account.sample(comps), peaks


def run_flower_sim(fl: dict[str, Any], app: Path, out: Path, model: str, mode: str, rounds: int,
                   samples: int, timeout: float = 900) -> dict[str, Any]:
    """One Flower simulation run (Ray, 4 virtual clients) in its own process tree."""
    tracker = Tracker()
    out.mkdir(parents=True, exist_ok=True)
    out_file = out / "rounds.jsonl"
    out_file.unlink(missing_ok=True)
    env = {"FEDSWARM_BENCH_MODE": mode, "FEDSWARM_BENCH_HIDDEN": str(HIDDEN[model]),
           "FEDSWARM_BENCH_SAMPLES": str(samples), "FEDSWARM_BENCH_NUM_SERVER_ROUNDS": str(rounds),
           "FEDSWARM_BENCH_OUT_FILE": str(out_file), "FLWR_HOME": str(out / "flwr-home"),
           "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0"}
    # Ray's unix socket paths must stay under 107 bytes: a short temp dir, not the work dir.
    ray_tmp = tempfile.mkdtemp(prefix="fsray-", dir="/tmp")
    env["RAY_TMPDIR"] = ray_tmp
    try:
        t0 = time.time()
        proc = tracker.spawn([fl["python"], str(SIM_DRIVER), str(app)], out / "sim.log", env=env)
        comps = {"simulation": [proc.pid]}
        snaps, cpu1, peaks = _monitor(proc, out_file, comps, [proc.pid], tracker, timeout,
                                      pss_per_trainer_of_total=True, crash_log=out / "sim.log")
        if proc.returncode != 0:
            raise BenchError(f"Flower simulation exited {proc.returncode}; see {out / 'sim.log'}")
        res = _flower_result(out_file, t0, snaps, {"simulation": 0.0}, cpu1, [], peaks, model, mode)
        res["note"] = "PSS per trainer = whole simulation tree / 4"
        res["start"] = "cold"  # every simulation starts its own Ray cluster and clients
        return res
    finally:
        tracker.stop_all()
        shutil.rmtree(ray_tmp, ignore_errors=True)


def run_flower_deploy(fl: dict[str, Any], app: Path, out: Path, model: str, mode: str, rounds: int,
                      samples: int, timeout: float = 1800) -> dict[str, Any]:
    """One Flower deployment-engine run: SuperLink + 4 SuperNodes on 127.0.0.1, then `flwr run`."""
    tracker = Tracker()
    out.mkdir(parents=True, exist_ok=True)
    out_file = out / "rounds.jsonl"
    out_file.unlink(missing_ok=True)
    home = out / "flwr-home"
    home.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "bench"\n\n[superlink.bench]\naddress = "127.0.0.1:{port}"\ninsecure = true\n')
    env = {"FLWR_HOME": str(home), "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
           "FLWR_DISABLE_UPDATE_CHECK": "1", "PATH": f"{fl['bin']}:{os.environ.get('PATH', '')}"}
    b = Path(fl["bin"])
    try:
        t_start = time.time()
        link = tracker.spawn([str(b / "flower-superlink"), "--insecure", "--host", "127.0.0.1", "--port", str(port),
                              "--disable-runtime-dependency-installation", "--database", str(out / "state.db")],
                             out / "superlink.log", env=env)
        _wait_port(port, 120, link, out / "superlink.log")
        nodes = []
        for i in range(4):
            nodes.append(tracker.spawn(
                [str(b / "flower-supernode"), "--insecure", "--superlink", f"127.0.0.1:{port}", "--host", "127.0.0.1",
                 "--port", str(_free_port()), "--node-config", f"partition-id={i} num-partitions=4"],
                out / f"supernode{i}.log", env=env))
        time.sleep(5.0)  # let the SuperNodes register and settle before calling them idle
        idle = [tree_memory(n.pid, pss=True) for n in nodes]
        comps = {"superlink": [link.pid], "supernodes": [n.pid for n in nodes]}
        account = CpuAccount()
        cpu0 = account.sample(comps)
        t0 = time.time()
        cli = _flwr_run(b, app, model, mode, samples, rounds, out_file, out / "flwr-run.log", env, tracker)
        comps["flwr_cli"] = [cli.pid]
        cpu0["flwr_cli"] = 0.0
        # `flwr run --stream` returns when the run ends; the ServerApp writes "done" last.
        snaps, cpu1, peaks = _monitor(cli, out_file, comps, [n.pid for n in nodes], tracker, timeout, account=account)
        _, events = _read_rounds(out_file)
        if "done" not in events:
            raise BenchError(f"Flower deployment run did not finish (flwr exited {cli.returncode}); "
                             f"see {out / 'flwr-run.log'}")
        res = _flower_result(out_file, t0, snaps, cpu0, cpu1, idle, peaks, model, mode)
        res["stack_start_s"] = t0 - t_start
        res["start"] = "cold"  # a fresh SuperLink and SuperNodes: the first run on them
        res["warm_rerun"] = _flower_warm_rerun(b, app, out, model, mode, samples, env, tracker)
        return res
    finally:
        tracker.stop_all()


def _flwr_run(b: Path, app: Path, model: str, mode: str, samples: int, rounds: int, out_file: Path,
              log: Path, env: dict[str, str], tracker: Tracker) -> subprocess.Popen[bytes]:
    """Start `flwr run` of the bench app on the deployment stack; its rounds go to ``out_file``."""
    run_cfg = (f'mode="{mode}" hidden={HIDDEN[model]} samples={samples} num-server-rounds={rounds} '
               f'out-file="{out_file}"')
    return tracker.spawn([str(b / "flwr"), "run", str(app), "bench", "--stream", "--run-config", run_cfg],
                         log, env=env)


def _flower_warm_rerun(b: Path, app: Path, out: Path, model: str, mode: str, samples: int,
                       env: dict[str, str], tracker: Tracker, timeout: float = 600) -> dict[str, Any]:
    """Time to first round of a second, 1-round `flwr run` on the same (now warm) stack."""
    out_file = out / "rounds-warm.jsonl"
    out_file.unlink(missing_ok=True)
    t0 = time.time()
    cli = _flwr_run(b, app, model, mode, samples, 1, out_file, out / "flwr-run-warm.log", env, tracker)
    try:
        cli.wait(timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"the warm re-run did not finish within {timeout:.0f} s"}
    rounds, _ = _read_rounds(out_file)
    if not rounds:
        return {"error": f"the warm re-run wrote no rounds (flwr exited {cli.returncode})"}
    return {"time_to_first_round_s": rounds[0]["end"] - t0}


def _wait_port(port: int, timeout: float, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BenchError(f"flower-superlink exited {proc.returncode}; see {log}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise BenchError(f"flower-superlink did not listen on 127.0.0.1:{port} within {timeout:.0f} s")


# -- limits and scale --------------------------------------------------------------------------


def machine_limits(work: Path, quick: bool) -> dict[str, Any]:
    """Trainer vs bare PyTorch loop, aggregation vs memcpy (learning bench), store GET vs curl."""
    out: dict[str, Any] = {}
    try:
        from fedswarm.learning import bench as lb

        (work / "learning").mkdir(parents=True, exist_ok=True)
        lr = lb.run(work / "learning", quick)
        agg = lr.get("aggregation", {})
        out["training"] = {"worker_s": lr["worker_round_s"], "bare_loop_s": lr["bare_loop_s"],
                           "throughput_ratio": lr["throughput_ratio"]}
        out["aggregation"] = {"numpy_copy_gbps": agg.get("numpy_copy_gbps"),
                              "fedavg": agg.get("strategies", {}).get("fedavg")}
    except Exception as exc:  # noqa: BLE001 - a broken sub-bench must not hide the rest
        out["learning_error"] = f"{type(exc).__name__}: {exc}"[:300]
    try:
        from fedswarm.storage import bench as sb

        (work / "storage").mkdir(parents=True, exist_ok=True)
        out["store"] = sb._transfers(work / "storage", (32 if quick else 256) << 20, 2 if quick else 3)
    except Exception as exc:  # noqa: BLE001
        out["store_error"] = f"{type(exc).__name__}: {exc}"[:300]
    return out


def _four_trainer_dataset(work: Path, samples: int) -> Path:
    """The synthetic CSV of a 4-trainer job: ``samples`` rows per trainer. fedswarm trains on
    80 % of its rows, like the Flower clients do: the same 0.8 x samples each."""
    return write_dataset(work / "synthetic.csv", samples * 4)


def warm_starts(work: Path, cells: list[tuple[str, str]], samples: int) -> dict[str, Any]:
    """fedswarm's time to first round with warm trainers, per cell.

    In the interleaved cells every fedswarm job starts cold: Flower's runs in between outlast
    the trainers' `--worker-idle` (120 s), so their workers have stopped. Here each cell's job
    (2 rounds) follows another job at once, the way a busy trainer sees its next job.
    """
    net = JobNetwork(work, 4)
    out: dict[str, Any] = {}
    try:
        data = _four_trainer_dataset(work, samples)
        net.start()
        run_cell(net, data, cells[0][0], "noop", 2)  # warms every trainer's worker
        for m, mode in cells:
            out[f"{m} {mode}"] = _attempt(lambda m=m, mode=mode: run_cell(net, data, m, mode, 2))
    except Exception as exc:  # noqa: BLE001 - reported; the other parts still run
        out["error"] = f"{type(exc).__name__}: {exc}"[:300]
    finally:
        net.stop()
    return out


def scale_series(work: Path, counts: list[int], data_rows_per_trainer: int) -> list[dict[str, Any]]:
    """Noop jobs of 3 rounds with N trainer processes: round wall and client CPU per round."""
    rows = []
    for n in counts:
        # Dedicated trainers (--worker-idle 0: the worker is warmed at start-up, in batches of
        # 8): the series measures the protocol as the count grows, not n torch imports at once.
        net = JobNetwork(work / f"scale{n}", n, trainer_args=["--worker-idle", "0"])
        try:
            data = write_dataset(work / f"scale{n}.csv", int(data_rows_per_trainer * n / 0.8))
            net.start()
            c = run_cell(net, data, "mlp85k", "noop", 3)
            rows.append({"trainers": n, "round_wall_s": c["round_wall_s"], "overhead_s": c["overhead_s"],
                         "client_cpu_s_per_round": c["cpu_s_per_round"].get("client"),
                         "cpu_s_per_round": c["cpu_s_per_round"], "network_start_s": net.started_s})
        except Exception as exc:  # noqa: BLE001 - report and go on to the next count
            rows.append({"trainers": n, "error": f"{type(exc).__name__}: {exc}"[:300]})
        finally:
            net.stop()
    return rows


# -- the driver --------------------------------------------------------------------------------


def _versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for pkg in ("fedswarm", "torch", "libp2p", "numpy"):
        with contextlib.suppress(md.PackageNotFoundError):
            out[pkg] = md.version(pkg)
    return out


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b not in (None, 0) else None


PARTS = ("cells", "warm", "limits", "scale")


def run(work: Path, quick: bool, reps: int | None = None, parts: tuple[str, ...] = PARTS,
        scale_counts: list[int] | None = None) -> dict[str, Any]:
    """The whole comparison; writes results.json/results.md under ``work`` and returns the dict.

    ``parts`` picks what runs: the side-by-side ``cells``, the machine ``limits`` and the
    ``scale`` series. A partial run merges into an existing ``results.json`` so that the parts
    can be measured one at a time and still end in one report.
    """
    work.mkdir(parents=True, exist_ok=True)
    reps = reps or (1 if quick else 3)
    rounds = 3 if quick else 5
    samples = 1_000 if quick else 5_000  # per trainer (Flower: per client, 80% trained on)
    cells = [("mlp85k", "noop")] if quick else \
        [("mlp85k", "train"), ("mlp85k", "noop"), ("mlp4m", "train"), ("mlp4m", "noop")]
    result: dict[str, Any] = _previous(work, quick) if set(parts) != set(PARTS) else {}
    result.update({"quick": quick, "reps": reps, "rounds": rounds, "trainers": 4,
                   "samples_per_trainer": samples, "nproc": os.cpu_count(), "versions": _versions()})
    # A partial run keeps the full run's load figures and adds its own under `partial_runs`.
    partial: dict[str, Any] | None = None
    if "loadavg_start" in result:
        partial = {"parts": list(parts), "loadavg_start": list(os.getloadavg())}
        result.setdefault("partial_runs", []).append(partial)
    else:
        result["loadavg_start"] = list(os.getloadavg())
    result.setdefault("cells", {})
    runs: dict[str, dict[str, list[Any]]] = {}
    if "cells" in parts:
        runs = {f"{m} {mode}": {"fedswarm": [], "flower_deployment": [], "flower_simulation": []}
                for m, mode in cells}
        _run_cells(work, result, runs, cells, reps, rounds, samples, quick)
    if "warm" in parts:
        result["warm_starts"] = warm_starts(work / "warm", cells, samples)
        _save(work, result, runs)
    if "limits" in parts:
        result["limits"] = machine_limits(work / "limits", quick)
        _save(work, result, runs)
    if "scale" in parts:
        counts = scale_counts or ([8] if quick else [8, 16, 32])
        result["scale"] = scale_series(work / "scale", counts, 200)
    (partial if partial is not None else result)["loadavg_end"] = list(os.getloadavg())
    _save(work, result, runs)
    return result


def _previous(work: Path, quick: bool) -> dict[str, Any]:
    """The results of an earlier run of the same kind (quick or full), to merge a partial run into."""
    try:
        prev = json.loads((work / "results.json").read_text())
    except (OSError, ValueError):
        return {}
    return prev if isinstance(prev, dict) and prev.get("quick") == quick else {}


def _run_cells(work: Path, result: dict[str, Any], runs: dict[str, dict[str, list[Any]]],
               cells: list[tuple[str, str]], reps: int, rounds: int, samples: int, quick: bool) -> None:
    """fedswarm, Flower deployment and Flower simulation, interleaved per cell, ``reps`` times."""
    fl = ensure_flower(work)
    result["flower"] = fl
    app = write_app(work) if fl["ok"] else None
    net = JobNetwork(work / "fedswarm", 4)
    try:
        data = _four_trainer_dataset(work, samples)
        net.start()
        result["fedswarm_network_start_s"] = net.started_s
        for rep in range(reps):
            for m, mode in cells:
                key = f"{m} {mode}"
                runs[key]["fedswarm"].append(_attempt(lambda m=m, mode=mode: run_cell(net, data, m, mode, rounds)))
                if fl["ok"] and app is not None:
                    pids = [p for ps in net.components().values() for p in ps]
                    _signal_tree(pids, signal.SIGSTOP)  # the idle fedswarm network must not compete
                    try:
                        runs[key]["flower_deployment"].append(_attempt(lambda m=m, mode=mode, rep=rep: run_flower_deploy(
                            fl, app, work / "runs" / f"deploy-{m}-{mode}-{rep}", m, mode, rounds, samples)))
                        runs[key]["flower_simulation"].append(_attempt(lambda m=m, mode=mode, rep=rep: run_flower_sim(
                            fl, app, work / "runs" / f"sim-{m}-{mode}-{rep}", m, mode, rounds, samples)))
                    finally:
                        _signal_tree(pids, signal.SIGCONT)
                        net.wait_mesh(120)
                        time.sleep(3.0)  # heartbeats resume; trainers bid again
                _save(work, result, runs)
        # One cell with the default re-execution fraction, to show what checking costs.
        if not quick:
            result["reexec_default_cell"] = _attempt(lambda: run_cell(net, data, "mlp85k", "train", rounds, reexec=0.34))
    finally:
        net.stop()
    train_utils = [c.get("utilisation") for k, v in runs.items() if "train" in k for c in v["fedswarm"]
                   if "error" not in c and c.get("utilisation") is not None]
    result["utilisation_train_cells"] = summary(train_utils)
    _save(work, result, runs)


def _save(work: Path, result: dict[str, Any], runs: dict[str, dict[str, list[Any]]]) -> None:
    """Write what has been measured so far (a long run that is cut short still leaves results)."""
    for key, r in runs.items():
        result["cells"][key] = {"runs": r, "summary": _cell_summary(r)}
    # fedswarm's warm first round comes from the `warm` part when it ran: there every trainer
    # is warm by design, where a warm start among the interleaved cells is a matter of timing.
    for key, w in result.get("warm_starts", {}).items():
        fs = result["cells"].get(key, {}).get("summary", {}).get("fedswarm")
        if fs is not None and isinstance(w, dict) and w.get("start") == "warm":
            fs["time_to_first_round_warm_s"] = w.get("time_to_first_round_s")
    (work / "results.json").write_text(json.dumps(result, indent=1))
    (work / "results.md").write_text(markdown(result))


def _attempt(fn: Any) -> dict[str, Any]:
    try:
        return dict(fn())
    except Exception as exc:  # noqa: BLE001 - one failed run is reported, the others go on
        return {"error": f"{type(exc).__name__}: {exc}"[:500]}


def _med(runs: list[dict[str, Any]], *path: str) -> float | None:
    vals = []
    for r in runs:
        v: Any = r
        for p in path:
            v = v.get(p) if isinstance(v, dict) else None
        if isinstance(v, (int, float)):
            vals.append(float(v))
    return statistics.median(vals) if vals else None


def _first_round_by_start(runs: list[dict[str, Any]]) -> dict[str, float | None]:
    """Median time to first round of cold starts and of warm ones (None when none ran).

    Cold: the engine's processes meet the job's model for the first time (fedswarm: no trainer
    had a warm worker; Flower: a fresh deployment stack, or any simulation). Warm: fedswarm
    trainers with warm workers; Flower deployment: a second `flwr run` on the same stack.
    """
    cold = [x["time_to_first_round_s"] for x in runs if x.get("start") == "cold"]
    warm = [x["time_to_first_round_s"] for x in runs if x.get("start") == "warm"]
    warm += [x["warm_rerun"]["time_to_first_round_s"] for x in runs
             if "time_to_first_round_s" in x.get("warm_rerun", {})]
    cold = [v for v in cold if v is not None]
    warm = [v for v in warm if v is not None]
    return {"time_to_first_round_cold_s": statistics.median(cold) if cold else None,
            "time_to_first_round_warm_s": statistics.median(warm) if warm else None}


def _cell_summary(r: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for engine, runs in r.items():
        ok = [x for x in runs if "error" not in x]
        walls = [x["round_wall_s"]["median"] for x in ok if x["round_wall_s"]["median"] is not None]
        out[engine] = {
            "ok_runs": len(ok), "errors": [x["error"] for x in runs if "error" in x],
            "round_wall_s": summary(walls),
            "overhead_s": _med(ok, "overhead_s", "median"),
            "utilisation": _med(ok, "utilisation"),
            "time_to_first_round_s": _med(ok, "time_to_first_round_s"),
            **_first_round_by_start(ok),
            "trainer_pss_idle_mb": _med(ok, "trainer_pss_mb", "idle", "median"),
            "trainer_pss_peak_mb": _med(ok, "trainer_pss_mb", "peak", "max"),
            "cpu_s_per_round": {k: _med(ok, "cpu_s_per_round", k) for k in (ok[0]["cpu_s_per_round"] if ok else {})},
            "bytes_per_round": _med(ok, "store_bytes_per_round") if engine == "fedswarm" else _med(ok, "model_bytes_per_round"),
        }
    fs = out["fedswarm"]["round_wall_s"]["median"]
    out["ratio_overhead_fedswarm_over_flower_deployment"] = _ratio(out["fedswarm"]["overhead_s"],
                                                                   out["flower_deployment"]["overhead_s"])
    out["ratio_overhead_fedswarm_over_flower_simulation"] = _ratio(out["fedswarm"]["overhead_s"],
                                                                   out["flower_simulation"]["overhead_s"])
    out["ratio_wall_fedswarm_over_flower_deployment"] = _ratio(fs, out["flower_deployment"]["round_wall_s"]["median"])
    out["ratio_wall_fedswarm_over_flower_simulation"] = _ratio(fs, out["flower_simulation"]["round_wall_s"]["median"])
    return out


def markdown(result: dict[str, Any]) -> str:
    """The results as a markdown report."""
    def f(v: Any, d: int = 2) -> str:
        return "–" if v is None else f"{v:.{d}f}"
    lines = [f"# fedswarm vs Flower ({'quick' if result['quick'] else 'full'} run)", "",
             f"nproc {result['nproc']}, load average at start {result['loadavg_start']}, at end "
             f"{result.get('loadavg_end')}; {result['reps']} repetition(s), {result['rounds']} rounds, 4 trainers, "
             f"{result['samples_per_trainer']} samples per trainer.", "",
             f"versions: {result['versions']}; Flower: " + (
                 f"flwr {result['flower']['flwr']}, torch {result['flower']['torch']}, ray {result['flower']['ray']}"
                 if result.get("flower", {}).get("ok") else f"not run or NOT AVAILABLE ({result.get('flower', {}).get('error')})"), "",
             "| cell | engine | steady round wall s, median (min–max) | overhead s | util. | 1st round s cold / warm "
             "| CPU-s/round by component | trainer PSS MB idle / peak | bytes/round MiB | fedswarm ÷ this |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for key, cell in result.get("cells", {}).items():
        s = cell["summary"]
        for engine in ("fedswarm", "flower_deployment", "flower_simulation"):
            e = s[engine]
            rw = e["round_wall_s"]
            ratio = "" if engine == "fedswarm" else f(_ratio(s["fedswarm"]["round_wall_s"]["median"], rw["median"]))
            cpu = ", ".join(f"{k} {f(v)}" for k, v in e["cpu_s_per_round"].items())
            err = f" ({len(e['errors'])} failed: {e['errors'][0][:80]})" if e["errors"] else ""
            lines.append(f"| {key} | {engine}{err} | {f(rw['median'])} ({f(rw['min'])}–{f(rw['max'])}) | "
                         f"{f(e['overhead_s'])} | {f(e.get('utilisation'))} | "
                         f"{f(e.get('time_to_first_round_cold_s'), 1)} / {f(e.get('time_to_first_round_warm_s'), 1)} | {cpu} | "
                         f"{f(e['trainer_pss_idle_mb'], 0)} / {f(e['trainer_pss_peak_mb'], 0)} | "
                         f"{f((e['bytes_per_round'] or 0) / 2**20, 1) if e['bytes_per_round'] else '–'} | {ratio} |")
    rx = result.get("reexec_default_cell", {})
    if "error" not in rx and rx:
        lines += ["", f"Re-execution at the default fraction 0.34 (mlp85k train): steady round wall "
                  f"{f(rx['round_wall_s']['median'])} s, overhead {f(rx['overhead_s']['median'])} s."]
    lim = result.get("limits", {})
    tr = lim.get("training", {}).get("throughput_ratio", {})
    st = lim.get("store", {})
    ag = lim.get("aggregation", {})
    lines += ["", "## Machine limits", "",
              f"- training throughput, worker ÷ bare PyTorch loop: {f(tr.get('median'))} (goal ≥ 0.95)",
              f"- store GET ÷ curl: {f(st.get('get_ratio'))}; PUT ÷ curl: {f(st.get('put_ratio'))}",
              f"- aggregation (fedavg) vs numpy copy: {f((ag.get('fedavg') or {}).get('vs_numpy_copy'))} "
              f"(copy {f(ag.get('numpy_copy_gbps'))} GB/s)",
              f"- utilisation (share of round wall in the slowest trainer's compute), train cells: "
              f"{f(result.get('utilisation_train_cells', {}).get('median'))} (goal ≥ 0.90)",
              "", "## Scale (noop, 3 rounds)", "",
              "| trainers | round wall s | overhead s | client CPU-s/round | all trainers' CPU-s/round | network start s |",
              "|---|---|---|---|---|---|"]
    for row in result.get("scale", []):
        if "error" in row:
            lines.append(f"| {row['trainers']} | failed: {row['error'][:100]} | | | | |")
        else:
            lines.append(f"| {row['trainers']} | {f(row['round_wall_s']['median'])} | {f(row['overhead_s']['median'])} | "
                         f"{f(row['client_cpu_s_per_round'])} | {f(row['cpu_s_per_round'].get('trainers'))} | "
                         f"{f(row.get('network_start_s'), 0)} |")
    return "\n".join(lines) + "\n"


def main(args: argparse.Namespace) -> int:
    """Entry point of ``fedswarm bench all [--json] [--quick] [--workdir DIR]`` (default ./bench-work)."""
    work = Path(args.workdir or "bench-work").resolve()

    def _terminate(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt  # run the finally blocks: they stop every process by pid

    # A SIGTERM (or a SIGINT ignored by a background shell) must still clean up.
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        only = tuple(p.strip() for p in (getattr(args, "only", None) or ",".join(PARTS)).split(",") if p.strip())
        unknown = sorted(set(only) - set(PARTS))
        if unknown:
            raise BenchError(f"unknown part(s) {', '.join(unknown)}; choose from {', '.join(PARTS)}")
        counts = None
        if getattr(args, "scale", None):
            try:
                counts = [int(c) for c in args.scale.split(",")]
            except ValueError:
                raise BenchError(f"--scale wants comma-separated trainer counts, got {args.scale!r}") from None
            if any(c < 1 or c > 64 for c in counts):
                raise BenchError("--scale counts must be between 1 and 64")
        result = run(work, bool(getattr(args, "quick", False)), parts=only, scale_counts=counts)
    except BenchError as exc:
        print(f"fedswarm bench all: {exc}", file=sys.stderr)
        return 1
    if getattr(args, "json", False):
        print(json.dumps(result))
    else:
        print(markdown(result))
        print(f"(written to {work / 'results.json'} and {work / 'results.md'})")
    return 0
