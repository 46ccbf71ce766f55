"""Dry run of a model on the meta device against parameter, activation and FLOP budgets.

Runs before anything real is allocated: the model is built with ``device="meta"`` (shapes
only) and one forward pass at the job's batch size is traced under a dispatch mode that sums
the bytes of every op output (an upper bound on what autograd keeps for backward) and counts
FLOPs with PyTorch's own formulas. A single op whose output alone exceeds the activation
budget (``repeat`` with huge factors, say) stops the run at that op.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

from fedswarm.learning.graph import GraphSpec, build_graph_module
from fedswarm.learning.spec import SeqSpec, SpecError, build_seq_module


class BudgetExceeded(SpecError):
    """The model is over one of the trainer's budgets; the message names which."""


class Budget(BaseModel):
    """Limits a trainer accepts for one job (defaults suit a small CPU trainer)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_params: int = 50_000_000
    max_activation_bytes: int = 2 << 30
    max_flops: int = 200 * 10**9  # forward FLOPs of one batch


class BudgetReport(BaseModel):
    """What the dry run measured (forward pass of one batch)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    params: int
    param_bytes: int
    activation_bytes: int
    flops: int
    batch_size: int
    output_shape: list[int]


class _ActivationCounter(TorchDispatchMode):
    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit
        self.total = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, tuple | list) else (out,):
            if isinstance(t, torch.Tensor):
                size = t.numel() * t.element_size()
                self.total += size
                if size > self.limit or self.total > self.limit:
                    raise BudgetExceeded(
                        f"activation memory over budget at {func}: output {list(t.shape)} "
                        f"({size} bytes, {self.total} so far, limit {self.limit})"
                    )
        return out


def check_budget(spec: SeqSpec | GraphSpec, batch_size: int, budget: Budget | None = None) -> BudgetReport:
    """Dry-run ``spec`` on the meta device; raises :class:`BudgetExceeded` or :class:`SpecError`.

    The parameter count is checked on the (allocation-free) meta module before any forward.
    """
    budget = budget or Budget()
    if isinstance(spec, GraphSpec):
        declared = sum(math.prod(t.shape) for t in spec.tensors)
        if declared > budget.max_params:
            raise BudgetExceeded(f"graph declares {declared} parameters, over the budget of {budget.max_params}")
        model = build_graph_module(spec, None, device="meta")
    else:
        model = build_seq_module(spec, device="meta")
    params = sum(p.numel() for p in model.parameters())
    param_bytes = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    if params > budget.max_params:
        raise BudgetExceeded(f"model has {params} parameters, over the budget of {budget.max_params}")
    dtype = torch.int64 if spec.input_dtype == "int64" else torch.float32
    x = torch.zeros([batch_size, *spec.input_shape], dtype=dtype, device="meta")
    counter = _ActivationCounter(budget.max_activation_bytes)
    flops = FlopCounterMode(display=False)
    model.train()
    try:
        with flops, counter:
            out = model(x)
    except BudgetExceeded:
        raise
    except Exception as exc:  # shape mismatches between layers surface here
        raise SpecError(f"model does not run on input {[batch_size, *spec.input_shape]}: {str(exc).splitlines()[0]}") from None
    total_flops = int(flops.get_total_flops())
    if total_flops > budget.max_flops:
        raise BudgetExceeded(f"one batch needs {total_flops} FLOPs, over the budget of {budget.max_flops}")
    out_t = out[0] if isinstance(out, tuple | list) else out
    return BudgetReport(params=params, param_bytes=param_bytes, activation_bytes=counter.total,
                        flops=total_flops, batch_size=batch_size, output_shape=list(out_t.shape))
