"""The one place a `Ledger` (v1) or an `EscrowV2` is built from settings: the devnet's anvil or
Hedera's relay."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from eth_account.signers.local import LocalAccount

from fedswarm.config import ConfigError, Settings
from fedswarm.identity import Identity
from fedswarm.ledger.escrow import EscrowV2
from fedswarm.ledger.evm import Ledger
from fedswarm.ledger.hedera import (
    HederaConfigError,
    ValueUnits,
    chain_id_for,
    parse_contract_id,
    parse_operator_key,
    relay_url_for,
)


def make_ledger(settings: Settings, identity: Identity | None = None) -> Ledger:
    """A Ledger for this node.

    Devnet: the chain block of ``devnet.json`` (rpc_url, chain_id, contract_address), signing
    with the node's wallet key. Hedera (NETWORK=testnet/mainnet/previewnet): the relay
    (``FEDSWARM_RELAY_URL`` or the network's hashio URL), ``CONTRACT_ID`` (``0.0.N`` or 0x), the
    signer chosen by :func:`evm_signer`; receipts wait up to 120 s (they come from the mirror
    node).
    """
    if settings.is_devnet:
        chain = settings.devnet_state().get("chain")
        if not chain:
            raise ConfigError(
                "the devnet has no chain section: restart it with `fedswarm devnet up`"
            )
        if identity is None:
            raise ConfigError("a devnet ledger needs the node's identity (its wallet key)")
        return Ledger(
            rpc_url=chain["rpc_url"],
            contract_address=chain["contract_address"],
            account=identity.wallet,
            units=_devnet_units(chain),
            chain_id=int(chain["chain_id"]),
        )
    try:
        contract = parse_contract_id(settings.contract_id)
        account = evm_signer(settings, identity)
        return Ledger(
            rpc_url=relay_url_for(settings.network, settings.relay_url),
            contract_address=contract,
            account=account,
            units=ValueUnits.hedera(),
            chain_id=chain_id_for(settings.network),
            receipt_timeout=120.0,
        )
    except HederaConfigError as exc:
        raise ConfigError(str(exc)) from None


def evm_signer(settings: Settings, identity: Identity | None) -> LocalAccount:
    """The one key that signs a node's EVM transactions on Hedera: its wallet, which also signs
    its bids and receipts' claims and is registered and paid on the escrow.

    ``OPERATOR_KEY`` pays HCS fees (the audit log) and may be a separate account; it signs EVM
    transactions for a node only with ``FEDSWARM_LEDGER_SIGNER=operator`` and only when its EVM
    address is the wallet's (an ECDSA operator whose key is the node's wallet key). Without a
    node (``identity`` None: deploying, say) OPERATOR_KEY signs.
    """
    if identity is None:
        if settings.operator_key is None:
            raise HederaConfigError("OPERATOR_KEY is not set and no node wallet was given")
        return parse_operator_key(settings.operator_key.get_secret_value())
    if settings.ledger_signer == "operator":
        if settings.operator_key is None:
            raise HederaConfigError("FEDSWARM_LEDGER_SIGNER=operator but OPERATOR_KEY is not set")
        operator = parse_operator_key(settings.operator_key.get_secret_value())
        if operator.address != identity.address:
            raise HederaConfigError(
                f"FEDSWARM_LEDGER_SIGNER=operator but OPERATOR_KEY's EVM address {operator.address}"
                f" is not this node's wallet {identity.address}: unset FEDSWARM_LEDGER_SIGNER (the"
                " wallet signs; OPERATOR_KEY only pays HCS fees) or make the wallet key the operator's"
            )
        return operator
    return identity.wallet


def make_escrow(settings: Settings, identity: Identity | None = None) -> EscrowV2:
    """The FedSwarmEscrowV2 client new jobs are funded and settled on.

    Devnet: ``escrow_v2_address`` and ``escrow_v2_deploy_block`` of ``devnet.json``'s chain
    block, signing with the node's wallet key. Hedera: ``CONTRACT_ID`` names the v2 deployment
    and ``CONTRACT_BLOCK`` its deployment block (v1 is read only for jobs funded before v2); the
    relay and signer as :func:`make_ledger`.
    """
    if settings.is_devnet:
        chain = settings.devnet_state().get("chain") or {}
        if not chain.get("escrow_v2_address"):
            raise ConfigError(
                "the devnet has no v2 escrow: restart it with `fedswarm devnet up`"
            )
        if identity is None:
            raise ConfigError("a devnet escrow needs the node's identity (its wallet key)")
        return EscrowV2(
            rpc_url=chain["rpc_url"],
            contract_address=chain["escrow_v2_address"],
            account=identity.wallet,
            units=_devnet_units(chain),
            chain_id=int(chain["chain_id"]),
            deploy_block=int(chain.get("escrow_v2_deploy_block", 0)),
        )
    try:
        return EscrowV2(
            rpc_url=relay_url_for(settings.network, settings.relay_url),
            contract_address=parse_contract_id(settings.contract_id),
            account=evm_signer(settings, identity),
            units=ValueUnits.hedera(),
            chain_id=chain_id_for(settings.network),
            deploy_block=settings.contract_block,
            receipt_timeout=120.0,
        )
    except HederaConfigError as exc:
        raise ConfigError(str(exc)) from None


def _devnet_units(chain: Mapping[str, Any]) -> ValueUnits:
    """The devnet chain's value units (Hedera's under ``devnet up --hedera-units``)."""
    try:
        return ValueUnits.for_chain(chain)
    except HederaConfigError as exc:
        raise ConfigError(str(exc)) from None
