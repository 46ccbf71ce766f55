"""Aggregation strategies (see :mod:`fedswarm.learning.strategies.base`)."""

from fedswarm.learning.strategies.base import (
    AggregationResult,
    ClippedFedAvg,
    FedAdam,
    FedAvg,
    FedAvgM,
    FedProx,
    FedYogi,
    Krum,
    Median,
    MultiKrum,
    Strategy,
    StrategyInfo,
    TrimmedMean,
    _sorting_network,
    list_strategies,
    make_strategy,
)

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
    "_sorting_network",
    "list_strategies",
    "make_strategy",
]
