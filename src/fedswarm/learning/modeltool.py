"""Model work the client node does in a child process, so torch never enters its event loop.

Importing torch costs hundreds of MB and seconds of GIL-heavy work: a node that imported it
would stall its RPC handlers (bids time out) and carry the memory for its whole life.

- ``python -m fedswarm.learning.modeltool check SPEC.json BATCH`` prints one JSON line
  ``{"params": N, "input_shape": [...], "format": "..."}`` or ``{"error": "one line"}``;
- ``python -m fedswarm.learning.modeltool init SPEC.json SEED OUT.safetensors`` writes the
  seeded initial weights of a seq model.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def check(spec_path: Path, batch_size: int) -> dict[str, object]:
    from fedswarm.learning.budget import BudgetExceeded, check_budget
    from fedswarm.learning.spec import SpecError
    from fedswarm.learning.train import parse_model_spec

    try:
        spec = parse_model_spec(json.loads(spec_path.read_text()))
        report = check_budget(spec, batch_size)
    except (SpecError, BudgetExceeded, ValueError) as exc:
        return {"error": str(exc).splitlines()[0] if str(exc) else type(exc).__name__}
    return {"params": int(report.params), "input_shape": list(getattr(spec, "input_shape", []) or []),
            "format": getattr(spec, "format", "")}


def init(spec_path: Path, seed: int, out: Path) -> None:
    from fedswarm.learning.train import initial_state, parse_model_spec
    from fedswarm.learning.weights import save_weights_file

    save_weights_file(out, initial_state(parse_model_spec(json.loads(spec_path.read_text())), seed))


def main(argv: list[str]) -> int:
    if len(argv) == 3 and argv[0] == "check":
        print(json.dumps(check(Path(argv[1]), int(argv[2]))))
        return 0
    if len(argv) == 4 and argv[0] == "init":
        init(Path(argv[1]), int(argv[2]), Path(argv[3]))
        return 0
    print("usage: python -m fedswarm.learning.modeltool check SPEC BATCH | init SPEC SEED OUT", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
