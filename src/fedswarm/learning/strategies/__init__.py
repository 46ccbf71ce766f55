"""Aggregation strategies over flat float32 parameter vectors.

Build one by name with :func:`make_strategy`; :func:`list_strategies` describes them for the CLI
and the web UI. The package is split by family: the :class:`Strategy` interface, its shared
blocked iteration and the plain averages in :mod:`.base`, the server optimisers (FedAvgM, FedAdam,
FedYogi) in :mod:`.server`, the robust strategies (clipping, median, trimmed mean, Krum) in
:mod:`.robust`, and the by-name registry in :mod:`.registry`.
"""

from fedswarm.learning.strategies.base import AggregationResult, FedAvg, FedProx, Strategy
from fedswarm.learning.strategies.registry import StrategyInfo, list_strategies, make_strategy
from fedswarm.learning.strategies.robust import (
    ClippedFedAvg,
    Krum,
    Median,
    MultiKrum,
    TrimmedMean,
)
from fedswarm.learning.strategies.server import FedAdam, FedAvgM, FedYogi

__all__ = [
    "AggregationResult",
    "ClippedFedAvg",
    "FedAdam",
    "FedAvg",
    "FedAvgM",
    "FedProx",
    "FedYogi",
    "Krum",
    "Median",
    "MultiKrum",
    "Strategy",
    "StrategyInfo",
    "TrimmedMean",
    "list_strategies",
    "make_strategy",
]
