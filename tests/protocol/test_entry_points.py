"""The recursion limit stays sane in every entry point (py_ecc raises it to 100,000 on import,
which turns deeply nested JSON into a C-stack overflow instead of an error)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from fedswarm.logs import SANE_RECURSION_LIMIT

# What each entry point imports, then what it imports lazily later (the eth stack: web3 and
# eth_account, through the ledger), then the recursion limit it runs with.
PROBE = """
import importlib, sys
importlib.import_module({module!r})
{setup}
import fedswarm.ledger.audit, web3, eth_account, libp2p
print(sys.getrecursionlimit())
"""


def _limit_after(module: str, setup: str = "") -> int:
    code = PROBE.format(module=module, setup=setup)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return int(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("module, setup", [
    ("fedswarm.cli", "from fedswarm.logs import setup_logging; setup_logging()"),  # CLI main's first step
    ("fedswarm.api.runtime", ""),  # the node runtime (imports the node's identity)
    ("fedswarm.testing.node", ""),  # the node with faults, for tests
    ("fedswarm.identity", ""),  # any library user holding keys
])
def test_recursion_limit_is_sane_after_the_eth_stack(module: str, setup: str) -> None:
    assert _limit_after(module, setup) <= SANE_RECURSION_LIMIT


def test_training_worker_never_loads_py_ecc() -> None:
    code = ("import sys, fedswarm.learning.worker\n"
            "print('py_ecc' in sys.modules, sys.getrecursionlimit())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["False", str(SANE_RECURSION_LIMIT)]


def test_cli_refuses_deep_json_with_one_line(tmp_path: Path) -> None:
    deep = tmp_path / "page.json"
    deep.write_bytes(b"[" * 100_000)
    out = subprocess.run([sys.executable, "-m", "fedswarm.cli", "audit", "verify", str(deep)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2, (out.returncode, out.stderr[-2000:])  # not -11 (SIGSEGV)
    assert "nests deeper than 32" in out.stderr and len(out.stderr.strip().splitlines()) == 1
