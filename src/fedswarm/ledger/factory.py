"""The one place a `Ledger` is built from settings: the devnet's anvil or Hedera's relay."""

from __future__ import annotations

from fedswarm.config import ConfigError, Settings
from fedswarm.identity import Identity
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
    (``FEDSWARM_RELAY_URL`` or the network's hashio URL), ``CONTRACT_ID`` (``0.0.N`` or 0x) and
    ``OPERATOR_KEY`` (ECDSA) when set, else the node's wallet key; receipts wait up to 120 s
    because they come from the mirror node.
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
            chain_id=int(chain["chain_id"]),
        )
    try:
        contract = parse_contract_id(settings.contract_id)
        if settings.operator_key is not None:
            account = parse_operator_key(settings.operator_key.get_secret_value())
        elif identity is not None:
            account = identity.wallet
        else:
            raise HederaConfigError("OPERATOR_KEY is not set and no node wallet was given")
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
