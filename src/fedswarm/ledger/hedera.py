"""Hedera specifics for the EVM ledger: networks, relay URLs, value units, ids and keys.

Hedera's JSON-RPC relay speaks Ethereum JSON-RPC, with three twists handled here:
- values outside the EVM (transaction ``value``, ``eth_getBalance``, gas price) are in weibar
  (10^-18 HBAR) while inside the EVM (``msg.value``, balances the contract stores, amounts passed
  as arguments) they are tinybar (10^-8 HBAR): :class:`ValueUnits` is the one place converting;
- contracts are named ``0.0.N`` as well as by EVM address (:func:`parse_contract_id`);
- only ECDSA secp256k1 keys can sign Ethereum transactions (:func:`parse_operator_key`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from eth_account import Account
from eth_account.signers.local import LocalAccount
from eth_utils import is_hex_address, to_checksum_address

WEIBAR_PER_TINYBAR = 10**10
TINYBAR_PER_HBAR = 10**8
# ``value_units`` of a devnet chain block (devnet.json) whose anvil sits behind the units relay
# (`fedswarm devnet up --hedera-units`): tinybar in the EVM, weibar on the RPC, as on Hedera.
HEDERA_UNITS = "hedera"
NATIVE_UNITS = "native"

CHAIN_IDS = {"mainnet": 295, "testnet": 296, "previewnet": 297}
RELAY_URLS = {
    "mainnet": "https://mainnet.hashio.io/api",
    "testnet": "https://testnet.hashio.io/api",
    "previewnet": "https://previewnet.hashio.io/api",
}
MIRROR_URLS = {
    "mainnet": "https://mainnet-public.mirrornode.hedera.com",
    "testnet": "https://testnet.mirrornode.hedera.com",
    "previewnet": "https://previewnet.mirrornode.hedera.com",
}

# DER (PKCS#8 / RFC 5915) prefixes Hedera tools print keys with.
_DER_ECDSA_PREFIXES = (
    "3030020100300706052b8104000a04220420",  # PKCS#8 secp256k1, 32-byte key follows
)
_DER_ED25519_PREFIX = "302e020100300506032b657004220420"
_ENTITY_ID = re.compile(r"^(\d+)\.(\d+)\.(\d+)$")


class HederaConfigError(ValueError):
    """A Hedera setting (key, contract id, network) is unusable; the message says what to do."""


@dataclass(frozen=True)
class ValueUnits:
    """Converts between contract units (what the EVM sees: wei on anvil, tinybar on Hedera) and
    transaction/RPC units (wei on anvil, weibar on Hedera). The Ledger uses one instance for all
    values it sends or reads, so every public amount of the Ledger API is in contract units."""

    rpc_per_contract_unit: int = 1

    @classmethod
    def native(cls) -> ValueUnits:
        """Ethereum-like chains (anvil): both sides are wei."""
        return cls(1)

    @classmethod
    def hedera(cls) -> ValueUnits:
        """Hedera: tinybar inside the EVM, weibar on the RPC."""
        return cls(WEIBAR_PER_TINYBAR)

    @classmethod
    def for_chain(cls, chain: Mapping[str, Any]) -> ValueUnits:
        """The units of a devnet chain block (``devnet.json``'s ``chain``): Hedera's when its
        ``value_units`` is ``"hedera"`` (anvil behind the units relay), else native."""
        name = chain.get("value_units") or NATIVE_UNITS
        if name == HEDERA_UNITS:
            return cls.hedera()
        if name == NATIVE_UNITS:
            return cls.native()
        raise HederaConfigError(f"unknown value_units {name!r} in the devnet's chain block:"
                                " restart it with `fedswarm devnet up`")

    def to_rpc(self, amount: int) -> int:
        """Transaction ``value`` for ``amount`` contract units (tinybar → weibar)."""
        if amount < 0:
            raise ValueError(f"negative amount {amount}")
        return int(amount) * self.rpc_per_contract_unit

    def from_rpc(self, value: int) -> int:
        """Contract units in an RPC value (weibar → tinybar; sub-tinybar dust is dropped, as
        Hedera itself drops it)."""
        return int(value) // self.rpc_per_contract_unit

    @property
    def name(self) -> str:
        """``"hedera"`` or ``"native"`` (what a devnet chain block records as ``value_units``)."""
        return HEDERA_UNITS if self.rpc_per_contract_unit == WEIBAR_PER_TINYBAR else NATIVE_UNITS


def chain_id_for(network: str) -> int:
    """Hedera chain id of ``network`` (mainnet 295, testnet 296, previewnet 297)."""
    try:
        return CHAIN_IDS[network]
    except KeyError:
        raise HederaConfigError(
            f"unknown Hedera network {network!r}: set NETWORK to one of {', '.join(CHAIN_IDS)}"
        ) from None


def relay_url_for(network: str, override: str | None = None) -> str:
    """The JSON-RPC relay of ``network`` (``FEDSWARM_RELAY_URL`` wins)."""
    if override:
        return override
    chain_id_for(network)  # validates the name
    return RELAY_URLS[network]


def entity_to_evm_address(entity_id: str) -> str:
    """``shard.realm.num`` → the long-zero EVM address (4-byte shard, 8-byte realm, 8-byte num)."""
    m = _ENTITY_ID.match(entity_id.strip())
    if not m:
        raise HederaConfigError(f"{entity_id!r} is not a Hedera id like 0.0.1234")
    shard, realm, num = (int(g) for g in m.groups())
    if shard >= 2**32 or realm >= 2**64 or num >= 2**64:
        raise HederaConfigError(f"Hedera id {entity_id!r} is out of range")
    raw = shard.to_bytes(4, "big") + realm.to_bytes(8, "big") + num.to_bytes(8, "big")
    return to_checksum_address(raw)


def parse_contract_id(contract_id: str | None) -> str:
    """``CONTRACT_ID`` as a checksummed EVM address; accepts ``0.0.N`` or ``0x...``."""
    if not contract_id or not contract_id.strip():
        raise HederaConfigError(
            "CONTRACT_ID is not set: deploy FedSwarmEscrow and set CONTRACT_ID=0.0.N or 0x<address>"
        )
    value = contract_id.strip()
    if _ENTITY_ID.match(value):
        return entity_to_evm_address(value)
    if is_hex_address(value):
        return to_checksum_address(value)
    raise HederaConfigError(
        f"CONTRACT_ID {value!r} is neither a Hedera id (0.0.N) nor a 0x EVM address"
    )


def parse_operator_key(key: str | None) -> LocalAccount:
    """``OPERATOR_KEY`` as a signing account. Accepts a raw 32-byte hex ECDSA key (with or
    without ``0x``) or its DER form (``3030...``); an ED25519 key gets a clear error, because
    only ECDSA secp256k1 accounts with an EVM alias can sign relay transactions."""
    if not key or not key.strip():
        raise HederaConfigError("OPERATOR_KEY is not set: use the hex ECDSA key of your account")
    k = key.strip().lower().removeprefix("0x")
    if not re.fullmatch(r"[0-9a-f]+", k):
        raise HederaConfigError("OPERATOR_KEY is not hex: paste the hex ECDSA private key")
    if k.startswith(_DER_ED25519_PREFIX):
        raise HederaConfigError(
            "OPERATOR_KEY is an ED25519 key (DER prefix 302e...), which cannot sign EVM"
            " transactions: create an ECDSA (secp256k1) account with an EVM alias in the Hedera"
            " portal and use its hex private key"
        )
    for prefix in _DER_ECDSA_PREFIXES:
        if k.startswith(prefix):
            k = k[len(prefix) :]
            break
    if len(k) != 64:
        raise HederaConfigError(
            f"OPERATOR_KEY has {len(k) // 2} bytes, expected a 32-byte ECDSA (secp256k1) private"
            " key (hex, optionally DER-encoded with prefix 3030...)"
        )
    try:
        return Account.from_key(bytes.fromhex(k))
    except Exception as exc:  # out-of-range scalar
        raise HederaConfigError(f"OPERATOR_KEY is not a valid secp256k1 key ({exc})") from None


# What the relay (hiero-json-rpc-relay's predefined errors) and the consensus nodes' statuses
# mean for the user, most specific first: (needles, one-line explanation).
_RELAY_ERRORS: tuple[tuple[tuple[str, ...], str], ...] = (
    (("insufficient_payer_balance", "insufficient funds for transfer"),
     "the paying account has too little HBAR (INSUFFICIENT_PAYER_BALANCE): top it up from the"
     " portal or faucet and retry"),
    (("invalid_signature",),
     "the network refused the signature (INVALID_SIGNATURE): sign with the ECDSA key of an"
     " account with an EVM alias; ED25519 accounts cannot sign EVM transactions"),
    (("contract_revert_executed", "execution reverted"),
     "the contract reverted (CONTRACT_REVERT_EXECUTED)"),
    (("429", "rate limit exceeded", "-32605", "-32606", "too many requests", "busy"),
     "the relay is throttling requests (HTTP 429 / rate limit): wait a minute and retry, or set"
     " FEDSWARM_RELAY_URL to a relay of your own"),
)


def known_relay_error(exc: BaseException | str) -> str | None:
    """The one-line explanation of a known relay error (balance, signature, revert,
    throttling), or None when ``exc`` is none of them."""
    text = str(exc)
    low = text.lower()
    for needles, line in _RELAY_ERRORS:
        if any(n in low for n in needles):
            if "reverted" in line:
                m = re.search(r"execution reverted:?\s*([^'\"}\n]*)", text)
                reason = m.group(1).strip() if m else ""
                return f"{line}: {reason}" if reason else line
            return line
    return None


def explain_relay_error(exc: BaseException | str) -> str:
    """One line for an error from Hedera's relay: what happened and what to do (the relay's own
    text, shortened, when it is none of the known ones)."""
    known = known_relay_error(exc)
    if known is not None:
        return known
    text = str(exc)
    first = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
    return first[:200]
