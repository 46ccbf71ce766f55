"""The trainer role: bid on jobs, train work units, deliver encrypted updates, collect pay.

Where things are:

- :mod:`.role`: :class:`Trainer` (the parts below put together) and :func:`open_trainer`.
- :mod:`.bidding`: market announcements, signed bids, the topics of the jobs we bid on.
- :mod:`.unit`: one unit of work: the checks before it (operator's assignment, the job's terms
  on chain), download, decrypt, train, encrypt under a fresh key; its state machine and
  :meth:`~.unit.UnitFlow.make_update`, the seam test doubles override.
- :mod:`.delivery`: the fair exchange: upload, UnitDone, the operator's receipt (or signed
  refusal), the update's key; no receipt, no more work for that job.
- :mod:`.checks`: the pure checks (assignment, chain terms, receipts, refusals).
- :mod:`.pay`: settlement follow-up, claims with receipts after the settle window, withdrawals.
- :mod:`.core`: options, the shared state, the audit queue, the warm training worker.
- :mod:`.records`: the SQLite state that lets a killed trainer resume, and the receipts.
"""

from fedswarm.roles.trainer.core import TrainerOptions, UnitError
from fedswarm.roles.trainer.role import Trainer, open_trainer
from fedswarm.roles.trainer.unit import TrainedUpdate, UnitInputs

__all__ = ["Trainer", "TrainedUpdate", "TrainerOptions", "UnitError", "UnitInputs", "open_trainer"]
