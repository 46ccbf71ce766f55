"""The shipped example specs reach their accuracy in a few federated rounds; the CLI works."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.datasets import load_breast_cancer, load_digits
from sklearn.model_selection import train_test_split

from fedswarm.cli import main as cli_main
from fedswarm.learning.strategies import make_strategy
from fedswarm.learning.train import (
    evaluate,
    initial_state,
    parse_model_spec,
    set_determinism,
    train,
)
from fedswarm.learning.weights import flatten_state, unflatten_state

EXAMPLES = Path(__file__).resolve().parents[2] / "src" / "fedswarm" / "examples"


@pytest.mark.parametrize("name, loader, goal", [
    ("breast_cancer", load_breast_cancer, 0.95),
    ("digits", load_digits, 0.93),
])
def test_example_reaches_accuracy_in_few_rounds(name: str, loader: object, goal: float) -> None:
    set_determinism(1)
    spec = parse_model_spec((EXAMPLES / f"{name}.seq.json").read_text())
    x, y = loader(return_X_y=True)  # type: ignore[operator]
    x_tr, x_va, y_tr, y_va = train_test_split(x, y, test_size=0.2, random_state=0, stratify=y)
    mean, std = x_tr.mean(0), np.where(x_tr.std(0) > 0, x_tr.std(0), 1.0)

    def prep(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(((a - mean) / std).astype(np.float32))

    clients = np.array_split(np.random.default_rng(0).permutation(len(x_tr)), 4)
    state = initial_state(spec, seed=0)
    vec, layout = flatten_state(state)
    fedavg = make_strategy("fedavg")
    for rnd in range(5):
        updates, sizes = [], []
        for i, idx in enumerate(clients):
            out = train(spec, state, prep(x_tr[idx]), torch.from_numpy(y_tr[idx]),
                        epochs=spec.train.epochs, batch_size=spec.train.batch_size,
                        lr=spec.train.lr, seed=rnd * 10 + i)
            updates.append(flatten_state(out.state)[0])
            sizes.append(out.num_samples)
        vec = fedavg.aggregate(vec, updates, sizes)
        state = unflatten_state(vec, layout)
    acc = evaluate(spec, state, prep(x_va), torch.from_numpy(y_va))["accuracy"]
    assert acc >= goal, f"{name}: {acc:.3f} < {goal}"


def test_cli_export_and_check(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cnn"
    rc = cli_main(["model", "export", f"{EXAMPLES}/cnn_skip.py:CnnSkip", "--input-shape", "1,3,16,16", "-o", str(out)])
    assert rc == 0 and (out / "weights.safetensors").is_file()
    capsys.readouterr()
    assert cli_main(["model", "check", "--json", str(out / "model.graph.json")]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] and report["output_shape"] == [32, 10]
    graph = json.loads((out / "model.graph.json").read_text())
    graph["nodes"][0]["target"] = "builtins.exec"
    (out / "evil.json").write_text(json.dumps(graph))
    assert cli_main(["model", "check", str(out / "evil.json")]) == 1
    assert "builtins.exec" in capsys.readouterr().err
    for spec in ("mlp_bench", "mlp_bench_wide", "breast_cancer", "digits"):
        assert cli_main(["model", "check", str(EXAMPLES / f"{spec}.seq.json")]) == 0
