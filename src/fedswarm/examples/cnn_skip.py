"""A small CNN with BatchNorm and a skip connection: the `fedswarm-graph/1` export demo.

    fedswarm model export fedswarm.examples.cnn_skip:CnnSkip --input-shape 1,3,32,32 -o /tmp/cnn
"""

from __future__ import annotations

import torch
from torch import nn


class CnnSkip(nn.Module):
    """conv-bn-relu, a residual conv-bn block, pooling, dropout and a linear head."""

    def __init__(self, num_classes: int = 10, width: int = 8) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(width)
        self.drop = nn.Dropout(0.1)
        self.head = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.bn1(self.conv1(x)))
        h = torch.relu(h + self.bn2(self.conv2(h)))  # the skip connection
        h = nn.functional.adaptive_avg_pool2d(h, 1).flatten(1)
        return self.head(self.drop(h))
