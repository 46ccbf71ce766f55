"""Run the bench Flower app in Flower's simulation engine (Ray), with the Flower virtualenv.

Usage: python flower_sim.py APP_DIR  (settings come from FEDSWARM_BENCH_* environment variables,
which the ServerApp and the Ray-hosted ClientApps read; see flower_app/fedswarmbench/task.py).

A script for the Flower virtualenv (``fedswarm bench all`` runs it by path); fedswarm's own
environment has no flwr and never imports it.
"""

import os
import sys


def main(app_dir: str) -> None:
    """Run the app under ``app_dir`` with 4 virtual clients, one CPU each, Ray on 127.0.0.1."""
    sys.path.insert(0, app_dir)
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

    from fedswarmbench.client_app import app as client_app
    from fedswarmbench.server_app import app as server_app
    from flwr.simulation import run_simulation

    # One CPU per virtual client (must be an integer); Ray on 127.0.0.1 only.
    backend_config = {"client_resources": {"num_cpus": 1, "num_gpus": 0.0},
                      "init_args": {"include_dashboard": False, "_node_ip_address": "127.0.0.1"}}
    run_simulation(server_app=server_app, client_app=client_app, num_supernodes=4,
                   backend_config=backend_config)


if __name__ == "__main__":
    main(sys.argv[1])
