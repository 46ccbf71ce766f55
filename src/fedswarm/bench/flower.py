"""The Flower side of `fedswarm bench all`: its virtualenv, the app template, and one run in the
deployment engine (SuperLink + 4 SuperNodes on 127.0.0.1) or the simulation engine (Ray).

The app template (``flower_files/flower_app/``: ServerApp + ClientApp, Flower's FedAvg, the same
synthetic task as fedswarm's, one torch thread) and the simulation driver
(``flower_files/flower_sim.py``) ship as package data next to this module; they run in the Flower
virtualenv and are never imported by fedswarm (its environment has no flwr).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from fedswarm.bench.job import BenchError, CpuAccount, summary, tree_memory
from fedswarm.bench.procs import Tracker, free_port

# A folder of their own: the driver runs as a script, so its folder heads the Flower process's
# sys.path and must hold nothing that could shadow a top-level module.
FLOWER_FILES = Path(__file__).resolve().parent / "flower_files"
APP_TEMPLATE = FLOWER_FILES / "flower_app"
SIM_DRIVER = FLOWER_FILES / "flower_sim.py"
HIDDEN = {"mlp85k": 256, "mlp4m": 2048}
TORCH_PIN = "torch==2.13.0"


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
    port = free_port()
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
                 "--port", str(free_port()), "--node-config", f"partition-id={i} num-partitions=4"],
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

