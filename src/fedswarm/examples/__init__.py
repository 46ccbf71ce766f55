"""Model specs shipped with the package (``breast_cancer``, ``digits``, the benchmark MLPs) and a
small CNN for `fedswarm model export fedswarm.examples.cnn_skip:CnnSkip`.

They are package data, read through :mod:`importlib.resources`, so an installed fedswarm finds
them as well as a checkout does. This module imports nothing from fedswarm.
"""

from __future__ import annotations

import json
from importlib.resources import files
from importlib.resources.abc import Traversable
from typing import Any

SPEC_SUFFIX = ".seq.json"


def example_specs() -> dict[str, Traversable]:
    """Bundled model specs by name (``breast_cancer``, ``digits``...), sorted by name."""
    root = files(__name__)
    found = {p.name.removesuffix(SPEC_SUFFIX): p for p in root.iterdir() if p.name.endswith(SPEC_SUFFIX)}
    return dict(sorted(found.items()))


def example_spec(name: str) -> dict[str, Any]:
    """The parsed spec of bundled example ``name``; KeyError (listing the names) if unknown."""
    specs = example_specs()
    if name not in specs:
        raise KeyError(f"no bundled example {name!r}; known: {', '.join(specs)}")
    return json.loads(specs[name].read_text(encoding="utf-8"))
