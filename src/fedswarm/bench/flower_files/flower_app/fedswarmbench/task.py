"""Model, data and training loop shared by the ServerApp and the ClientApp.

Same workload as ``fedswarm bench job``: MLP 64-H-H-10, Gaussian inputs labelled by a fixed random
teacher, ``samples`` per client (80/20 split), 1 epoch, batch 64, SGD lr 0.05 momentum 0.9, one
torch thread.
"""

from __future__ import annotations

import os
import time

import numpy as np
import torch
from torch import nn

torch.set_num_threads(1)


def setting(context_config: dict, key: str, default: str) -> str:
    """A run-config value, else the FEDSWARM_BENCH_<KEY> environment variable (simulation)."""
    if key in context_config and str(context_config[key]) != "":
        return str(context_config[key])
    return os.environ.get("FEDSWARM_BENCH_" + key.upper().replace("-", "_"), default)


def make_model(hidden: int) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                         nn.Linear(hidden, 10))


def make_data(partition: int, samples: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    teacher = np.random.default_rng(1234).normal(size=(64, 10))
    rng = np.random.default_rng(100 + partition)
    x = rng.normal(size=(samples, 64)).astype(np.float32)
    y = (x @ teacher).argmax(axis=1)
    n_train = int(0.8 * samples)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y).long()
    return xt[:n_train], yt[:n_train], xt[n_train:], yt[n_train:]


def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, lr: float = 0.05, batch: int = 64,
          epochs: int = 1) -> float:
    """Plain SGD loop; returns the mean training loss."""
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    total, n = 0.0, 0
    g = torch.Generator().manual_seed(1)
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=g)
        for i in range(0, len(x), batch):
            idx = perm[i:i + batch]
            opt.zero_grad()
            loss = loss_fn(model(x[idx]), y[idx])
            loss.backward()
            opt.step()
            total += float(loss) * len(idx)
            n += len(idx)
    return total / max(n, 1)


def now() -> float:
    return time.time()
