"""The trainer node's HTTP parts: ``GET /api/v1/trainer/units``, the ``/command`` verbs
``advertize`` and ``units``, its ``/status`` fields and its background task, all built from
the role's own methods (the role knows nothing of HTTP)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from fedswarm.api.app import RoleParts
from fedswarm.api.clients import ClientView, clients_router
from fedswarm.roles.trainer import Trainer


def trainer_parts(trainer: Trainer) -> RoleParts:
    """Routes, /command verbs, the status extra and the background task of ``trainer``."""
    router = APIRouter(prefix="/api/v1/trainer")

    @router.get("/units")
    async def units() -> dict[str, Any]:
        return {"units": trainer.units_public()}

    async def cmd_advertize(args: list[Any]) -> dict[str, Any]:
        return await trainer.advertize()

    async def cmd_units(args: list[Any]) -> dict[str, Any]:
        return {"status": "ok", "units": trainer.units_public()}

    def operators() -> dict[str, str]:  # from the signed announcements the trainer bid on
        return {j.client_peer_id: j.operator for j in trainer.db.jobs() if j.operator}

    clients = clients_router(trainer.node, ClientView(trainer.client_book, operators))
    return RoleParts(routers=[router, clients], commands={"advertize": cmd_advertize, "units": cmd_units},
                     status=trainer.status, tasks=[trainer.run])


def trainer_unavailable(reason: str) -> RoleParts:
    """A trainer without a ledger stays on the mesh (presence, capabilities, price) but cannot
    bid; ``/status`` says why."""
    return RoleParts(status=lambda: {"trainer": {"jobs_unavailable": reason}})
