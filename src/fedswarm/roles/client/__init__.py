"""The client role: a restartable state machine that runs paid federated-training jobs.

Start at :mod:`.role` (:class:`ClientRole` and :func:`open_client`); each phase of a job has
its own module: :mod:`.submission`, :mod:`.bidding` (and escrow), :mod:`.rounds`,
:mod:`.exchange` (receipts), :mod:`.review` (checks and aggregation), :mod:`.settlement`
(the background settler), :mod:`.finish`. The durable
records are in :mod:`.records`, the shared parts in :mod:`.services`, the unit training
settings and strategy state in :mod:`.training`.
"""

from fedswarm.roles.client.records import (
    TERMINAL,
    ClientDB,
    EscrowRecord,
    JobRecord,
    JobState,
    JobTerms,
    RoundRecord,
    UnitRecord,
    UnitState,
)
from fedswarm.roles.client.role import ClientRole, open_client
from fedswarm.roles.client.services import (
    JobFailed,
    JobNotFound,
    SubmitError,
    in_thread,
    new_job_id,
)

__all__ = [
    "TERMINAL",
    "EscrowRecord",
    "ClientDB",
    "ClientRole",
    "JobFailed",
    "JobNotFound",
    "JobRecord",
    "JobState",
    "JobTerms",
    "RoundRecord",
    "SubmitError",
    "UnitRecord",
    "UnitState",
    "in_thread",
    "new_job_id",
    "open_client",
]
