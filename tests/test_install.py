"""The package stands alone: a non-editable install, run from outside the checkout, finds its
bundled examples and does not take the checkout for its home."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from fedswarm import tools

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``pip install --target`` of this checkout (no dependencies: the venv has them).

    It builds from a copy of what a source distribution holds, so the checkout gets no build/
    folder (whose stale files would end up in later builds) and nothing outside it is used."""
    target = tmp_path_factory.mktemp("site")
    source = tmp_path_factory.mktemp("source")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    shutil.copytree(REPO / "src", source / "src",
                    ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    out = subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
         "--target", str(target), str(source)],
        capture_output=True, text=True, timeout=600, cwd=source,
        env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"},
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return target


def _run(installed: Path, cwd: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    # PYTHONPATH puts the install ahead of site-packages and of the editable install's path
    # entry; FEDSWARM_* variables of the caller must not leak in.
    env = {k: v for k, v in os.environ.items() if not k.startswith("FEDSWARM_")}
    env.update(PYTHONPATH=str(installed), HOME=str(cwd))
    return subprocess.run([sys.executable, *argv], capture_output=True, text=True, timeout=120,
                          cwd=cwd, env=env)


@pytest.mark.slow
def test_installed_package_checks_a_bundled_example(installed: Path, tmp_path: Path) -> None:
    probe = _run(installed, tmp_path, "-c",
                 "import json, fedswarm, fedswarm.tools as t, fedswarm.examples as e;"
                 "print(json.dumps([fedswarm.__file__, t.REPO_ROOT and str(t.REPO_ROOT),"
                 " str(t.tools_dir()), sorted(e.example_specs())]))")
    assert probe.returncode == 0, probe.stderr
    where, repo_root, tools_dir, examples = json.loads(probe.stdout)
    assert Path(where).resolve().is_relative_to(installed.resolve()), where  # not the checkout
    assert repo_root is None
    assert tools_dir == str(tmp_path / ".fedswarm" / "tools")
    assert {"breast_cancer", "digits", "mlp_bench"} <= set(examples)

    out = _run(installed, tmp_path, "-m", "fedswarm.cli", "model", "check", "breast_cancer", "--json")
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["ok"] and report["format"] == "fedswarm-seq/1" and report["params"] > 0


def test_tools_dir_is_configurable(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("FEDSWARM_TOOLS_DIR", str(tmp_path))
    assert tools.tools_dir() == tmp_path
    fake = tmp_path / "node_modules/@foundry-rs/anvil-linux-amd64/bin/anvil"
    fake.parent.mkdir(parents=True)
    fake.write_text("")
    assert tools.tool_path("anvil") == fake
    monkeypatch.delenv("FEDSWARM_TOOLS_DIR")
    assert tools.tools_dir() == REPO / ".tools"  # a checkout: make tools installs there


def test_missing_tool_says_where_it_looked(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("FEDSWARM_TOOLS_DIR", str(tmp_path))
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(tools.ToolMissing, match=str(tmp_path)):
        tools.tool_path("anvil")
