"""The report of `fedswarm bench all`: per-cell summaries of the runs and the markdown tables."""

from __future__ import annotations

import statistics
from typing import Any

from fedswarm.bench.job import summary


def _ratio(a: float | None, b: float | None) -> float | None:
    """``a / b``, or None when either is missing or ``b`` is 0."""
    return a / b if a is not None and b not in (None, 0) else None


def _med(runs: list[dict[str, Any]], *path: str) -> float | None:
    vals = []
    for r in runs:
        v: Any = r
        for p in path:
            v = v.get(p) if isinstance(v, dict) else None
        if isinstance(v, (int, float)):
            vals.append(float(v))
    return statistics.median(vals) if vals else None


def first_round_by_start(runs: list[dict[str, Any]]) -> dict[str, float | None]:
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


def cell_summary(r: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Medians per engine of one cell's runs (failed runs counted apart) and fedswarm's ratios."""
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
            **first_round_by_start(ok),
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
        lines += ["", f"Re-execution at the default fraction 0.1 (mlp85k train): steady round wall "
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
