"""Run the bench Flower app in Flower's simulation engine (Ray), with the Flower virtualenv.

Usage: python flower_sim.py APP_DIR  (settings come from FEDSWARM_BENCH_* environment variables,
which the ServerApp and the Ray-hosted ClientApps read; see fedswarmbench/task.py).
"""

import os
import sys

sys.path.insert(0, sys.argv[1])
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

from fedswarmbench.client_app import app as client_app  # noqa: E402
from fedswarmbench.server_app import app as server_app  # noqa: E402
from flwr.simulation import run_simulation  # noqa: E402

# One CPU per virtual client (must be an integer); Ray on 127.0.0.1 only.
backend_config = {"client_resources": {"num_cpus": 1, "num_gpus": 0.0},
                  "init_args": {"include_dashboard": False, "_node_ip_address": "127.0.0.1"}}
run_simulation(server_app=server_app, client_app=client_app, num_supernodes=4, backend_config=backend_config)
