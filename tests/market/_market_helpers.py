"""Signed bids built with the real wire model, for the market tests."""

from __future__ import annotations

import hashlib

from eth_account import Account
from eth_account.signers.local import LocalAccount

from fedswarm.market.bids import sign_bid
from fedswarm.protocol.job import Bid
from fedswarm.protocol.messages import Capabilities

JOB = "job-7f3a"
_B58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"


def wallet(n: int) -> LocalAccount:
    """A deterministic wallet per index (keys derived from the index, never 0)."""
    return Account.from_key(hashlib.sha256(f"wallet-{n}".encode()).digest())


def peer_id(n: int) -> str:
    """A deterministic base58 peer id per index, shaped like a libp2p Ed25519 id."""
    digest = hashlib.sha256(f"peer-{n}".encode()).digest()
    return "12D3KooW" + "".join(_B58[b % 58] for b in digest[:30])


def box_hex(n: int) -> str:
    return hashlib.sha256(f"box-{n}".encode()).hexdigest()


def cpu(cores: int = 4, ram_mb: int = 8192) -> Capabilities:
    return Capabilities(cpu_cores=cores, ram_mb=ram_mb)


def gpu(cores: int = 8, ram_mb: int = 32768, mem: int = 24576) -> Capabilities:
    return Capabilities(cpu_cores=cores, ram_mb=ram_mb, gpu_name="RTX 4090",
                        gpu_memory_mb=mem, device="cuda")


def make_bid(n: int, price: int, caps: Capabilities | None = None, job: str = JOB,
             signer: LocalAccount | None = None, **overrides) -> Bid:
    """Trainer ``n``'s bid at ``price``, signed by its own wallet unless ``signer`` is given;
    ``overrides`` replace wire fields after signing (to forge)."""
    w = wallet(n)
    fields = dict(job_id=job, peer_id=peer_id(n), address=w.address, box_public=box_hex(n),
                  price_wei=price, capabilities=caps or cpu())
    fields["signature"] = sign_bid(signer or w, fields["peer_id"], fields["box_public"], job, price)
    fields.update(overrides)
    return Bid(**fields)
