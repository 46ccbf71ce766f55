"""The report logic of `fedswarm bench all` on hand-made runs (no processes)."""

from __future__ import annotations

from fedswarm.bench.report import cell_summary, first_round_by_start, markdown


def _run(wall: float, first: float, start: str, **extra: object) -> dict:
    return {"round_wall_s": {"median": wall, "min": wall, "max": wall}, "overhead_s": {"median": wall / 2},
            "utilisation": 0.5, "time_to_first_round_s": first, "start": start,
            "trainer_pss_mb": {"idle": {"median": 100.0}, "peak": {"max": 300.0}},
            "cpu_s_per_round": {"client": 0.1}, "store_bytes_per_round": 1 << 20,
            "model_bytes_per_round": 1 << 20, **extra}


def test_first_round_splits_cold_and_warm_starts() -> None:
    runs = [_run(1.0, 20.0, "cold"), _run(1.0, 12.0, "warm"), _run(1.0, 14.0, "warm"), _run(1.0, 99.0, "mixed")]
    assert first_round_by_start(runs) == {"time_to_first_round_cold_s": 20.0, "time_to_first_round_warm_s": 13.0}
    # Flower deployment: every measured run is cold; its 1-round re-run on the same stack is warm.
    deploy = [_run(15.0, 30.0, "cold", warm_rerun={"time_to_first_round_s": 18.0}),
              _run(15.0, 32.0, "cold", warm_rerun={"error": "did not finish"})]
    assert first_round_by_start(deploy) == {"time_to_first_round_cold_s": 31.0, "time_to_first_round_warm_s": 18.0}
    assert first_round_by_start([]) == {"time_to_first_round_cold_s": None, "time_to_first_round_warm_s": None}


def test_markdown_shows_cold_and_warm_and_failed_runs() -> None:
    cell = {"fedswarm": [_run(1.0, 20.0, "cold"), _run(1.0, 12.0, "warm")],
            "flower_deployment": [_run(15.0, 30.0, "cold", warm_rerun={"time_to_first_round_s": 18.0})],
            "flower_simulation": [{"error": "BenchError: Ray crashed"}]}
    result = {"quick": True, "nproc": 2, "loadavg_start": [0, 0, 0], "reps": 1, "rounds": 3,
              "samples_per_trainer": 5000, "versions": {}, "flower": {"ok": False, "error": "offline"},
              "cells": {"mlp85k train": {"summary": cell_summary(cell)}},
              "scale": [{"trainers": 32, "error": "BenchError: only 31 of 32 bids"}]}
    md = markdown(result)
    assert "1st round s cold / warm" in md
    assert "| 20.0 / 12.0 |" in md and "| 30.0 / 18.0 |" in md
    assert "1 failed: BenchError: Ray crashed" in md
    assert "| 32 | failed: BenchError: only 31 of 32 bids" in md


def test_a_warm_start_run_fills_fedswarm_warm_first_round(tmp_path) -> None:
    import json

    from fedswarm.bench.all import _save

    cell = {"fedswarm": [_run(1.0, 20.0, "cold")], "flower_deployment": [_run(15.0, 30.0, "cold")],
            "flower_simulation": [_run(0.3, 12.0, "cold")]}
    result = {"quick": False, "nproc": 2, "loadavg_start": [0, 0, 0], "reps": 1, "rounds": 5,
              "samples_per_trainer": 5000, "versions": {}, "flower": {"ok": False, "error": "offline"},
              "cells": {"mlp85k train": {"summary": cell_summary(cell)}},
              "warm_starts": {"mlp85k train": _run(1.0, 11.5, "warm"), "mlp4m noop": _run(1.0, 12.0, "warm")}}
    _save(tmp_path, result, {})  # a `--only warm` run: no cells re-measured
    saved = json.loads((tmp_path / "results.json").read_text())
    fs = saved["cells"]["mlp85k train"]["summary"]["fedswarm"]
    assert fs["time_to_first_round_cold_s"] == 20.0 and fs["time_to_first_round_warm_s"] == 11.5
    assert "| 20.0 / 11.5 |" in (tmp_path / "results.md").read_text()
