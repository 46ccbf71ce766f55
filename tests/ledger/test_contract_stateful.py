"""Random call sequences against FedSwarmEscrow: money is conserved after every step.

After each step: the contract's balance equals the sum of every job's remaining escrow plus
every pending balance; per job reserved ≤ escrow and outstanding ≤ reserved; and nobody has
withdrawn more than was credited to them (tracked from the Credited / Withdrawn events).
"""

from __future__ import annotations

from collections import defaultdict

from _escrow_chain import ZERO32, EscrowChain, Reverted
from eth_utils import keccak
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

_CHAIN: EscrowChain | None = None


def shared_chain() -> EscrowChain:
    # Deploying on py-evm takes seconds: one chain for all examples, a snapshot per example.
    global _CHAIN
    if _CHAIN is None:
        _CHAIN = EscrowChain()
    return _CHAIN


small = st.integers(min_value=0, max_value=2)


class EscrowMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.c = shared_chain()
        self.snapshot = self.c.tester.take_snapshot()
        self.owners = self.c.accounts[1:3]
        self.trainers = self.c.accounts[3:6]
        self.everyone = self.owners + self.trainers
        self.jobs: list[bytes] = []
        self.credited: dict[str, int] = defaultdict(int)
        self.withdrawn: dict[str, int] = defaultdict(int)

    def teardown(self) -> None:
        self.c.tester.revert_to_snapshot(self.snapshot)

    # ------------------------------------------------------------------ helpers

    def _do(self, call, sender: str, value: int = 0) -> None:
        try:
            receipt = self.c.tx(call, sender, value)
        except Reverted:
            return  # a refused call must change nothing; the invariants check that
        for ev in self.c.events(receipt, "Credited"):
            self.credited[ev["account"]] += ev["amount"]
        for ev in self.c.events(receipt, "Withdrawn"):
            self.withdrawn[ev["account"]] += ev["amount"]

    def _job(self, i: int) -> bytes:
        return self.jobs[i % len(self.jobs)]

    def _owner(self, job_id: bytes) -> str:
        owner = self.c.fn().job(job_id).call()[0]
        # A job whose creation reverted has no owner: act as the first owner then.
        return self.owners[0] if int(owner, 16) == 0 else owner

    # ------------------------------------------------------------------ rules

    @rule(owner=st.integers(0, 1), amount=st.integers(1, 40), window=st.sampled_from([0, 50, 500]))
    def create_job(self, owner: int, amount: int, window: int) -> None:
        job_id = keccak(text=f"job-{len(self.jobs)}")
        self.jobs.append(job_id)
        call = self.c.fn().createJob(job_id, ZERO32, self.c.now() + 1000, window)
        self._do(call, self.owners[owner], amount)

    @precondition(lambda self: self.jobs)
    @rule(j=small, who=small, price=st.integers(0, 5), units=st.integers(1, 3), as_owner=st.booleans())
    def add_trainer(self, j: int, who: int, price: int, units: int, as_owner: bool) -> None:
        job_id = self._job(j)
        sender = self._owner(job_id) if as_owner else self.trainers[who]
        self._do(self.c.fn().addTrainers(job_id, [self.trainers[who]], [price], [units]), sender)

    @precondition(lambda self: self.jobs)
    @rule(j=small, who=small, rnd=small, unit=small)
    def commit(self, j: int, who: int, rnd: int, unit: int) -> None:
        h = keccak(text=f"{j}{who}{rnd}{unit}")
        self._do(self.c.fn().commitUnit(self._job(j), rnd, unit, h), self.trainers[who])

    @precondition(lambda self: self.jobs)
    @rule(j=small, rnd=small, units=st.lists(small, min_size=1, max_size=3, unique=True),
          accepted=st.lists(st.booleans(), min_size=3, max_size=3), as_owner=st.booleans())
    def settle(self, j: int, rnd: int, units: list[int], accepted: list[bool], as_owner: bool) -> None:
        job_id = self._job(j)
        sender = self._owner(job_id) if as_owner else self.trainers[0]
        flags = accepted[: len(units)]
        reasons = [ZERO32 if ok else keccak(text="bad") for ok in flags]
        self._do(self.c.fn().settle(job_id, rnd, units, flags, reasons), sender)

    @precondition(lambda self: self.jobs)
    @rule(j=small, who=small, rnd=small, unit=small)
    def claim(self, j: int, who: int, rnd: int, unit: int) -> None:
        self._do(self.c.fn().claimUnsettled(self._job(j), rnd, unit), self.trainers[who])

    @precondition(lambda self: self.jobs)
    @rule(j=small)
    def complete(self, j: int) -> None:
        job_id = self._job(j)
        self._do(self.c.fn().completeJob(job_id, b"result"), self._owner(job_id))

    @precondition(lambda self: self.jobs)
    @rule(j=small)
    def cancel(self, j: int) -> None:
        job_id = self._job(j)
        self._do(self.c.fn().cancelJob(job_id), self._owner(job_id))

    @rule(who=st.integers(0, 4))
    def withdraw(self, who: int) -> None:
        self._do(self.c.fn().withdraw(), self.everyone[who])

    @rule(seconds=st.sampled_from([10, 100, 2000]))
    def warp(self, seconds: int) -> None:
        self.c.warp(seconds)

    # ------------------------------------------------------------------ invariants

    @invariant()
    def money_is_conserved(self) -> None:
        f = self.c.fn()
        escrow = 0
        for job_id in self.jobs:
            job = f.job(job_id).call()
            assert job[8] <= job[7] <= job[6], "outstanding ≤ reserved ≤ escrow"
            escrow += job[6]
        pending = {a: self.c.pending(a) for a in self.everyone}
        assert self.c.balance(self.c.address) == escrow + sum(pending.values())
        for a in self.everyone:
            assert self.withdrawn[a] <= self.credited[a]
            assert pending[a] == self.credited[a] - self.withdrawn[a]


TestEscrowMachine = EscrowMachine.TestCase
TestEscrowMachine.settings = settings(
    max_examples=8,
    stateful_step_count=12,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
