"""The devnet: one machine's stand-in for Akave and Hedera (signed-URL store, anvil with the
escrow contract, the local topic log), started by ``fedswarm devnet up`` and ``fedswarm demo``.

Importing this package is cheap: web3 and the service modules load only when used.
"""

from fedswarm.devnet.funding import DEV_MIN_BALANCE_WEI, DEV_TARGET_BALANCE_WEI, ensure_funded
from fedswarm.devnet.services import (
    Devnet,
    DevnetError,
    devnet_settings,
    fund_address,
    fund_identity,
)

__all__ = [
    "DEV_MIN_BALANCE_WEI",
    "DEV_TARGET_BALANCE_WEI",
    "Devnet",
    "DevnetError",
    "devnet_settings",
    "ensure_funded",
    "fund_address",
    "fund_identity",
]
