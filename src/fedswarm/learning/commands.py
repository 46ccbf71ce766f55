"""`fedswarm model export|check`: turn a PyTorch class into a fedswarm-graph/1, check a spec.

``export`` runs on the submitter's own machine, so importing their module is fine there; the
trainer only ever receives the JSON graph and the safetensors weights.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import sys
from pathlib import Path
from typing import Any


def register(subparsers: Any) -> None:
    """Add ``fedswarm model ...`` to the CLI."""
    model = subparsers.add_parser("model", help="export or check a model for a job")
    sub = model.add_subparsers(dest="model_command", metavar="ACTION")
    exp = sub.add_parser("export", help="export MODULE:CLASS (or FILE.py:CLASS) to fedswarm-graph/1")
    exp.add_argument("target", help="python module or file, a colon, and the nn.Module class name")
    exp.add_argument("--input-shape", required=True, help="example input shape, e.g. 1,3,32,32")
    exp.add_argument("--input-dtype", choices=["float32", "int64"], default="float32")
    exp.add_argument("--loss", choices=["cross_entropy", "mse", "bce_with_logits"], default="cross_entropy")
    exp.add_argument("--task", choices=["classification", "regression"], default="classification")
    exp.add_argument("--weights", help="a .safetensors state dict to load into the class first")
    exp.add_argument("-o", "--out", required=True, help="output directory")
    exp.set_defaults(func=cmd_export)
    chk = sub.add_parser("check", help="validate a model spec and report its budget")
    chk.add_argument("spec", help="a fedswarm-seq/1 or fedswarm-graph/1 JSON file, or a bundled example name (breast_cancer, digits)")
    chk.add_argument("--batch-size", type=int, default=None, help="default: the spec's own")
    chk.add_argument("--json", action="store_true", help="print one JSON object")
    chk.set_defaults(func=cmd_check)
    model.set_defaults(func=lambda args: (model.print_help(), 2)[1])


def _load_class(target: str) -> Any:
    if ":" not in target:
        raise ValueError(f"expected MODULE:CLASS or FILE.py:CLASS, got {target!r}")
    where, name = target.rsplit(":", 1)
    if where.endswith(".py"):
        path = Path(where).resolve()
        spec = importlib.util.spec_from_file_location(path.stem, path)
        if spec is None or spec.loader is None:
            raise ValueError(f"cannot import {where}")
        module = importlib.util.module_from_spec(spec)
        sys.modules[path.stem] = module
        spec.loader.exec_module(module)
    else:
        sys.path.insert(0, str(Path.cwd()))
        module = importlib.import_module(where)
    cls = vars(module).get(name)
    if cls is None:
        raise ValueError(f"{where} has no attribute {name!r}")
    return cls


def cmd_export(args: argparse.Namespace) -> int:
    """Export the user's model class; writes model.graph.json and weights.safetensors."""
    import torch

    from fedswarm.learning.graph import ExportError, export_model
    from fedswarm.learning.spec import TrainingSpec
    from fedswarm.learning.weights import WeightsError, load_weights_file, save_weights_file

    try:
        shape = [int(s) for s in args.input_shape.split(",")]
        model = _load_class(args.target)()
        if args.weights:
            state = load_weights_file(args.weights)
            model.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()})
        dtype = torch.int64 if args.input_dtype == "int64" else torch.float32
        example = torch.zeros(shape, dtype=dtype) if dtype == torch.int64 else torch.randn(shape)
        loss = "mse" if args.task == "regression" and args.loss == "cross_entropy" else args.loss
        graph, state = export_model(model, (example,), TrainingSpec(task=args.task, loss=loss))
    except (ValueError, ExportError, WeightsError, ImportError) as exc:
        print(f"fedswarm model export: {exc}", file=sys.stderr)
        return 1
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "model.graph.json").write_text(json.dumps(graph, indent=1))
    save_weights_file(out / "weights.safetensors", state)
    params = sum(v.size for v in state.values())
    print(f"exported {len(graph['nodes'])} ops, {params} parameters to {out}/model.graph.json "
          f"+ {out}/weights.safetensors")
    return 0


def _spec_bytes(spec: str) -> bytes:
    """The file ``spec``, or the bundled example of that name when no such file exists."""
    from fedswarm.examples import example_specs

    path = Path(spec)
    bundled = example_specs().get(spec)
    if bundled is not None and not path.exists():
        return bundled.read_bytes()
    return path.read_bytes()


def cmd_check(args: argparse.Namespace) -> int:
    """Validate a spec file and run the meta-device budget dry run."""
    from fedswarm.learning.budget import check_budget
    from fedswarm.learning.spec import SpecError
    from fedswarm.learning.train import parse_model_spec

    try:
        spec = parse_model_spec(_spec_bytes(args.spec))
        report = check_budget(spec, args.batch_size or spec.train.batch_size)
    except (OSError, SpecError) as exc:
        print(f"fedswarm model check: {exc}", file=sys.stderr)
        return 1
    result = {"format": spec.format, "ok": True, **report.model_dump()}
    if args.json:
        print(json.dumps(result))
    else:
        for k, v in result.items():
            print(f"{k:>17}: {v}")
    return 0
