"""The preprocessing a client fits on its whole dataset and ships with the job.

It is part of the wire format (the job announcement's spec and the signed manifest carry it),
so it lives in the protocol layer; ingestion and training apply it (``learning``).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator


class Preprocessing(BaseModel):
    """What the client learned from the whole dataset; applied identically everywhere."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    task: Literal["classification", "regression"]
    features: list[str] = Field(min_length=1, max_length=100_000)
    label: str
    classes: list[str] | None = None  # classification: index -> original label text
    mean: list[float]
    std: list[float]

    @model_validator(mode="after")
    def _check(self) -> Preprocessing:
        n = len(self.features)
        if len(self.mean) != n or len(self.std) != n:
            raise ValueError("mean/std must have one entry per feature")
        if self.task == "classification" and not self.classes:
            raise ValueError("a classification task needs its class list")
        if any(s <= 0 or not np.isfinite(s) for s in self.std):
            raise ValueError("std entries must be finite and > 0")
        return self

    @property
    def num_features(self) -> int:
        return len(self.features)

    @property
    def num_classes(self) -> int:
        return len(self.classes or [])

    def apply(self, x: np.ndarray) -> np.ndarray:
        """Standardise raw features ``x`` (float32 ``[rows, features]``)."""
        mean = np.asarray(self.mean, dtype=np.float32)
        std = np.asarray(self.std, dtype=np.float32)
        return ((x - mean) / std).astype(np.float32, copy=False)
