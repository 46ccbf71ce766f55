"""fedswarm-seq/1 and fedswarm-graph/1: valid models build; hostile ones are refused early."""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import pytest
import torch

from fedswarm.examples.cnn_skip import CnnSkip
from fedswarm.learning.budget import Budget, BudgetExceeded, check_budget
from fedswarm.learning.graph import (
    GraphRejected,
    build_graph_module,
    export_model,
    parse_graph_spec,
)
from fedswarm.learning.spec import (
    SpecError,
    build_seq_module,
    make_loss,
    make_optimizer,
    parse_seq_spec,
)
from fedswarm.learning.train import parse_model_spec

from .engine_helpers import mlp_spec

# ---- seq ---------------------------------------------------------------------------------------


def test_seq_spec_with_every_layer_family_builds_and_runs() -> None:
    spec = parse_seq_spec({
        "format": "fedswarm-seq/1", "input_shape": [3, 8, 8],
        "layers": [
            {"type": "Conv2d", "in_channels": 3, "out_channels": 4, "kernel_size": 3, "padding": 1},
            {"type": "BatchNorm2d", "num_features": 4}, {"type": "GELU"},
            {"type": "Residual", "layers": [
                {"type": "Conv2d", "in_channels": 4, "out_channels": 4, "kernel_size": 3, "padding": 1},
                {"type": "SiLU"}]},
            {"type": "MaxPool2d", "kernel_size": 2}, {"type": "AvgPool2d", "kernel_size": 2},
            {"type": "Flatten"}, {"type": "LayerNorm", "normalized_shape": [16]},
            {"type": "Linear", "in_features": 16, "out_features": 3}, {"type": "Softmax"},
        ],
    })
    out = build_seq_module(spec)(torch.randn(2, 3, 8, 8))
    assert out.shape == (2, 3)
    rnn = parse_seq_spec({
        "format": "fedswarm-seq/1", "input_shape": [5], "input_dtype": "int64",
        "layers": [{"type": "Embedding", "num_embeddings": 20, "embedding_dim": 6},
                   {"type": "LSTM", "input_size": 6, "hidden_size": 7, "bidirectional": True},
                   {"type": "Linear", "in_features": 14, "out_features": 2}],
    })
    assert build_seq_module(rnn)(torch.randint(0, 20, (3, 5))).shape == (3, 2)
    seq = copy.deepcopy(rnn.model_dump())
    seq["layers"][1] = {"type": "GRU", "input_size": 6, "hidden_size": 7, "output": "sequence"}
    seq["layers"][2]["in_features"] = 7
    assert build_seq_module(parse_seq_spec(seq))(torch.randint(0, 20, (3, 5))).shape == (3, 5, 2)
    for name in ("sgd", "adam", "adamw"):
        make_optimizer(parse_seq_spec(mlp_spec(optimizer={"name": name})).optimizer,
                       build_seq_module(spec).parameters(), 0.01)
    assert make_loss("bce_with_logits") is not None


@pytest.mark.parametrize("mutate, match", [
    (lambda s: s["layers"].append({"type": "Exec", "code": "import os"}), "layers"),
    (lambda s: s["layers"][0].update(init="os.system('x')"), "Extra inputs"),
    (lambda s: s.update(__class__="x"), "Extra inputs"),
    (lambda s: s["layers"][0].update(in_features="16; rm -rf /"), "integer"),
    (lambda s: s["layers"][0].update(out_features=-1), "greater than"),
    (lambda s: s["layers"][2].update(p=1.5), "less than"),
    (lambda s: s.update(loss="nll_loss"), "loss"),
    (lambda s: s.update(optimizer={"name": "lbfgs"}), "optimizer"),
    (lambda s: s.update(train={"lr": 100.0}), "lr"),
    (lambda s: s.update(train={"batch_size": 0}), "batch_size"),
    (lambda s: s.update(format="fedswarm-seq/9"), "format"),
])
def test_bad_seq_specs_rejected(mutate: Any, match: str) -> None:
    spec = mlp_spec()
    mutate(spec)
    with pytest.raises(SpecError, match=match):
        parse_model_spec(spec)


def test_budget_rejects_huge_layer_before_allocation() -> None:
    spec = parse_seq_spec({"format": "fedswarm-seq/1", "input_shape": [16384],
                           "layers": [{"type": "Linear", "in_features": 16384, "out_features": 16384}]})
    with pytest.raises(BudgetExceeded, match="268451840 parameters"):
        check_budget(spec, batch_size=32)
    ok = check_budget(parse_seq_spec(mlp_spec()), batch_size=32)
    assert ok.params == 16 * 32 + 32 + 32 * 4 + 4 and ok.flops > 0 and ok.output_shape == [32, 4]


def test_budget_rejects_activation_and_flop_overflow() -> None:
    spec = parse_seq_spec({"format": "fedswarm-seq/1", "input_shape": [1024],
                           "layers": [{"type": "Linear", "in_features": 1024, "out_features": 1024}]})
    with pytest.raises(BudgetExceeded, match="activation"):
        check_budget(spec, 65_536, Budget(max_activation_bytes=64 << 20))
    with pytest.raises(BudgetExceeded, match="FLOPs"):
        check_budget(spec, 4096, Budget(max_flops=10**9))
    broken = parse_seq_spec(mlp_spec(input_shape=[17]))  # 17 features into Linear(16, ...)
    with pytest.raises(SpecError, match="does not run"):
        check_budget(broken, 8)


