"""`fedswarm job fetch --wallet-key`: the CLI signs in with the wallet and opens the result
through the same WalletUser the demo's end-to-end run exercises (here with a recording
stand-in: no network)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from fedswarm.cli import build_parser


def test_fetch_with_wallet_key_signs_in_and_fetches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    import fedswarm.demo.wallet_user as wu

    calls: list[Any] = []

    class Recorder:
        def __init__(self, base: str, key: str) -> None:
            calls.append(("init", base, key))

        def sign_in(self) -> str:
            calls.append("sign_in")
            return "t"

        def fetch_result(self, job_id: str, output: Path) -> dict[str, Any]:
            calls.append(("fetch", job_id, output))
            return {"path": str(output), "sha256": "ab" * 32}

    monkeypatch.setattr(wu, "WalletUser", Recorder)
    out = tmp_path / "m.safetensors"
    args = build_parser().parse_args(["job", "fetch", "job-1", "-o", str(out), "--api", "http://127.0.0.1:9/",
                                      "--wallet-key", " 0x" + "11" * 32 + "\n"])
    assert args.func(args) == 0
    assert calls == [("init", "http://127.0.0.1:9", "0x" + "11" * 32), "sign_in", ("fetch", "job-1", out)]
    assert "wallet-derived key" in capsys.readouterr().out
