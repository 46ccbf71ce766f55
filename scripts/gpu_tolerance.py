#!/usr/bin/env python3
"""Print how far units trained on this machine's GPU (and CPU proxies of GPU arithmetic) land
from the client's CPU re-execution, against the review's bounds; exit 1 if any falls outside.

    .venv/bin/python scripts/gpu_tolerance.py --device cuda          # on a GPU machine
    .venv/bin/python scripts/gpu_tolerance.py --device cpu --quick   # proxies only

See fedswarm.bench.tolerance and docs/ARCHITECTURE.md (re-execution across devices).
"""

import sys

from fedswarm.bench.tolerance import main

if __name__ == "__main__":
    sys.exit(main())
