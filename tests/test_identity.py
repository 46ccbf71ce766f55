"""Keys are created once, reused, private, and give a stable peer id."""

from __future__ import annotations

import json
import stat
import subprocess
import sys

from fedswarm.identity import BOX_KEY_FILE, NODE_KEY_FILE, WALLET_KEY_FILE, load_identity


def test_keys_created_once_reused_and_private(tmp_path):
    # Execute
    first = load_identity(tmp_path / "n")
    files = {name: (tmp_path / "n" / name).read_bytes() for name in (NODE_KEY_FILE, WALLET_KEY_FILE, BOX_KEY_FILE)}
    second = load_identity(tmp_path / "n")

    # Assert
    assert first.peer_id == second.peer_id and first.peer_id.startswith("12D3KooW")
    assert first.address == second.address and first.box_public_hex == second.box_public_hex
    for name, data in files.items():
        path = tmp_path / "n" / name
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert path.read_bytes() == data
    assert first.wallet.key.hex() not in repr(first) and bytes(first.box_key).hex() not in repr(first)
    other = load_identity(tmp_path / "m")
    assert other.peer_id != first.peer_id


def test_keys_show_cli(tmp_path):
    out = subprocess.run([sys.executable, "-m", "fedswarm.cli", "keys", "show", "--home", str(tmp_path / "k"), "--json"],
                         capture_output=True, text=True, check=True)
    shown = json.loads(out.stdout)
    ident = load_identity(tmp_path / "k")
    assert shown == {"peer_id": ident.peer_id, "address": ident.address, "box_public": ident.box_public_hex,
                     "home": str(ident.home)}
    assert ident.wallet.key.hex() not in out.stdout + out.stderr
