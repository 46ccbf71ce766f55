"""Topic names and protocol ids: the network's fixed vocabulary."""

from __future__ import annotations

import re

RPC_PROTOCOL = "/fedswarm/rpc/1"
MARKET_TOPIC = "fedswarm/market/1"
# Heartbeats. Only the nodes that keep a first-hand directory subscribe (bootstrap, clients);
# everyone else publishes here without subscribing and learns who is online from the
# bootstrap's mesh summary on the directory topic. Hearing every heartbeat made each node's idle
# CPU grow with the network (O(N^2) messages in all).
PRESENCE_TOPIC = "fedswarm/presence/1"
# The bootstrap's mesh summary, heard by the nodes that do not hear heartbeats (trainers). Its
# own topic, not the market's: a trainer forwards what it hears to its other mesh peers, and on
# the market topic every trainer would have sent each summary on to every client.
DIRECTORY_TOPIC = "fedswarm/directory/1"
_JOB_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def job_topic(job_id: str) -> str:
    """The pubsub topic of one job (round starts, round results)."""
    if not _JOB_ID.match(job_id):
        raise ValueError(f"invalid job id {job_id!r}: 1-64 chars of letters, digits, - or _")
    return f"fedswarm/job/{job_id}/1"


def job_id_of_topic(topic: str) -> str | None:
    """The job id inside a job topic name, or None if ``topic`` is not a job topic."""
    parts = topic.split("/")
    if len(parts) == 4 and parts[0] == "fedswarm" and parts[1] == "job" and parts[3] == "1":
        return parts[2] if _JOB_ID.match(parts[2]) else None
    return None
