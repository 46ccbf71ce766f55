"""Where the project's non-Python tools live (installed by `make tools` into `.tools/`)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
TOOLS_DIR = Path(os.environ.get("FEDSWARM_TOOLS", REPO_ROOT / ".tools"))

# name -> path of the executable inside TOOLS_DIR (npm packages keep their own layout)
_KNOWN = {
    "anvil": "node_modules/@foundry-rs/anvil-linux-amd64/bin/anvil",
    "solcjs": "node_modules/solc/solc.js",
}


class ToolMissing(RuntimeError):
    """A required external tool is not installed."""


def tool_path(name: str) -> Path:
    """Absolute path of tool ``name``: ``.tools/`` first, then ``PATH``; a clear error if absent."""
    rel = _KNOWN.get(name)
    if rel:
        p = TOOLS_DIR / rel
        if p.exists():
            return p
    found = shutil.which(name)
    if found:
        return Path(found)
    raise ToolMissing(f"{name} is not installed: run `make tools` (installs it into {TOOLS_DIR})")
