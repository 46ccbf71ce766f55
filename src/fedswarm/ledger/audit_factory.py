"""The one place the audit backend is chosen: the devnet topic log or Hedera's HCS."""

from __future__ import annotations

from typing import Any

from fedswarm.config import ConfigError, Settings
from fedswarm.ledger.audit import AuditLog, LocalAuditLog
from fedswarm.ledger.audit_hedera import HederaAuditLog


def make_audit_log(settings: Settings, identity: Any | None = None) -> AuditLog:
    """An AuditLog for ``settings.network``.

    Devnet: the local topic log whose URL a running devnet wrote to ``devnet.json``, signing
    with ``identity``'s node key. Hedera networks: hiero-sdk-python paid by
    ``OPERATOR_ID``/``OPERATOR_KEY``. Without an identity (devnet) or an operator (Hedera) the
    log is read-only. With an identity, every dict message is a signed envelope by the node's
    wallet (the key that bids and is paid), so readers can tell the job's trainers and operator
    from anyone else writing to the topic. ``TOPIC_ID`` is the default topic (node-level logs).
    """
    log = _make(settings, identity)
    log.default_topic = settings.topic_id or None
    log.envelope_account = identity.wallet if identity is not None else None
    return log


def _make(settings: Settings, identity: Any | None) -> AuditLog:
    if settings.is_devnet:
        state = settings.devnet_state()
        url = (state.get("audit") or {}).get("url")
        if not url:
            raise ConfigError(
                f"the devnet at {settings.devnet_dir()} has no audit log: restart it with "
                "`fedswarm devnet up`"
            )
        return LocalAuditLog(url, identity.key_pair() if identity is not None else None)
    key = settings.operator_key.get_secret_value() if settings.operator_key else None
    if bool(settings.operator_id) != bool(key):
        raise ConfigError("set both OPERATOR_ID and OPERATOR_KEY (or neither, to only read)")
    return HederaAuditLog(
        operator_id=settings.operator_id,
        operator_key=key,
        network=settings.network,
        mirror_url=settings.mirror_url,
    )
