"""Settings from the environment, `.env` and CLI flags, and the one place backends are chosen.

Nothing set means the devnet: the local signed-URL store, anvil with the escrow contract and
the local topic log, whose endpoints a running `fedswarm devnet up --home DIR` writes to
``DIR/devnet.json``. The seed's variable names keep their meaning (``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``OPERATOR_ID``, ``OPERATOR_KEY``, ``CONTRACT_ID``, ``TOPIC_ID``,
``BOOTSTRAP_ADDR``, ``NETWORK``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Literal

from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

Network = Literal["devnet", "testnet", "mainnet", "previewnet"]

DEFAULT_ROOT = Path(os.environ.get("FEDSWARM_ROOT", "~/.fedswarm")).expanduser()
DEVNET_STATE_FILE = "devnet.json"
NODE_INFO_FILE = "node.json"


class ConfigError(ValueError):
    """A setting is missing or inconsistent; the message says which and what to do."""


class Settings(BaseSettings):
    """Every setting a node or command reads. Environment names are the field names upper-cased
    (``NETWORK``, ``BOOTSTRAP_ADDR``...), prefixed only where the seed had no name."""

    model_config = SettingsConfigDict(
        env_file=".env", env_file_encoding="utf-8", extra="ignore", case_sensitive=False,
        populate_by_name=True,
    )

    network: Network = "devnet"
    home: Path | None = Field(default=None, alias="FEDSWARM_HOME")
    devnet_home: Path | None = Field(default=None, alias="FEDSWARM_DEVNET_HOME")
    log_json: bool = Field(default=False, alias="FEDSWARM_LOG_JSON")
    log_level: str = Field(default="INFO", alias="FEDSWARM_LOG_LEVEL")
    # anvil/solc; unset: the checkout's .tools/, else ~/.fedswarm/tools (see fedswarm.tools)
    tools_dir: Path | None = Field(default=None, validation_alias=AliasChoices("FEDSWARM_TOOLS_DIR", "FEDSWARM_TOOLS"))

    # P2P
    bootstrap_addr: str | None = None
    listen: str = Field(default="/ip4/127.0.0.1/tcp/0", alias="FEDSWARM_LISTEN")
    api: str = Field(default="127.0.0.1:0", alias="FEDSWARM_API")
    api_token: SecretStr | None = Field(default=None, alias="FEDSWARM_API_TOKEN")
    # origins (scheme://host[:port], comma list) of UIs served elsewhere that may call this API
    api_origins: str = Field(default="", alias="FEDSWARM_API_ORIGINS")
    # Network deadlines. libp2p has no liveness and a blackholed peer's TCP connection hangs
    # without an error, so a node judges peers by their heartbeats and bounds every network
    # wait: a peer silent for peer_timeout_s is unresponsive (its units are reassigned); a dial
    # gives up after dial_timeout_s and is retried every second; an RPC (stream open, request
    # write, reply read) after rpc_timeout_s. The --heartbeat / --peer-timeout flags win.
    # A connected peer silent for peer_drop_s (unset: 3 peer timeouts; never under one peer
    # timeout + 1 s) has its connections closed, which takes it out of gossipsub's mesh; it
    # dials again when it is back. Its silence counts only while we hear the others.
    heartbeat_s: float = Field(default=1.0, gt=0, le=60, alias="FEDSWARM_HEARTBEAT_S")
    peer_timeout_s: float = Field(default=4.0, gt=0, le=600, alias="FEDSWARM_PEER_TIMEOUT_S")
    dial_timeout_s: float = Field(default=3.0, gt=0, le=120, alias="FEDSWARM_DIAL_TIMEOUT_S")
    rpc_timeout_s: float = Field(default=15.0, gt=0, le=600, alias="FEDSWARM_RPC_TIMEOUT_S")
    peer_drop_s: float | None = Field(default=None, gt=0, le=3600, alias="FEDSWARM_PEER_DROP_S")

    # Object storage (Akave O3 / S3); empty means the devnet store.
    aws_access_key_id: SecretStr | None = None
    aws_secret_access_key: SecretStr | None = None
    s3_endpoint: str | None = Field(default=None, alias="FEDSWARM_S3_ENDPOINT")
    s3_region: str = Field(default="akave-network", alias="FEDSWARM_S3_REGION")
    s3_bucket: str = Field(default="fedswarm", alias="FEDSWARM_S3_BUCKET")
    s3_create_bucket: bool = Field(default=True, alias="FEDSWARM_S3_CREATE_BUCKET")
    # How long a client keeps a job's chunks, updates and global weights in the store after the
    # job's escrow was released (the result stays).
    retention_s: float = Field(default=0.0, ge=0, alias="FEDSWARM_RETENTION_S")

    # Ledger (Hedera / anvil)
    operator_id: str | None = None
    operator_key: SecretStr | None = None
    contract_id: str | None = None
    # The block the escrow was deployed in (printed by `fedswarm ledger deploy`): event scans
    # start there, never at block 0 (on Hedera that would be tens of thousands of relay calls).
    contract_block: int = Field(default=0, ge=0)
    topic_id: str | None = None
    # Which key signs EVM transactions on Hedera: the node wallet (always the identity that bids
    # and is paid) or OPERATOR_KEY, allowed only when it *is* the node wallet's key.
    ledger_signer: Literal["wallet", "operator"] = Field(default="wallet", alias="FEDSWARM_LEDGER_SIGNER")
    relay_url: str | None = Field(default=None, alias="FEDSWARM_RELAY_URL")
    mirror_url: str | None = Field(default=None, alias="FEDSWARM_MIRROR_URL")

    @field_validator("log_level")
    @classmethod
    def _upper(cls, v: str) -> str:
        return v.upper()

    @property
    def is_devnet(self) -> bool:
        return self.network == "devnet"

    def node_home(self, name: str) -> Path:
        """The home directory of node ``name`` (``--home`` wins, else ``~/.fedswarm/<name>``)."""
        return (self.home or DEFAULT_ROOT / name).expanduser()

    def devnet_dir(self) -> Path:
        return (self.devnet_home or DEFAULT_ROOT / "devnet").expanduser()

    def devnet_state(self) -> dict[str, Any]:
        """Read the endpoints a running devnet wrote; a clear error if there is none."""
        return load_devnet_state(self.devnet_dir())


def load_devnet_state(devnet_home: Path) -> dict[str, Any]:
    """Endpoints and dev credentials of the devnet under ``devnet_home``."""
    path = Path(devnet_home).expanduser() / DEVNET_STATE_FILE
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(
            f"no devnet found at {path}: start one with `fedswarm devnet up --home {devnet_home}`"
            " or set NETWORK and the storage/ledger variables"
        ) from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"devnet state {path} is corrupt ({exc}); restart the devnet") from None


def write_devnet_state(devnet_home: Path, updates: dict[str, Any]) -> dict[str, Any]:
    """Merge ``updates`` into the devnet state file (0600, it holds dev secrets)."""
    devnet_home = Path(devnet_home).expanduser()
    devnet_home.mkdir(parents=True, exist_ok=True)
    path = devnet_home / DEVNET_STATE_FILE
    state: dict[str, Any] = {}
    if path.exists():
        state = json.loads(path.read_text())
    state.update(updates)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(state, fh, indent=2)
    os.replace(tmp, path)
    return state


def load_settings(**overrides: Any) -> Settings:
    """Settings from env/.env, with CLI flag values (non-None) taking precedence."""
    clean = {k: v for k, v in overrides.items() if v is not None}
    return Settings(**clean)


def write_text_atomic(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` in one step. The temporary file's name is unique to the
    writing process and thread: two threads saving the same file at once (a trainer's bidding
    and its network view refreshing one book) must not rename each other's half-written file."""
    import threading

    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_node_info(home: Path, info: dict[str, Any]) -> None:
    """Write ``HOME/node.json`` (peer id, addrs, API URL, pid) atomically once a node is up."""
    path = Path(home) / NODE_INFO_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(info, indent=2))
    os.replace(tmp, path)


def read_node_info(home: Path) -> dict[str, Any]:
    """What the node running at ``home`` wrote about itself; a clear error if none is running."""
    path = Path(home) / NODE_INFO_FILE
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"no running node found at {home} (missing {NODE_INFO_FILE}); start it with `fedswarm node ...`") from None
