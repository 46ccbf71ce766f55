"""``fedswarm-graph/1``: any ``torch.export``-able model, shipped as a JSON graph of ATen ops.

Submitter side (:func:`export_model`): ``torch.export.export`` traces the user's module in
training mode with a dynamic batch dimension; we walk the graph and emit JSON nodes whose
``target`` is an ATen overload name (``aten.conv2d.default``) and whose args are literals or
``{"ref": node}``; weights go to safetensors. Importing the user's code is fine there: it is
their own machine.

Trainer side (:func:`build_graph_module`): no user code, no pickle, no eval, no getattr on
user strings. Each target maps through :data:`ALLOWED_OPS` (a dict written in code, in
:mod:`fedswarm.learning.graph_ops`) to a ``torch.ops.aten`` overload by *exact* string match;
names, literals and references are validated, and every problem is collected into one readable
rejection report (:class:`GraphRejected`). The graph is rebuilt as ``torch.fx`` graphs with our own node names
(user names are only keys for references). Train/eval are two graphs that differ in the
``training`` argument of batch_norm / dropout (and drop the ``num_batches_tracked`` counter in
eval), exactly like ``nn.Module.train()/eval()`` on the original.

JSON shape::

    {"format": "fedswarm-graph/1",
     "inputs": [{"name": "x", "shape": [2, 3, 32, 32], "dtype": "float32"}],
     "tensors": [{"name": "c1.weight", "node": "p_c1_weight", "kind": "parameter",
                  "shape": [8, 3, 3, 3], "dtype": "float32"}, ...],
     "nodes": [{"name": "conv2d", "target": "aten.conv2d.default",
                "args": [{"ref": "x"}, {"ref": "p_c1_weight"}, ...], "kwargs": {}}, ...],
     "outputs": [{"ref": "linear"}],
     "task": ..., "loss": ..., "optimizer": ..., "metrics": ..., "train": ...}
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from torch import nn

from fedswarm.learning.graph_ops import (
    ALLOWED_OPS,
    DTYPE_NAMES,
    DTYPES,
    LAYOUTS,
    MEMORY_FORMAT_NAMES,
    MEMORY_FORMATS,
    TARGET_NAMES,
    TRAIN_FLAGS,
)
from fedswarm.learning.spec import MAX_SPEC_BYTES, SpecError, TrainingSpec
from fedswarm.protocol.decode import DecodeError, decode_json

GRAPH_FORMAT = "fedswarm-graph/1"
MAX_NODES = 5_000
MAX_LIST_LEN = 64
MAX_LITERAL_DEPTH = 3


_NODE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
_ATTR_PART = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$|^[0-9]{1,6}$")
_STR_LITERAL = re.compile(r"^[A-Za-z0-9_]{0,32}$")


class GraphRejected(SpecError):
    """A graph the trainer refuses; ``problems`` lists every reason found."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        shown = "; ".join(problems[:8]) + (f" (+{len(problems) - 8} more)" if len(problems) > 8 else "")
        super().__init__(f"graph rejected ({len(problems)} problem(s)): {shown}")


class ExportError(ValueError):
    """The user's module cannot be expressed as a ``fedswarm-graph/1`` graph."""


