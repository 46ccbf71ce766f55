"""The CPU proxies of GPU arithmetic stay inside the review's re-execution bounds: a unit whose
linear layers run with TF32 products (10-bit mantissa inputs, float32 accumulation) or, harsher,
bfloat16's 7-bit mantissa, or in float64, matches the client's float32 CPU re-execution within the
cross-device bound; other dropout masks stay inside the dropout bound. The GPU run itself is
``scripts/gpu_tolerance.py --device cuda``."""

from __future__ import annotations

import torch

from fedswarm.bench.tolerance import measure, round_mantissa, summarise
from fedswarm.learning.reference import Thresholds


def test_round_mantissa_keeps_the_given_bits() -> None:
    x = torch.tensor([1.0 + 2**-11, 1.0 + 2**-10, 3.14159265], dtype=torch.float32)
    tf32 = round_mantissa(x, 10)
    assert tf32[0].item() in (1.0, 1.0 + 2**-10) and tf32[1].item() == 1.0 + 2**-10
    assert abs(tf32[2].item() - 3.14159265) < 2**-9 and tf32[2].item() != x[2].item()
    assert round_mantissa(x, 7)[2].item() == 3.140625  # bfloat16's value of pi


def test_gpu_arithmetic_proxies_match_within_the_bounds() -> None:
    rows = measure(quick=True, seeds=1, variants=("float64", "tf32", "bf16", "dropout-masks"))
    summary = {(s["workload"], s["variant"]): s for s in summarise(rows)}
    t = Thresholds()
    assert all(r.passes for r in rows), [r for r in rows if not r.passes]
    # Not vacuous: rounding really moves the units, and dropout masks far more.
    assert summary[("mlp85k", "tf32")]["max_rel_diff"] > 1e-4
    assert summary[("mlp85k", "bf16")]["max_rel_diff"] < t.reexec_rtol_cross_device
    assert summary[("digits", "dropout-masks")]["max_rel_diff"] > t.reexec_rtol_cross_device
    assert summary[("mlp85k", "float64")]["max_rel_diff"] < t.reexec_rtol_same_device
