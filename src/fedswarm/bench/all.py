"""`fedswarm bench all` (`make bench`): fedswarm side by side with Flower, and the machine's limits.

The driver (see ``docs/BENCHMARKS.md``):

1. creates a Flower virtualenv under the work dir (``python -m venv``, ``torch==2.13.0`` first so
   flwr does not pull a CUDA build, then ``flwr[simulation]``) unless it is already there; if
   the registry cannot serve ``flwr``, the Flower columns say why and the fedswarm side still runs;
2. copies the Flower app of ``fedswarm/bench/flower_files/flower_app`` (ServerApp + ClientApp,
   Flower's FedAvg, the same synthetic task, one torch thread) into the work dir;
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
import signal
import sys
import time
from pathlib import Path
from typing import Any

from fedswarm.bench.flower import ensure_flower, run_flower_deploy, run_flower_sim, write_app
from fedswarm.bench.job import BenchError, JobNetwork, run_cell, summary, write_dataset
from fedswarm.bench.procs import signal_tree
from fedswarm.bench.report import cell_summary, markdown

# -- limits and scale --------------------------------------------------------------------------


def machine_limits(work: Path, quick: bool) -> dict[str, Any]:
    """Trainer vs bare PyTorch loop, aggregation vs memcpy (learning bench), store GET vs curl."""
    out: dict[str, Any] = {}
    try:
        from fedswarm.bench import learning as lb

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
        from fedswarm.bench import storage as sb

        (work / "storage").mkdir(parents=True, exist_ok=True)
        out["store"] = sb.transfers(work / "storage", (32 if quick else 256) << 20, 2 if quick else 3)
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
                    signal_tree(pids, signal.SIGSTOP)  # the idle fedswarm network must not compete
                    try:
                        runs[key]["flower_deployment"].append(_attempt(lambda m=m, mode=mode, rep=rep: run_flower_deploy(
                            fl, app, work / "runs" / f"deploy-{m}-{mode}-{rep}", m, mode, rounds, samples)))
                        runs[key]["flower_simulation"].append(_attempt(lambda m=m, mode=mode, rep=rep: run_flower_sim(
                            fl, app, work / "runs" / f"sim-{m}-{mode}-{rep}", m, mode, rounds, samples)))
                    finally:
                        signal_tree(pids, signal.SIGCONT)
                        net.wait_mesh(120)
                        time.sleep(3.0)  # heartbeats resume; trainers bid again
                _save(work, result, runs)
        # One cell with the default re-execution fraction, to show what checking costs.
        if not quick:
            result["reexec_default_cell"] = _attempt(lambda: run_cell(net, data, "mlp85k", "train", rounds, reexec=0.1))
    finally:
        net.stop()
    train_utils = [c.get("utilisation") for k, v in runs.items() if "train" in k for c in v["fedswarm"]
                   if "error" not in c and c.get("utilisation") is not None]
    result["utilisation_train_cells"] = summary(train_utils)
    _save(work, result, runs)


def _save(work: Path, result: dict[str, Any], runs: dict[str, dict[str, list[Any]]]) -> None:
    """Write what has been measured so far (a long run that is cut short still leaves results)."""
    for key, r in runs.items():
        result["cells"][key] = {"runs": r, "summary": cell_summary(r)}
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
