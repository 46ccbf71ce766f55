"""One identity per node on Hedera: the wallet key signs every EVM transaction (bids name it,
the escrow registers and pays it); OPERATOR_KEY only pays HCS fees unless it is that very key."""

from __future__ import annotations

from pathlib import Path

import pytest
from eth_account import Account

from fedswarm.config import ConfigError, Settings
from fedswarm.identity import Identity, load_identity
from fedswarm.ledger.factory import make_escrow, make_ledger

CONTRACT = "0x" + "11" * 20


def _settings(operator_key: str | None, **extra: str) -> Settings:
    values = {"network": "testnet", "contract_id": CONTRACT, "operator_id": "0.0.1234", **extra}
    if operator_key is not None:
        values["operator_key"] = operator_key
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


@pytest.fixture()
def node(tmp_path: Path) -> Identity:
    return load_identity(tmp_path / "node")


def test_trainer_signs_with_its_wallet_even_with_an_operator_key(node: Identity) -> None:
    operator = Account.create()
    settings = _settings(operator.key.hex())
    # The old factory signed as the operator account here, so the trainer's bid (its wallet)
    # and its on-chain calls (the operator) were two identities and every claim reverted.
    assert make_ledger(settings, node).address == node.address
    assert make_escrow(settings, node).address == node.address


def test_operator_as_signer_must_be_the_wallet(node: Identity) -> None:
    other = Account.create()
    settings = _settings(other.key.hex(), FEDSWARM_LEDGER_SIGNER="operator")
    with pytest.raises(ConfigError) as err:
        make_ledger(settings, node)
    text = str(err.value)
    assert "\n" not in text and other.address in text and node.address in text
    same = _settings(node.wallet.key.hex(), FEDSWARM_LEDGER_SIGNER="operator")
    assert make_escrow(same, node).address == node.address


def test_operator_signer_needs_a_key(node: Identity) -> None:
    with pytest.raises(ConfigError, match="OPERATOR_KEY is not set"):
        make_ledger(_settings(None, FEDSWARM_LEDGER_SIGNER="operator"), node)


def test_without_a_node_the_operator_signs() -> None:
    operator = Account.create()
    assert make_ledger(_settings(operator.key.hex()), None).address == operator.address
    with pytest.raises(ConfigError, match="OPERATOR_KEY is not set"):
        make_ledger(_settings(None), None)


def test_hedera_escrow_scans_from_its_deployment_block() -> None:
    # Prepare: a Hedera configuration naming the contract and the block it was deployed in
    settings = Settings(_env_file=None, NETWORK="testnet", CONTRACT_ID="0.0.1234",  # type: ignore[call-arg]
                        CONTRACT_BLOCK=5_000_000, OPERATOR_KEY="0x" + "22" * 32)
    # Execute (nothing is sent: the client only needs the settings)
    escrow = make_escrow(settings)
    # Assert: event scans start at the deployment block, never at block 0
    assert escrow.deploy_block == 5_000_000
    assert escrow.chain_id == 296
