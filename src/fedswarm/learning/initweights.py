"""Write a seq model's seeded initial weights to a safetensors file, in a process of its own.

The client node calls this as ``python -m fedswarm.learning.initweights SPEC.json SEED OUT``
so that importing torch (hundreds of MB, seconds of GIL-heavy work) never stalls its event loop.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(argv: list[str]) -> int:
    from fedswarm.learning.train import initial_state, parse_model_spec
    from fedswarm.learning.weights import save_weights_file

    spec_path, seed, out = Path(argv[0]), int(argv[1]), Path(argv[2])
    save_weights_file(out, initial_state(parse_model_spec(json.loads(spec_path.read_text())), seed))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
