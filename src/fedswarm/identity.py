"""A node's three keys, created on first start and kept 0600 under its home directory.

- node key: Ed25519 in libp2p's protobuf format (peer id ``12D3KooW...``), signs gossip and
  authenticates Noise channels;
- wallet key: secp256k1 (eth-account), signs ledger transactions and binds the peer id;
- box key: X25519 (PyNaCl), receives sealed chunk keys and encrypted results.

Key material is never logged; ``Identity.__repr__`` shows public parts only.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from eth_account import Account
from eth_account.signers.local import LocalAccount
from nacl.public import PrivateKey as BoxPrivateKey
from nacl.public import PublicKey as BoxPublicKey

from fedswarm.logs import pin_recursion_limit

# py_ecc (imported by eth_account just above) raised the recursion limit to 100,000: put it back
# (see pin_recursion_limit) for every process that holds keys, whatever its entry point.
pin_recursion_limit()

NODE_KEY_FILE = "node.key"
WALLET_KEY_FILE = "wallet.key"
BOX_KEY_FILE = "box.key"


def _write_secret(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` with mode 0600 from the first byte (no umask window)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.replace(tmp, path)


def _read_or_create(path: Path, make: Callable[[], bytes]) -> bytes:
    if path.exists():
        return path.read_bytes()
    data = make()
    _write_secret(path, data)
    return data


@dataclass(frozen=True)
class Identity:
    """The loaded keys of one node. Build with :func:`load_identity`."""

    home: Path
    node_key_bytes: bytes = field(repr=False)
    wallet: LocalAccount = field(repr=False)
    box_key: BoxPrivateKey = field(repr=False)

    @property
    def address(self) -> str:
        """Checksummed EVM address of the wallet key."""
        return self.wallet.address

    @property
    def box_public(self) -> BoxPublicKey:
        return self.box_key.public_key

    @property
    def box_public_hex(self) -> str:
        return bytes(self.box_key.public_key).hex()

    def key_pair(self):  # -> libp2p.crypto.keys.KeyPair
        """The libp2p Ed25519 key pair (imported lazily: libp2p is heavy)."""
        from libp2p.crypto.ed25519 import Ed25519PrivateKey
        from libp2p.crypto.keys import KeyPair

        priv = Ed25519PrivateKey.from_bytes(self.node_key_bytes)
        return KeyPair(priv, priv.get_public_key())

    @property
    def peer_id(self) -> str:
        from libp2p.peer.id import ID

        return ID.from_pubkey(self.key_pair().public_key).to_base58()

    def __repr__(self) -> str:  # never the secrets
        return f"Identity(home={str(self.home)!r}, address={self.address})"


def load_identity(home: Path) -> Identity:
    """Load the node's keys from ``home``, creating any that are missing (files 0600)."""
    home = Path(home).expanduser()
    home.mkdir(parents=True, exist_ok=True)
    os.chmod(home, 0o700)

    def new_node_key() -> bytes:
        from libp2p.crypto.ed25519 import create_new_key_pair

        return create_new_key_pair().private_key.to_bytes()

    node = _read_or_create(home / NODE_KEY_FILE, new_node_key)
    wallet_hex = _read_or_create(
        home / WALLET_KEY_FILE, lambda: Account.create().key.hex().encode()
    ).decode().strip()
    box = _read_or_create(home / BOX_KEY_FILE, lambda: bytes(BoxPrivateKey.generate()))
    return Identity(
        home=home,
        node_key_bytes=node,
        wallet=Account.from_key(wallet_hex),
        box_key=BoxPrivateKey(box),
    )
