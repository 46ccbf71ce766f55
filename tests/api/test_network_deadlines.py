"""The network deadlines are settings with defaults; the node's CLI flags win over them."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from fedswarm.api.runtime import _node_opts
from fedswarm.config import Settings, load_settings
from fedswarm.protocol.messages import Role


def test_defaults_env_and_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    s = load_settings()
    assert (s.heartbeat_s, s.peer_timeout_s, s.dial_timeout_s, s.rpc_timeout_s) == (1.0, 4.0, 3.0, 15.0)
    monkeypatch.setenv("FEDSWARM_PEER_TIMEOUT_S", "7")
    monkeypatch.setenv("FEDSWARM_RPC_TIMEOUT_S", "20")
    s = load_settings()
    assert s.peer_timeout_s == 7.0 and s.rpc_timeout_s == 20.0
    # --peer-timeout 9 given, --heartbeat not: the flag wins where given, the setting elsewhere
    opts = _node_opts(Role.BOOTSTRAP, {"peer_timeout": 9.0, "heartbeat_interval": None}, s)
    assert opts == {"heartbeat_interval": 1.0, "peer_timeout": 9.0, "rpc_timeout": 20.0}


@pytest.mark.parametrize("name", ["FEDSWARM_HEARTBEAT_S", "FEDSWARM_PEER_TIMEOUT_S", "FEDSWARM_DIAL_TIMEOUT_S",
                                  "FEDSWARM_RPC_TIMEOUT_S"])
def test_a_zero_or_negative_deadline_is_refused(name: str) -> None:
    for bad in (0, -1):
        with pytest.raises(ValidationError):
            Settings(**{name: bad})
