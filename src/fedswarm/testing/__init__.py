"""Fault-injecting test doubles for tests and the demo, on top of the real roles.

- :mod:`.faults`: trainers that cheat (:class:`~.faults.PoisonTrainer`,
  :class:`~.faults.LazyTrainer`) by overriding the one step that makes a unit's update.
- :mod:`.client`: a client that never settles (its trainers must claim their pay).
- :mod:`.node`: ``python -m fedswarm.testing.node ROLE --fault F ...``, the normal node with the
  faulty class (``fedswarm.roles.launcher`` starts it with ``fault=...``).

Nothing below this layer knows these exist: the normal node, its API and the job terms have
no notion of faults.
"""
