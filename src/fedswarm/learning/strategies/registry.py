"""Strategies by name: :func:`make_strategy` builds one, :func:`list_strategies` describes them
all (for the CLI and the web UI)."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fedswarm.learning.strategies.base import FedAvg, FedProx, Strategy
from fedswarm.learning.strategies.robust import (
    ClippedFedAvg,
    Krum,
    Median,
    MultiKrum,
    TrimmedMean,
)
from fedswarm.learning.strategies.server import FedAdam, FedAvgM, FedYogi

_REGISTRY: dict[str, type[Strategy]] = {
    cls.name: cls
    for cls in (
        FedAvg, FedProx, FedAvgM, FedAdam, FedYogi, ClippedFedAvg,
        Median, TrimmedMean, Krum, MultiKrum,
    )
}


@dataclass(frozen=True)
class StrategyInfo:
    """What the CLI and UI show about a strategy: its name, summary and parameters."""

    name: str
    summary: str
    params: dict[str, Any]
    robust: bool
    stateful: bool

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {
            "name": self.name,
            "summary": self.summary,
            "params": dict(self.params),
            "robust": self.robust,
            "stateful": self.stateful,
        }


def _params_of(cls: type[Strategy]) -> dict[str, Any]:
    sig = inspect.signature(cls.__init__)
    return {
        p.name: p.default
        for p in sig.parameters.values()
        if p.name != "self" and p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD
    }


def list_strategies() -> list[StrategyInfo]:
    """All strategies :func:`make_strategy` knows, with their parameters and defaults."""
    infos = []
    for name, cls in _REGISTRY.items():
        doc = inspect.getdoc(cls) or ""
        summary = " ".join(doc.split("\n\n")[0].split())
        infos.append(StrategyInfo(name, summary, _params_of(cls), cls.robust, cls.stateful))
    return infos


def make_strategy(name: str, **params: Any) -> Strategy:
    """Build the strategy called ``name`` (see :func:`list_strategies`) with ``params``.

    Raises ``ValueError`` with a one-line message for an unknown name, an unknown parameter or
    an out-of-range value.
    """
    cls = _REGISTRY.get(name.strip().lower()) if isinstance(name, str) else None
    if cls is None:
        raise ValueError(f"unknown strategy {name!r}; choose one of: {', '.join(_REGISTRY)}")
    allowed = _params_of(cls)
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        known = ", ".join(allowed) or "none"
        raise ValueError(f"strategy {cls.name!r} has no parameter {unknown[0]!r}; it takes: {known}")
    factory: Callable[..., Strategy] = cls
    return factory(**params)
