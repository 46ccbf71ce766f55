"""ClientApp: one local epoch (or nothing in noop mode), reporting its own compute time."""

from __future__ import annotations

import time

from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedswarmbench.task import make_data, make_model, setting, train

app = ClientApp()


@app.train()
def train_fn(msg: Message, context: Context) -> Message:
    t0 = time.perf_counter()
    cfg = dict(context.run_config)
    mode = setting(cfg, "mode", "train")
    hidden = int(setting(cfg, "hidden", "256"))
    samples = int(setting(cfg, "samples", "5000"))
    partition = int(context.node_config.get("partition-id", 0))
    model = make_model(hidden)
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    x, y, _, _ = make_data(partition, samples)
    loss = train(model, x, y) if mode == "train" else 0.0
    compute = time.perf_counter() - t0
    content = RecordDict({
        "arrays": ArrayRecord(model.state_dict()),
        "metrics": MetricRecord({"train_loss": loss, "num-examples": len(x), "compute_s": compute}),
    })
    return Message(content=content, reply_to=msg)