class GraphInput(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str
    shape: list[int] = Field(min_length=1, max_length=6)
    dtype: Literal["float32", "int64"] = "float32"


class GraphTensor(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str = Field(max_length=300)
    node: str
    kind: Literal["parameter", "buffer"]
    shape: list[Any] = Field(max_length=8)
    dtype: Literal["float32", "int64"] = "float32"


class GraphNode(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str
    target: str = Field(max_length=200)
    args: list[Any] = Field(default_factory=list, max_length=32)
    kwargs: dict[str, Any] = Field(default_factory=dict)


class GraphSpec(TrainingSpec):
    """A parsed (structurally typed, not yet semantically validated) ``fedswarm-graph/1``."""

    format: Literal["fedswarm-graph/1"]
    inputs: list[GraphInput] = Field(min_length=1, max_length=1)
    tensors: list[GraphTensor] = Field(max_length=10_000)
    nodes: list[GraphNode] = Field(min_length=1, max_length=MAX_NODES)
    outputs: list[Any] = Field(min_length=1, max_length=16)

    @property
    def input_shape(self) -> list[int]:
        """Per-sample input shape (the first dimension is the batch)."""
        return list(self.inputs[0].shape[1:])

    @property
    def input_dtype(self) -> str:
        return self.inputs[0].dtype


# ---- validation ------------------------------------------------------------------------------


def parse_graph_spec(data: str | bytes | dict[str, Any]) -> GraphSpec:
    """Parse and fully validate a graph; raises :class:`GraphRejected` listing every problem."""
    if isinstance(data, dict):
        obj = data
    else:
        if len(data) > 64 * MAX_SPEC_BYTES:
            raise GraphRejected([f"graph JSON is {len(data)} bytes, over the cap"])
        try:  # the bounded decoder: nesting depth checked before parsing (outside input)
            obj = decode_json(data, max_bytes=64 * MAX_SPEC_BYTES, what="graph JSON")
        except DecodeError as exc:
            raise GraphRejected([str(exc)]) from None
    try:
        spec = GraphSpec.model_validate(obj)
    except ValidationError as exc:
        problems = [
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()[:20]
        ]
        raise GraphRejected(problems) from None
    problems = _semantic_problems(spec)
    if problems:
        raise GraphRejected(problems)
    return spec


def _check_literal(value: Any, known: set[str], where: str, problems: list[str], depth: int = 0) -> None:
    """Literal args: numbers, bools, None, short identifiers, typed tokens, lists, node refs."""
    if value is None or isinstance(value, bool | int):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            problems.append(f"{where}: non-finite float must be written as {{'float': ...}}")
        return
    if isinstance(value, str):
        if not _STR_LITERAL.match(value):
            problems.append(f"{where}: string literal {value[:40]!r} is not a short identifier")
        return
    if isinstance(value, list):
        if depth >= MAX_LITERAL_DEPTH or len(value) > MAX_LIST_LEN:
            problems.append(f"{where}: list literal too deep or too long")
            return
        for i, item in enumerate(value):
            _check_literal(item, known, f"{where}[{i}]", problems, depth + 1)
        return
    if isinstance(value, dict) and len(value) == 1:
        (key, v), = value.items()
        if key == "ref":
            if not isinstance(v, str) or v not in known:
                problems.append(f"{where}: reference to unknown or later node {str(v)[:60]!r}")
            return
        if key == "float" and v in ("inf", "-inf", "nan"):
            return
        if key == "dtype" and v in DTYPES:
            return
        if key == "memory_format" and v in MEMORY_FORMATS:
            return
        if key == "layout" and v in LAYOUTS:
            return
        if key == "device" and isinstance(v, str) and _STR_LITERAL.match(v):
            return
    problems.append(f"{where}: non-literal argument {json.dumps(value)[:80]}")


def _semantic_problems(spec: GraphSpec) -> list[str]:
    problems: list[str] = []
    known: set[str] = set()

    def declare(name: str, where: str) -> None:
        if not _NODE_NAME.match(name):
            problems.append(f"{where}: bad node name {name[:60]!r}")
        elif name in known:
            problems.append(f"{where}: duplicate node name {name!r}")
        known.add(name)

    for inp in spec.inputs:
        declare(inp.name, "input")
        if any(d < 1 or d > 1 << 20 for d in inp.shape):
            problems.append(f"input {inp.name!r}: shape {inp.shape} out of range")
    attr_names: set[str] = set()
    for t in spec.tensors:
        declare(t.node, f"tensor {t.name[:60]!r}")
        parts = t.name.split(".")
        if not all(_ATTR_PART.match(p) for p in parts) or any(p.startswith("__") for p in parts):
            problems.append(f"tensor name {t.name[:60]!r} is not a dotted identifier")
        if t.name in attr_names:
            problems.append(f"duplicate tensor name {t.name!r}")
        attr_names.add(t.name)
        if not all(isinstance(d, int) and not isinstance(d, bool) and 0 <= d <= 1 << 24 for d in t.shape):
            problems.append(f"tensor {t.name[:60]!r}: shape {t.shape!r} is not a list of sizes")
    # a prefix of one tensor name that is also a tensor name would clash in the module tree
    for name in attr_names:
        parts = name.split(".")
        for i in range(1, len(parts)):
            if ".".join(parts[:i]) in attr_names:
                problems.append(f"tensor name {name!r} nests under another tensor")
    for node in spec.nodes:
        where = f"node {node.name[:60]!r}"
        if node.target not in ALLOWED_OPS:
            problems.append(f"{where}: target {node.target[:80]!r} is not an allowlisted ATen op")
        for i, a in enumerate(node.args):
            _check_literal(a, known, f"{where} arg {i}", problems)
        for k, v in node.kwargs.items():
            if not _NODE_NAME.match(k):
                problems.append(f"{where}: bad keyword name {k[:40]!r}")
            _check_literal(v, known, f"{where} kwarg {k[:40]}", problems)
        declare(node.name, where)
    for i, out in enumerate(spec.outputs):
        if not (isinstance(out, dict) and set(out) == {"ref"}):
            problems.append(f"output {i}: must be a node reference")
        else:
            _check_literal(out, known, f"output {i}", problems)
    return problems


# ---- rebuilding on the trainer ---------------------------------------------------------------


def _decode(value: Any, env: Mapping[str, torch.fx.Node], device: torch.device) -> Any:
    """JSON literal -> Python value / fx node (input already validated)."""
    if isinstance(value, list):
        return [_decode(v, env, device) for v in value]
    if isinstance(value, dict):
        (key, v), = value.items()
        if key == "ref":
            return env[v]
        if key == "float":
            return float(v)
        if key == "dtype":
            return DTYPES[v]
        if key == "memory_format":
            return MEMORY_FORMATS[v]
        if key == "layout":
            return LAYOUTS[v]
        if key == "device":
            return device  # the trainer decides where tensors live
    return value


def _make_graph(spec: GraphSpec, training: bool, device: torch.device) -> torch.fx.Graph:
    graph = torch.fx.Graph()
    env: dict[str, torch.fx.Node] = {}
    buffer_nodes: set[str] = set()
    for i, inp in enumerate(spec.inputs):
        env[inp.name] = graph.placeholder(f"input_{i}")
    for t in spec.tensors:
        env[t.node] = graph.get_attr(t.name)
        if t.kind == "buffer":
            buffer_nodes.add(t.node)
    users: dict[str, int] = {}
    for node in spec.nodes:
        for ref in _refs(node.args) + _refs(list(node.kwargs.values())):
            users[ref] = users.get(ref, 0) + 1
    for ref in _refs(spec.outputs):
        users[ref] = users.get(ref, 0) + 1
    for node in spec.nodes:
        args = _decode(node.args, env, device)
        kwargs = {k: _decode(v, env, device) for k, v in node.kwargs.items()}
        if not training:
            flag = TRAIN_FLAGS.get(node.target)
            if flag and len(args) > flag[0] and (flag[1] is None or args[flag[1]] is not None):
                args[flag[0]] = False
            # BatchNorm's num_batches_tracked counter only moves in train mode
            if (node.target == "aten.add_.Tensor" and users.get(node.name, 0) == 0
                    and isinstance(node.args[0], dict) and node.args[0].get("ref") in buffer_nodes):
                continue
        env[node.name] = graph.call_function(ALLOWED_OPS[node.target], tuple(args), kwargs)
    outs = [env[o["ref"]] for o in spec.outputs]
    graph.output(outs[0] if len(outs) == 1 else tuple(outs))
    graph.lint()
    return graph


def _refs(values: list[Any]) -> list[str]:
    found: list[str] = []
    for v in values:
        if isinstance(v, list):
            found += _refs(v)
        elif isinstance(v, dict) and "ref" in v:
            found.append(v["ref"])
    return found


class GraphModel(nn.Module):
    """A rebuilt ``fedswarm-graph/1`` model; ``state_dict()`` keys match the user's module.

    Holds the parameters in a module tree named like the original; forward runs one of two
    ``torch.fx.GraphModule`` objects (train / eval) that share those tensors.
    """

    def __init__(self, spec: GraphSpec, tensors: Mapping[str, torch.Tensor], device: torch.device) -> None:
        super().__init__()
        self.spec = spec
        self._device = device
        for t in spec.tensors:
            *path, field = t.name.split(".")
            owner: nn.Module = self
            for part in path:
                child = owner._modules.get(part)
                if child is None:
                    child = nn.Module()
                    owner.add_module(part, child)
                owner = child
            value = tensors[t.name]
            if t.kind == "parameter":
                owner.register_parameter(field, nn.Parameter(value, requires_grad=value.is_floating_point()))
            else:
                owner.register_buffer(field, value)
        self._graphs = {mode: _make_graph(spec, mode, device) for mode in (True, False)}
        self._compiled: dict[bool, torch.fx.GraphModule] = {}
        self._compile()

    def _compile(self) -> None:
        # GraphModule copies references to our Parameter/buffer objects; rebuilt after _apply
        # (``.to()``) because that replaces buffer objects.
        object.__setattr__(self, "_compiled", {
            mode: torch.fx.GraphModule(self, g, class_name="FedswarmGraph") for mode, g in self._graphs.items()
        })

    def _apply(self, fn: Any, recurse: bool = True) -> GraphModel:  # type: ignore[override]
        super()._apply(fn, recurse)
        self._compile()
        return self

    def forward(self, x: torch.Tensor) -> Any:
        return self._compiled[self.training](x)


def build_graph_module(
    graph: GraphSpec | str | bytes | dict[str, Any],
    weights: Mapping[str, np.ndarray | torch.Tensor] | None = None,
    device: str | torch.device = "cpu",
) -> GraphModel:
    """Rebuild a validated graph as a module; ``weights=None`` gives uninitialised tensors.

    With ``device="meta"`` nothing is allocated (used by the budget dry run). Raises
    :class:`GraphRejected` for a bad graph and ``ValueError`` for weights that do not match.
    """
    spec = graph if isinstance(graph, GraphSpec) else parse_graph_spec(graph)
    dev = torch.device(device)
    tensors: dict[str, torch.Tensor] = {}
    for t in spec.tensors:
        dtype = DTYPES[t.dtype]
        if weights is None:
            tensors[t.name] = torch.empty(t.shape, dtype=dtype, device=dev)
            continue
        if t.name not in weights:
            raise ValueError(f"weights lack tensor {t.name!r} declared by the graph")
        w = torch.as_tensor(np.asarray(weights[t.name])) if not isinstance(weights[t.name], torch.Tensor) else weights[t.name]
        if tuple(w.shape) != tuple(t.shape) or w.dtype != dtype:
            raise ValueError(f"weights tensor {t.name!r} is {w.dtype} {tuple(w.shape)}, graph says {t.dtype} {t.shape}")
        tensors[t.name] = w.detach().clone().to(dev)
    extra = set(weights or {}) - {t.name for t in spec.tensors}
    if extra:
        raise ValueError(f"weights hold tensors the graph does not declare: {sorted(extra)[:5]}")
    return GraphModel(spec, tensors, dev)


# ---- export on the submitter's machine -------------------------------------------------------


def _encode(value: Any, where: str) -> Any:
    if isinstance(value, torch.fx.Node):
        return {"ref": value.name}
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        if math.isfinite(value):
            return value
        return {"float": "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")}
    if isinstance(value, list | tuple):
        return [_encode(v, where) for v in value]
    if isinstance(value, torch.dtype) and value in DTYPE_NAMES:
        return {"dtype": DTYPE_NAMES[value]}
    if isinstance(value, torch.memory_format) and value in MEMORY_FORMAT_NAMES:
        return {"memory_format": MEMORY_FORMAT_NAMES[value]}
    if isinstance(value, torch.layout) and value == torch.strided:
        return {"layout": "strided"}
    if isinstance(value, torch.device):
        return {"device": value.type}
    raise ExportError(f"{where}: argument of type {type(value).__name__} cannot be written as a literal")


def export_model(
    module: nn.Module,
    example_inputs: tuple[torch.Tensor, ...],
    training: TrainingSpec | None = None,
    dynamic_batch: bool = True,
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Export ``module`` to ``(graph_json, state_dict)`` (run on the submitter's machine).

    The module is traced in training mode (so the graph carries the train-time batch_norm /
    dropout calls; the trainer flips them for eval) with a dynamic batch dimension. Raises
    :class:`ExportError` naming every op outside the allowlist.
    """
    if len(example_inputs) != 1:
        raise ExportError("exactly one model input is supported")
    was_training = module.training
    module.train()
    try:
        ep = _export(module, example_inputs, dynamic_batch)
    finally:
        module.train(was_training)
    sig = ep.graph_signature
    named = dict(module.named_parameters()) | dict(module.named_buffers())
    kinds = {"PARAMETER": "parameter", "BUFFER": "buffer", "CONSTANT_TENSOR": "buffer"}
    tensors: list[dict[str, Any]] = []
    state: dict[str, np.ndarray] = {}
    inputs: list[dict[str, Any]] = []
    for s in sig.input_specs:
        kind = s.kind.name
        if kind == "USER_INPUT":
            ex = example_inputs[len(inputs)]
            inputs.append({"name": s.arg.name, "shape": list(ex.shape),
                           "dtype": "int64" if ex.dtype == torch.int64 else "float32"})
            continue
        if kind not in kinds:
            raise ExportError(f"input {s.arg.name!r} of kind {kind} is not supported")
        value = named.get(s.target) if kind != "CONSTANT_TENSOR" else ep.constants[s.target]
        if value is None:
            raise ExportError(f"cannot find tensor {s.target!r} in the module")
        name = s.target if kind != "CONSTANT_TENSOR" else f"_constants.{s.target}"
        arr = value.detach().cpu().numpy()
        arr = arr.astype(np.int64) if arr.dtype.kind in "iub" else arr.astype(np.float32)
        state[name] = arr
        tensors.append({"name": name, "node": s.arg.name, "kind": kinds[kind],
                        "shape": list(arr.shape), "dtype": str(arr.dtype)})
    for s in sig.output_specs:
        if s.kind.name != "USER_OUTPUT":
            raise ExportError(f"graph output of kind {s.kind.name} is not supported")
    nodes: list[dict[str, Any]] = []
    unsupported: list[str] = []
    outputs: list[dict[str, Any]] = []
    for n in ep.graph.nodes:
        if n.op == "call_function":
            target = TARGET_NAMES.get(n.target)
            if target is None:
                unsupported.append(str(n.target))
                continue
            nodes.append({"name": n.name, "target": target,
                          "args": _encode(list(n.args), n.name),
                          "kwargs": {k: _encode(v, n.name) for k, v in n.kwargs.items()}})
        elif n.op == "output":
            res = n.args[0]
            outputs = [_encode(r, "output") for r in (res if isinstance(res, list | tuple) else [res])]
        elif n.op != "placeholder":
            unsupported.append(f"{n.op}:{n.target}")
    if unsupported:
        raise ExportError(f"ops outside the fedswarm-graph/1 allowlist: {', '.join(sorted(set(unsupported)))}")
    graph = {"format": GRAPH_FORMAT, "inputs": inputs, "tensors": tensors, "nodes": nodes,
             "outputs": outputs, **(training or TrainingSpec()).model_dump(mode="json")}
    parse_graph_spec(graph)  # what we emit must pass the trainer's own checks
    return graph, state


def _export(module: nn.Module, example_inputs: tuple[torch.Tensor, ...], dynamic_batch: bool) -> Any:
    if dynamic_batch:
        x = example_inputs[0]
        if x.shape[0] < 2:  # export specialises sizes 0/1; trace with 2 rows instead
            x = torch.cat([x, x], 0)
        try:
            return torch.export.export(
                module, (x,), dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=1 << 16)},)
            )
        except Exception as exc:  # noqa: BLE001 - report, then fall back to a static batch
            raise ExportError(f"torch.export with a dynamic batch failed: {str(exc).splitlines()[0]}") from exc
    return torch.export.export(module, example_inputs)
