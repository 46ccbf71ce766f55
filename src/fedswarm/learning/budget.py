"""Dry run of a model on the meta device against parameter, activation and FLOP budgets.

Runs before anything real is allocated: the model is built with ``device="meta"`` (shapes
only) and one forward pass at the job's batch size is traced under a dispatch mode that sums
the bytes of every op output (an upper bound on what autograd keeps for backward) and counts
FLOPs with PyTorch's own formulas. A single op whose output alone exceeds the activation
budget (``repeat`` with huge factors, say) stops the run at that op.

Loops are counted, not run: a recurrent layer (LSTM/GRU) steps once per sequence element, layer
and direction, and tracing that loop op by op costs time in proportion to the sequence. In the
dry run such a layer is replaced by its shape arithmetic: the sequence length (times layers and
directions) is checked against ``Budget.max_recurrent_steps``, its FLOPs and the activations
autograd keeps are computed from the sizes, and it returns meta tensors of the real output
shapes. And the whole check runs under a wall-clock limit (``Budget.max_check_seconds``): every
dispatched op looks at the deadline, and the caller's thread stops waiting when it passes.
"""

from __future__ import annotations

import math
import threading
import time
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict
from torch import nn
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
    max_recurrent_steps: int = 8192  # sequence length x layers x directions, per recurrent layer
    max_check_seconds: float = 30.0  # wall clock for the whole dry run


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
    def __init__(self, limit: int, deadline: float) -> None:
        super().__init__()
        self.limit = limit
        self.total = 0
        self.deadline = deadline
        self.ops = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        self.ops += 1
        if time.monotonic() > self.deadline:
            raise BudgetExceeded(f"the model check ran past its time limit after {self.ops} ops; the model has too many steps")
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


class _Tally:
    """FLOPs and activation bytes of the layers computed from their sizes instead of traced."""

    def __init__(self) -> None:
        self.flops = 0
        self.activation_bytes = 0


def _counted_recurrent(module: nn.RNNBase, budget: Budget, tally: _Tally) -> Any:
    """A stand-in ``forward`` for an LSTM/GRU in the dry run: checks the loop's length, counts
    its FLOPs and saved activations from the sizes, returns meta tensors of the real shapes."""
    def forward(x: torch.Tensor, hx: Any = None) -> tuple[torch.Tensor, Any]:
        if x.dim() != 3 or x.shape[-1] != module.input_size:
            raise SpecError(f"{module.mode} expects [batch, seq, {module.input_size}], got {list(x.shape)}")
        batch, seq = (int(x.shape[0]), int(x.shape[1])) if module.batch_first else (int(x.shape[1]), int(x.shape[0]))
        dirs = 2 if module.bidirectional else 1
        steps = seq * module.num_layers * dirs
        if steps > budget.max_recurrent_steps:
            raise BudgetExceeded(f"{module.mode} runs {steps} steps (sequence {seq} x {module.num_layers} layers x "
                                 f"{dirs} directions), over the budget of {budget.max_recurrent_steps}")
        gates = {"LSTM": 4, "GRU": 3}.get(module.mode, 1)
        h = module.hidden_size
        per_step = sum(gates * h * ((module.input_size if i == 0 else h * dirs) + h) for i in range(module.num_layers))
        tally.flops += 2 * batch * seq * dirs * per_step
        # autograd keeps the gate activations and hidden states of every step
        tally.activation_bytes += batch * steps * (gates + 2) * h * x.element_size()
        if tally.flops > budget.max_flops:
            raise BudgetExceeded(f"{module.mode} needs about {tally.flops} FLOPs per batch, over the budget of {budget.max_flops}")
        if tally.activation_bytes > budget.max_activation_bytes:
            raise BudgetExceeded(f"{module.mode} keeps about {tally.activation_bytes} bytes of activations, "
                                 f"over the budget of {budget.max_activation_bytes}")
        shape = [batch, seq, h * dirs] if module.batch_first else [seq, batch, h * dirs]
        out = x.new_empty(shape)
        state = x.new_empty([module.num_layers * dirs, batch, h])
        return out, ((state, x.new_empty(state.shape)) if module.mode == "LSTM" else state)
    return forward


def check_budget(spec: SeqSpec | GraphSpec, batch_size: int, budget: Budget | None = None, *,
                 deadline_s: float | None = None) -> BudgetReport:
    """Dry-run ``spec`` on the meta device within ``deadline_s`` seconds (default
    ``budget.max_check_seconds``); raises :class:`BudgetExceeded` or :class:`SpecError`.

    The check runs in a worker thread: the caller waits at most the deadline (plus a moment),
    and the check itself stops at its next op once the deadline has passed.
    """
    budget = budget or Budget()
    limit = budget.max_check_seconds if deadline_s is None else deadline_s
    deadline = time.monotonic() + limit
    result: list[BudgetReport] = []
    error: list[BaseException] = []

    def run() -> None:
        try:
            result.append(_check(spec, batch_size, budget, deadline))
        except BaseException as exc:  # handed to the caller's thread
            error.append(exc)

    worker = threading.Thread(target=run, name="budget-check", daemon=True)
    worker.start()
    worker.join(limit + 1.0)
    if worker.is_alive():
        raise BudgetExceeded(f"the model check did not finish within {limit:g} s")
    if error:
        raise error[0]
    return result[0]


def _check(spec: SeqSpec | GraphSpec, batch_size: int, budget: Budget, deadline: float) -> BudgetReport:
    """The dry run itself (see :func:`check_budget`)."""
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
    counter = _ActivationCounter(budget.max_activation_bytes, deadline)
    flops = FlopCounterMode(display=False)
    tally = _Tally()
    for module in model.modules():
        if isinstance(module, nn.RNNBase):  # the throwaway meta model: patch the instance
            module.forward = _counted_recurrent(module, budget, tally)  # type: ignore[method-assign]
    model.train()
    try:
        with flops, counter:
            out = model(x)
    except BudgetExceeded:
        raise
    except Exception as exc:  # shape mismatches between layers surface here
        raise SpecError(f"model does not run on input {[batch_size, *spec.input_shape]}: {str(exc).splitlines()[0]}") from None
    total_flops = int(flops.get_total_flops()) + tally.flops
    if total_flops > budget.max_flops:
        raise BudgetExceeded(f"one batch needs {total_flops} FLOPs, over the budget of {budget.max_flops}")
    activations = counter.total + tally.activation_bytes
    if activations > budget.max_activation_bytes:
        raise BudgetExceeded(f"one batch keeps {activations} bytes of activations, over the budget of "
                             f"{budget.max_activation_bytes}")
    out_t = out[0] if isinstance(out, tuple | list) else out
    return BudgetReport(params=params, param_bytes=param_bytes, activation_bytes=activations,
                        flops=total_flops, batch_size=batch_size, output_shape=list(out_t.shape))
