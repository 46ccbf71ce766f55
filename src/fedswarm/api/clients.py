"""``GET /api/v1/clients``: the client nodes of the network and how much work each rejects.

Every node answers it. The entries are the client nodes in the node's directory (and the node
itself when it is a client), each with its advertised public API (``PeerRecord.api``: the
delegate URL a wallet UI may use), whether it is online, its operator address when this node
knows it, and that operator's rejection rate from the escrow's settlement events
(:class:`fedswarm.market.client_book.ClientBook`: read incrementally from the deployment block,
never from block 0). ``rejection_rate`` is ``null`` when this node cannot read the chain, does
not know the operator, or knows no settled unit of it (``units_judged`` 0).

A node learns a client's operator from what it has verified: a client node knows its own
wallet; a trainer knows the operators whose signed job announcements it bid on. The directory
itself carries no addresses (a heartbeat is unsigned, so an address in it would prove nothing).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

import trio
from fastapi import APIRouter

from fedswarm.market.client_book import ClientBook
from fedswarm.market.reputation import ClientRecord
from fedswarm.p2p.node import Node
from fedswarm.protocol.messages import Role

__all__ = ["REFRESH_S", "ClientView", "client_entry", "clients_router"]

log = logging.getLogger("fedswarm.api")
REFRESH_S = 30.0  # how often a client node re-reads the escrow's events (incrementally)

Operators = Callable[[], Mapping[str, str]]  # client peer id -> operator address


class ClientView:
    """What the route needs from a node's role: a client book (None: no chain) and the
    operators the role has verified. A trainer's book is refreshed by the trainer's own task;
    a client node runs :meth:`run` as one of its background tasks."""

    def __init__(self, book: ClientBook | None, operators: Operators | None = None) -> None:
        self.book = book
        self.operators = operators or dict

    def records(self) -> Mapping[str, ClientRecord] | None:
        """The records as last read (no chain access); None without a chain."""
        return self.book.clients if self.book is not None else None

    async def run(self) -> None:
        """Refresh the book every :data:`REFRESH_S` seconds, in a thread; a failed read is
        logged and retried (the records read so far stay)."""
        while self.book is not None:
            try:
                await trio.to_thread.run_sync(self.book.refresh)
            except Exception as exc:  # the chain being away must not stop the node
                log.warning("client rejection rates not refreshed: %s", exc)
            await trio.sleep(REFRESH_S)

    def record(self, address: str | None) -> ClientRecord | None:
        """One address's record as last read (no chain access)."""
        return self.book.record(address) if self.book is not None else None


def client_entry(peer_id: str, api: str | None, online: bool, operator: str | None,
                 records: Mapping[str, ClientRecord] | None) -> dict[str, Any]:
    """One entry of the answer (see the module doc for when ``rejection_rate`` is null)."""
    rec = records.get(operator.lower()) if records is not None and operator else None
    judged = rec.settled if rec is not None else 0
    return {"peer_id": peer_id, "api": api, "online": online, "operator": operator,
            "rejection_rate": round(rec.rejection_rate, 4) if rec is not None and judged else None,
            "units_judged": judged}


def clients_router(node: Node, view: ClientView | None = None) -> APIRouter:
    """The route, reading ``node``'s directory and ``view`` (None: a node without a chain)."""
    router = APIRouter(prefix="/api/v1")

    @router.get("/clients")
    async def clients() -> dict[str, Any]:
        records = view.records() if view is not None else None
        operators = {k: v for k, v in (view.operators() if view is not None else {}).items()}
        rows: list[dict[str, Any]] = []
        if node.role == Role.CLIENT:
            rows.append(client_entry(node.peer_id, getattr(node, "api_addr", None), True,
                                     node.identity.address, records))
        for rec in node.directory.records(online_only=False, role=Role.CLIENT):
            if rec.peer_id == node.peer_id:
                continue
            rows.append(client_entry(rec.peer_id, rec.api, node.directory.is_online(rec),
                                     operators.get(rec.peer_id), records))
        rows.sort(key=lambda r: (not r["online"], r["peer_id"]))
        return {"clients": rows}

    return router
