"""Every value that crosses the RPC goes through the one adapter, ValueUnits (ledger/hedera.py).

On Hedera the RPC speaks weibar and the EVM tinybar; the units relay (tests/ledger/
test_units_relay.py, test_escrow_v2_anvil.py's money flow on both chains, tests/devnet/
test_hedera_units.py) shows the Ledger and EscrowV2 convert. This test shows nothing else talks
to the RPC about money on its own: it reads the source of every module and fails on a balance
read, a transaction value or a receipt's gas price that does not pass through ValueUnits, on a
client built without units, and on a conversion factor written anywhere but the adapter."""

from __future__ import annotations

import ast
from pathlib import Path

import fedswarm

SRC = Path(fedswarm.__file__).parent
# The adapter itself, and the relay that plays Hedera's side of the conversion in tests.
ADAPTER = {"ledger/hedera.py", "ledger/unitsrelay.py"}
# Where the Ledger / EscrowV2 clients are defined (their own fields carry the units).
CLIENTS = {"ledger/evm.py", "ledger/escrow.py"}
# Transactions whose value was converted elsewhere, and why.
CONVERTED_ELSEWHERE = {
    # The demo's external wallet sends the funding call the node wrote for it: its value is
    # already RPC units (roles/client/payment.py computes it with ValueUnits.to_rpc).
    "demo/wallet_user.py": "int(funding['value'])",
}


def _modules() -> list[tuple[str, ast.Module]]:
    out = []
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC).as_posix()
        out.append((rel, ast.parse(path.read_text(), filename=rel)))
    return out


def _parents(tree: ast.AST) -> dict[ast.AST, ast.AST]:
    return {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}


def _inside_call(node: ast.AST, parents: dict[ast.AST, ast.AST], method: str) -> bool:
    """True when ``node`` sits (at any depth) in the arguments of a call to ``.method(...)``."""
    while node in parents:
        node = parents[node]
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == method:
            return True
    return False


def _where(rel: str, node: ast.AST) -> str:
    return f"{rel}:{getattr(node, 'lineno', '?')}"


def test_rpc_balances_and_gas_prices_are_converted_by_value_units():
    bad = []
    for rel, tree in _modules():
        if rel in ADAPTER:
            continue
        parents = _parents(tree)
        for node in ast.walk(tree):
            reads_balance = (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                             and node.func.attr == "get_balance")
            reads_fee = isinstance(node, ast.Constant) and node.value == "effectiveGasPrice"
            if (reads_balance or reads_fee) and not _inside_call(node, parents, "from_rpc"):
                bad.append(_where(rel, node))
    assert not bad, f"RPC amounts read without ValueUnits.from_rpc: {bad}"


def test_transaction_values_are_converted_by_value_units():
    bad = []
    for rel, tree in _modules():
        if rel in ADAPTER:
            continue
        for node in ast.walk(tree):
            if not isinstance(node, ast.Dict):
                continue
            keys = {k.value: v for k, v in zip(node.keys, node.values, strict=True)
                    if isinstance(k, ast.Constant) and isinstance(k.value, str)}
            if "value" not in keys or not {"to", "data", "nonce", "gasPrice"} & set(keys):
                continue
            v = keys["value"]
            if CONVERTED_ELSEWHERE.get(rel) == ast.unparse(v):
                continue
            zero = isinstance(v, ast.Constant) and v.value == 0
            converted = any(isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)
                            and n.func.attr == "to_rpc" for n in ast.walk(v))
            if not (zero or converted):
                bad.append(_where(rel, node))
    assert not bad, f"transaction values not converted by ValueUnits.to_rpc: {bad}"


def test_every_ledger_client_is_built_with_its_chains_units():
    bad = []
    for rel, tree in _modules():
        if rel in CLIENTS:
            continue
        for node in ast.walk(tree):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                    and node.func.id in ("Ledger", "EscrowV2")
                    and not any(kw.arg == "units" for kw in node.keywords)):
                bad.append(_where(rel, node))
    assert not bad, f"Ledger/EscrowV2 built without units= (wei would be taken for tinybar): {bad}"


def test_the_conversion_factor_lives_only_in_the_adapter():
    bad = []
    for rel, tree in _modules():
        if rel in ADAPTER:
            continue
        for node in ast.walk(tree):
            factor = (isinstance(node, ast.BinOp) and isinstance(node.op, ast.Pow)
                      and isinstance(node.right, ast.Constant) and node.right.value == 10
                      and isinstance(node.left, ast.Constant) and node.left.value == 10)
            named = isinstance(node, ast.Name | ast.alias) and "WEIBAR_PER_TINYBAR" in (
                getattr(node, "id", None), getattr(node, "name", None))
            literal = isinstance(node, ast.Constant) and node.value in (10**10, 1e10)
            if factor or named or literal:
                bad.append(_where(rel, node))
    assert not bad, f"a weibar/tinybar factor outside ValueUnits: {bad}"
