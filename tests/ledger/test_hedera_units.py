"""Hedera adapters: units, contract ids, operator keys, network settings."""

from __future__ import annotations

import pytest
from eth_account import Account

from fedswarm.config import ConfigError, Settings
from fedswarm.ledger.factory import make_ledger
from fedswarm.ledger.hedera import (
    WEIBAR_PER_TINYBAR,
    HederaConfigError,
    ValueUnits,
    chain_id_for,
    entity_to_evm_address,
    parse_contract_id,
    parse_operator_key,
    relay_url_for,
)

KEY = "0x" + "11" * 32


def test_value_units_round_trip():
    hedera = ValueUnits.hedera()
    assert hedera.to_rpc(1) == WEIBAR_PER_TINYBAR == 10**10
    assert hedera.to_rpc(5 * 10**8) == 5 * 10**18  # 5 HBAR
    assert hedera.from_rpc(5 * 10**18) == 5 * 10**8
    assert hedera.from_rpc(10**10 - 1) == 0  # sub-tinybar dust is dropped, as Hedera does
    assert ValueUnits.native().to_rpc(123) == 123 == ValueUnits.native().from_rpc(123)
    with pytest.raises(ValueError):
        hedera.to_rpc(-1)


def test_networks():
    assert [chain_id_for(n) for n in ("mainnet", "testnet", "previewnet")] == [295, 296, 297]
    assert relay_url_for("testnet") == "https://testnet.hashio.io/api"
    assert relay_url_for("testnet", "http://127.0.0.1:7546") == "http://127.0.0.1:7546"
    with pytest.raises(HederaConfigError, match="NETWORK"):
        chain_id_for("devnet")


def test_contract_id_forms():
    assert entity_to_evm_address("0.0.1234") == "0x00000000000000000000000000000000000004d2"
    assert parse_contract_id(" 0.0.1234 ") == "0x00000000000000000000000000000000000004d2"
    assert parse_contract_id("1.2.3").lower() == "0x" + "00000001" + "0000000000000002" + "0000000000000003"
    addr = Account.from_key(KEY).address
    assert parse_contract_id(addr.lower()) == addr
    for bad in ("", None, "0.0", "0.0.x", "0x1234", "hello"):
        with pytest.raises(HederaConfigError):
            parse_contract_id(bad)


def test_operator_key_forms():
    expected = Account.from_key(KEY).address
    assert parse_operator_key(KEY).address == expected
    assert parse_operator_key(KEY[2:]).address == expected
    der = "3030020100300706052b8104000a04220420" + "11" * 32
    assert parse_operator_key(der).address == expected
    assert parse_operator_key("0x" + der.upper()).address == expected


def test_ed25519_operator_key_is_refused_with_guidance():
    der = "302e020100300506032b657004220420" + "22" * 32
    with pytest.raises(HederaConfigError, match="ED25519.*ECDSA"):
        parse_operator_key(der)
    for bad, msg in (("", "not set"), ("zz", "not hex"), ("ab" * 16, "16 bytes")):
        with pytest.raises(HederaConfigError, match=msg):
            parse_operator_key(bad)


def test_factory_builds_a_hedera_ledger():
    s = Settings(network="testnet", contract_id="0.0.5005", operator_key=KEY)
    ledger = make_ledger(s, None)
    assert ledger.chain_id == 296 and ledger.rpc_url == "https://testnet.hashio.io/api"
    assert ledger.contract_address == "0x000000000000000000000000000000000000138D"
    assert ledger.units.rpc_per_contract_unit == 10**10
    assert ledger.address == Account.from_key(KEY).address


def test_factory_errors_are_config_errors():
    with pytest.raises(ConfigError, match="CONTRACT_ID"):
        make_ledger(Settings(network="testnet", operator_key=KEY), None)
    ed = "302e020100300506032b657004220420" + "22" * 32
    with pytest.raises(ConfigError, match="ED25519"):
        make_ledger(Settings(network="mainnet", contract_id="0.0.1", operator_key=ed), None)
