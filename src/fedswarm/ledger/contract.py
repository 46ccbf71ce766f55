"""The compiled FedSwarmEscrow artifact, its status enums and revert-data decoding.

The artifact (ABI, bytecode, compiler version, settings, source sha256) is produced by
``scripts/compile_contract.js`` and committed, so nothing at runtime needs a compiler.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from enum import IntEnum
from functools import lru_cache
from pathlib import Path
from typing import Any

from eth_abi import decode as abi_decode
from eth_utils import keccak, to_checksum_address

ARTIFACT_DIR = Path(__file__).resolve().parent / "artifacts"
CONTRACT_NAME = "FedSwarmEscrow"

_ERROR_STRING = bytes.fromhex("08c379a0")  # Error(string)
_PANIC = bytes.fromhex("4e487b71")  # Panic(uint256)
_PANIC_CODES = {
    0x01: "assertion failed",
    0x11: "arithmetic overflow or underflow",
    0x12: "division by zero",
    0x21: "invalid enum value",
    0x32: "array index out of bounds",
    0x41: "out of memory",
}


class JobStatus(IntEnum):
    """``FedSwarmEscrow.JobStatus``."""

    NONE = 0
    OPEN = 1
    COMPLETED = 2
    CANCELLED = 3


class UnitStatus(IntEnum):
    """``FedSwarmEscrow.UnitStatus``."""

    NONE = 0
    COMMITTED = 1
    ACCEPTED = 2
    REJECTED = 3
    CLAIMED = 4


@dataclass(frozen=True)
class JobInfo:
    """A job as returned by the contract's ``job(jobId)`` view (amounts in contract units)."""

    owner: str
    deadline: int
    status: JobStatus
    settle_window: int
    commits: int
    spec_hash: bytes
    escrow: int
    reserved: int
    outstanding: int

    @classmethod
    def from_tuple(cls, t: tuple[Any, ...]) -> JobInfo:
        return cls(t[0], t[1], JobStatus(t[2]), t[3], t[4], bytes(t[5]), t[6], t[7], t[8])


@dataclass(frozen=True)
class TrainerTerms:
    """A trainer's registration for one job."""

    price_per_unit: int
    max_units: int
    committed: int
    registered: bool

    @classmethod
    def from_tuple(cls, t: tuple[Any, ...]) -> TrainerTerms:
        return cls(t[0], t[1], t[2], bool(t[3]))


@dataclass(frozen=True)
class UnitInfo:
    """The on-chain state of one unit of work (job, round, unit)."""

    trainer: str
    committed_at: int
    status: UnitStatus
    update_hash: bytes
    reason_hash: bytes

    @classmethod
    def from_tuple(cls, t: tuple[Any, ...]) -> UnitInfo:
        return cls(t[0], t[1], UnitStatus(t[2]), bytes(t[3]), bytes(t[4]))


@dataclass(frozen=True)
class ContractArtifact:
    """ABI + bytecode of one compiled contract, with how it was compiled."""

    name: str
    abi: list[dict[str, Any]]
    bytecode: str
    deployed_bytecode: str
    compiler_version: str
    settings: dict[str, Any]
    source_sha256: str
    _errors: dict[bytes, tuple[str, list[str], list[str]]] = field(
        default_factory=dict, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        for item in self.abi:
            if item.get("type") != "error":
                continue
            types = [_abi_type(i) for i in item["inputs"]]
            names = [i["name"] for i in item["inputs"]]
            sig = f"{item['name']}({','.join(types)})"
            self._errors[keccak(text=sig)[:4]] = (item["name"], types, names)

    def decode_revert(self, data: bytes | str | None) -> str:
        """Human-readable text for revert ``data``: a custom error with its arguments,
        ``Error(string)`` or ``Panic(code)``; hex if nothing matches."""
        return decode_revert(data, self._errors)


def _abi_type(inp: dict[str, Any]) -> str:
    # Errors here only take elementary types; tuples are rendered for completeness.
    if inp["type"].startswith("tuple"):
        inner = ",".join(_abi_type(c) for c in inp["components"])
        return f"({inner}){inp['type'][5:]}"
    return str(inp["type"])


def decode_revert(
    data: bytes | str | None, errors: dict[bytes, tuple[str, list[str], list[str]]] | None = None
) -> str:
    """Decode revert data into one line, e.g. ``NotRegistered(caller=0xabc...)``."""
    if data is None:
        return "reverted without data"
    if isinstance(data, str):
        data = bytes.fromhex(data.removeprefix("0x"))
    if not data:
        return "reverted without data"
    sel, body = data[:4], data[4:]
    try:
        if sel == _ERROR_STRING:
            return str(abi_decode(["string"], body)[0])
        if sel == _PANIC:
            code = abi_decode(["uint256"], body)[0]
            return f"Panic(0x{code:02x}: {_PANIC_CODES.get(code, 'unknown')})"
        if errors and sel in errors:
            name, types, names = errors[sel]
            values = abi_decode(types, body)
            args = ", ".join(
                f"{n}={_fmt(v, t)}" for n, v, t in zip(names, values, types, strict=True)
            )
            return f"{name}({args})"
    except Exception:  # malformed data: fall through to hex
        pass
    return f"reverted with data 0x{data.hex()}"


def _fmt(v: Any, abi_type: str) -> str:
    if abi_type == "address":
        return to_checksum_address(v)
    if isinstance(v, bytes):
        return "0x" + v.hex()
    return str(v)


def load_artifact_file(path: Path) -> ContractArtifact:
    """Load an artifact JSON written by ``scripts/compile_contract.js``."""
    raw = json.loads(Path(path).read_text())
    return ContractArtifact(
        name=raw["contractName"],
        abi=raw["abi"],
        bytecode=raw["bytecode"],
        deployed_bytecode=raw["deployedBytecode"],
        compiler_version=raw["compiler"]["version"],
        settings=raw["settings"],
        source_sha256=raw["sourceSha256"],
    )


@lru_cache(maxsize=4)
def load_artifact(name: str = CONTRACT_NAME) -> ContractArtifact:
    """The committed artifact of contract ``name`` (cached)."""
    path = ARTIFACT_DIR / f"{name}.json"
    if not path.exists():
        raise FileNotFoundError(
            f"contract artifact {path} is missing: run `make contracts` (node scripts/compile_contract.js)"
        )
    return load_artifact_file(path)
