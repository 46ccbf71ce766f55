"""The devnet's funding policy: a node's wallet is topped up from the faucet at start-up.

On the devnet nobody buys coins, so the client and trainer roles call :func:`ensure_funded`
when they start; on Hedera networks it does nothing (wallets are funded by their owners).
"""

from __future__ import annotations

import logging
from typing import Any

from fedswarm.config import ConfigError, Settings

log = logging.getLogger(__name__)

ETHER = 10**18
# A node below this balance gets topped up; enough gas for thousands of transactions and for
# a client to fund a few demo jobs.
DEV_MIN_BALANCE_WEI = 10 * ETHER
# ... up to this balance.
DEV_TARGET_BALANCE_WEI = 1000 * ETHER


def ensure_funded(settings: Settings, address: str, min_wei: int = DEV_MIN_BALANCE_WEI,
                  target_wei: int | None = None) -> int:
    """Top ``address`` up from the devnet faucet when its balance is below ``min_wei``.

    Amounts are contract units: wei, or tinybar on a devnet in Hedera units (``devnet up
    --hedera-units``), read and sent through the chain's :class:`ValueUnits`.
    Tops up to ``target_wei`` (default ``max(min_wei, DEV_TARGET_BALANCE_WEI)``). Returns the
    wei sent (0 when nothing was needed or the network is not the devnet). Blocking (web3):
    call it through ``trio.to_thread.run_sync`` from a node. Raises `ConfigError` (one line)
    when the devnet is not running or the address is malformed.
    """
    if not settings.is_devnet:
        return 0
    from web3 import Web3

    from fedswarm.devnet.services import DevnetError, fund_address

    if not Web3.is_address(address):
        raise ConfigError(f"{address!r} is not an EVM address (0x followed by 40 hex digits)")
    if min_wei < 0:
        raise ConfigError(f"min_wei must be >= 0, got {min_wei}")
    state = settings.devnet_state()
    chain = state.get("chain") or {}
    if not chain.get("rpc_url"):
        raise ConfigError(f"the devnet at {settings.devnet_dir()} has no chain: restart it "
                          "with `fedswarm devnet up`")
    address = Web3.to_checksum_address(address)
    try:
        balance = _balance(chain, address)
    except Exception as exc:  # noqa: BLE001 - any transport failure means the same thing here
        raise ConfigError(
            f"the devnet chain at {chain['rpc_url']} does not answer ({type(exc).__name__}): "
            f"start it with `fedswarm devnet up --home {settings.devnet_dir()}`"
        ) from None
    if balance >= min_wei:
        return 0
    target = max(min_wei, DEV_TARGET_BALANCE_WEI if target_wei is None else target_wei)
    amount = target - balance
    try:
        fund_address(state, address, amount)
    except DevnetError as exc:
        raise ConfigError(str(exc)) from None
    log.info("devnet faucet topped up %s with %d wei", address, amount)
    return amount


def _balance(chain: dict[str, Any], address: str) -> int:
    """``address``'s balance in contract units, read through the chain's value units."""
    from eth_account import Account

    from fedswarm.ledger.evm import Ledger
    from fedswarm.ledger.hedera import ValueUnits

    reader = Ledger(rpc_url=chain["rpc_url"], contract_address=chain["contract_address"],
                    account=Account.create(), units=ValueUnits.for_chain(chain),
                    chain_id=int(chain["chain_id"]), retries=0, request_timeout=10.0)
    return reader.balance(address)