# ---- graph -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cnn_export() -> tuple[CnnSkip, dict[str, Any], dict[str, np.ndarray]]:
    torch.manual_seed(0)
    model = CnnSkip()
    graph, state = export_model(model, (torch.randn(1, 3, 16, 16),))
    return model, graph, state


def test_cnn_rebuilds_with_bit_identical_eval_output(cnn_export: Any) -> None:
    model, graph, state = cnn_export
    rebuilt = build_graph_module(graph, state)
    assert list(rebuilt.state_dict()) == list(model.state_dict())
    x = torch.randn(5, 3, 16, 16)  # a batch size other than the export's
    model.eval()
    rebuilt.eval()
    with torch.no_grad():
        assert torch.equal(model(x), rebuilt(x))
    model.train()


def test_cnn_trains_with_same_loss_curve_and_weights_load_back(cnn_export: Any) -> None:
    model, graph, state = cnn_export
    original = copy.deepcopy(model)
    rebuilt = build_graph_module(graph, state)
    x, y = torch.randn(8, 3, 16, 16), torch.randint(0, 10, (8,))

    def run(m: torch.nn.Module) -> list[float]:
        torch.manual_seed(7)  # same dropout masks for both
        m.train()
        opt = torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9)
        losses = []
        for _ in range(4):
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(m(x), y)
            loss.backward()
            opt.step()
            losses.append(loss.item())
        return losses

    assert run(original) == run(rebuilt)
    assert all(p.grad is not None for p in rebuilt.parameters())
    fresh = CnnSkip()
    fresh.load_state_dict(rebuilt.state_dict(), strict=True)
    for name, value in original.state_dict().items():
        assert torch.equal(fresh.state_dict()[name], value), name


def test_graph_budget_dry_run(cnn_export: Any) -> None:
    _, graph, _ = cnn_export
    report = check_budget(parse_graph_spec(graph), batch_size=16)
    assert report.output_shape == [16, 10] and report.flops > 0
    with pytest.raises(BudgetExceeded, match="parameters"):
        check_budget(parse_graph_spec(graph), 16, Budget(max_params=100))


def _mutated(graph: dict[str, Any], fn: Any) -> dict[str, Any]:
    g = copy.deepcopy(graph)
    fn(g)
    return g


def _node(g: dict[str, Any], target: str) -> dict[str, Any]:
    return next(n for n in g["nodes"] if n["target"] == target)


@pytest.mark.parametrize("fn, match", [
    (lambda g: _node(g, "aten.relu.default").update(target="builtins.exec"), "'builtins.exec' is not an allowlisted"),
    (lambda g: _node(g, "aten.relu.default").update(target="os.system"), "'os.system' is not an allowlisted"),
    (lambda g: _node(g, "aten.relu.default").update(target="aten.relu.default "), "not an allowlisted"),
    (lambda g: _node(g, "aten.relu.default").update(target="aten.index_put_.default"), "not an allowlisted"),
    (lambda g: _node(g, "aten.relu.default")["args"].__setitem__(0, {"ref": "ghost"}), "unknown or later node 'ghost'"),
    (lambda g: _node(g, "aten.relu.default")["args"].__setitem__(0, {"call": "os.system", "args": ["id"]}), "non-literal"),
    (lambda g: _node(g, "aten.relu.default")["args"].append("__import__('os')"), "not a short identifier"),
    (lambda g: _node(g, "aten.relu.default").update(name="x; import os"), "bad node name"),
    (lambda g: g["tensors"][0].update(name="conv1.__class__.__init__"), "not a dotted identifier"),
    (lambda g: g["tensors"][0].update(name="a.b)\nimport os#"), "not a dotted identifier"),
    (lambda g: g["nodes"][0].update(extra="boom"), "Extra inputs"),
    (lambda g: g.update(pickle="gASV"), "Extra inputs"),
    (lambda g: g["outputs"].__setitem__(0, "linear"), "must be a node reference"),
])
def test_malicious_graphs_rejected_with_report(cnn_export: Any, fn: Any, match: str) -> None:
    _, graph, _ = cnn_export
    with pytest.raises(GraphRejected, match=match):
        parse_graph_spec(_mutated(graph, fn))


def test_rejection_report_names_every_bad_target(cnn_export: Any) -> None:
    _, graph, _ = cnn_export

    def two(g: dict[str, Any]) -> None:
        g["nodes"][0]["target"] = "builtins.exec"
        g["nodes"][-1]["target"] = "os.system"

    with pytest.raises(GraphRejected) as info:
        parse_graph_spec(_mutated(graph, two))
    assert any("builtins.exec" in p for p in info.value.problems)
    assert any("os.system" in p for p in info.value.problems)


def test_repeat_bomb_rejected_by_dry_run(cnn_export: Any) -> None:
    _, graph, _ = cnn_export

    def bomb(g: dict[str, Any]) -> None:
        relu = _node(g, "aten.relu.default")
        g["nodes"].insert(g["nodes"].index(relu) + 1, {
            "name": "bomb", "target": "aten.repeat.default",
            "args": [{"ref": relu["name"]}, [1, 1, 100000, 100000]], "kwargs": {}})

    spec = parse_graph_spec(_mutated(graph, bomb))  # structurally fine ...
    with pytest.raises(BudgetExceeded, match="repeat"):  # ... but stopped on the meta device
        check_budget(spec, batch_size=2)


def test_export_reports_ops_outside_allowlist() -> None:
    from fedswarm.learning.graph import ExportError

    class Odd(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.cumsum(x, 1)

    with pytest.raises(ExportError, match="cumsum"):
        export_model(Odd(), (torch.randn(2, 3),))
