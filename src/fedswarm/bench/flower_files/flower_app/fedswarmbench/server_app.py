"""ServerApp: Flower's FedAvg, timestamped per round into a JSON-lines file for the driver."""

from __future__ import annotations

import json
import time
from collections.abc import Iterable

from flwr.app import ArrayRecord, Context, Message
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

from fedswarmbench.task import make_model, setting

app = ServerApp()


class TimedFedAvg(FedAvg):
    """FedAvg that records when each round was configured and aggregated."""

    def __init__(self, out_file: str, **kwargs) -> None:
        super().__init__(**kwargs)
        self.out_file = out_file
        self.started: dict[int, float] = {}

    def _emit(self, record: dict) -> None:
        if self.out_file:
            with open(self.out_file, "a") as fh:
                fh.write(json.dumps(record) + "\n")

    def configure_train(self, server_round: int, arrays: ArrayRecord, config, grid: Grid) -> Iterable[Message]:
        self.started[server_round] = time.time()
        return super().configure_train(server_round, arrays, config, grid)

    def aggregate_train(self, server_round: int, replies: Iterable[Message]):
        replies = list(replies)
        computes = [float(m.content["metrics"]["compute_s"]) for m in replies if m.has_content()]
        out = super().aggregate_train(server_round, replies)
        end = time.time()
        self._emit({"round": server_round, "start": self.started.get(server_round), "end": end,
                    "replies": len(computes), "slowest_client_s": max(computes) if computes else None})
        return out


@app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = dict(context.run_config)
    out_file = setting(cfg, "out-file", "")
    rounds = int(setting(cfg, "num-server-rounds", "5"))
    hidden = int(setting(cfg, "hidden", "256"))
    strategy = TimedFedAvg(out_file, fraction_train=1.0, fraction_evaluate=0.0, min_train_nodes=4,
                           min_available_nodes=4)
    strategy._emit({"event": "serverapp_start", "t": time.time()})
    strategy.start(grid=grid, initial_arrays=ArrayRecord(make_model(hidden).state_dict()), num_rounds=rounds)
    strategy._emit({"event": "done", "t": time.time()})
