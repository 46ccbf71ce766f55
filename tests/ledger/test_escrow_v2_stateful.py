"""Random call sequences against FedSwarmEscrowV2 (hypothesis state machine).

Parties: two payers, two operators, three trainers; jobs are funded, trainers added, receipts
issued off chain, verdicts settled, receipts claimed (and forged or replayed ones tried), jobs
completed, cancelled and released, balances withdrawn, time moves. After every step:

- the contract holds exactly Σ job escrow + Σ pending, and every pending balance equals what
  the events credited minus what was withdrawn (no credit without an event);
- no trainer is paid more than price × its units on any job;
- every payment comes from an operator's verdict (sent by the operator) or a receipt the
  operator really issued for that job, trainer, round, unit, update and time;
- a released job has returned to its payer everything it did not pay to trainers.

And on each claim: a receipt the operator issued always pays while it is due (between
issuedAt + settleWindow and the release time, issued before the job closed, its unit not
settled, the trainer's budget not used up), whatever else the operator did; a receipt forged,
or replayed on another job, by another trainer, from another chain or another contract, never
pays.
"""

from __future__ import annotations

from collections import defaultdict

from _escrow_v2_chain import PRICE, Reverted, V2Chain
from eth_utils import keccak
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from fedswarm.ledger.escrow_types import JobStatusV2, JobTerms, TrainerTerms, UnitStatusV2, Verdict
from fedswarm.ledger.receipts import Receipt, malleable_twin

_CHAIN: V2Chain | None = None
_TWIN = None  # a second deployment, for cross-contract replays


def shared_chain() -> V2Chain:
    # Deploying on py-evm takes seconds: one chain for all examples, a snapshot per example.
    global _CHAIN, _TWIN
    if _CHAIN is None:
        _CHAIN = V2Chain()
        _TWIN = _CHAIN.deploy(_CHAIN.artifact, 100)
    return _CHAIN


small = st.integers(min_value=0, max_value=2)
idx = st.integers(min_value=0, max_value=50)


class EscrowV2Machine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.c = shared_chain()
        self.twin = _TWIN
        self.snapshot = self.c.tester.take_snapshot()
        # py-evm dates a pending block max(parent + 1, wall clock): run far ahead of the wall
        # clock so every block is exactly one second after the previous one (or the warp).
        self.c.tester.time_travel(self.c.now() + 10**6)
        a = self.c.accounts
        self.payers, self.operators, self.trainers = a[1:3], a[3:5], a[5:8]
        self.everyone = sorted(set(a[1:8]))
        self.jobs: list[bytes] = []
        self.funded: dict[bytes, int] = {}
        self.nonce = 0
        self.receipts: list[tuple[Receipt, bytes]] = []  # issued by the job's operator
        self.issued: set[tuple] = set()
        self.fresh_unit = 10  # units above the small ones the other rules use
        self.credited: dict[str, int] = defaultdict(int)
        self.withdrawn: dict[str, int] = defaultdict(int)
        self.paid: dict[tuple[bytes, str], int] = defaultdict(int)
        self.refunded: dict[bytes, int] = defaultdict(int)

    def teardown(self) -> None:
        self.c.tester.revert_to_snapshot(self.snapshot)

    # ------------------------------------------------------------------ helpers

    def _do(self, call, sender: str, value: int = 0) -> bool:
        try:
            receipt = self.c.tx(call, sender, value)
        except Reverted:
            return False  # a refused call must change nothing; the invariants check that
        for ev in self.c.events(receipt, "UnitSettled"):
            job = self.c.job(ev["jobKey"])
            assert sender == job.operator, "a verdict not sent by the operator took effect"
            self._credit(ev["jobKey"], ev["trainer"], ev["amount"])
        for ev in self.c.events(receipt, "UnitClaimed"):
            key = (ev["jobKey"], ev["round"], ev["unit"], ev["trainer"], ev["updateHash"], ev["issuedAt"])
            assert key in self.issued, "paid a receipt the operator never issued"
            self._credit(ev["jobKey"], ev["trainer"], ev["amount"])
        for ev in self.c.events(receipt, "Refunded"):
            self.credited[ev["payer"]] += ev["amount"]
            self.refunded[ev["jobKey"]] += ev["amount"]
        for ev in self.c.events(receipt, "Withdrawn"):
            self.withdrawn[ev["account"]] += ev["amount"]
        return True

    def _credit(self, job_key: bytes, trainer: str, amount: int) -> None:
        self.credited[trainer] += amount
        self.paid[(job_key, trainer)] += amount

    def _job(self, i: int) -> bytes:
        return self.jobs[i % len(self.jobs)]

    # ------------------------------------------------------------------ rules

    @rule(payer=st.integers(0, 1), op=st.integers(0, 1), n=st.integers(0, 3),
          prices=st.lists(st.integers(0, 2), min_size=3, max_size=3),
          units=st.lists(st.integers(1, 2), min_size=3, max_size=3), extra=st.integers(0, 4),
          settle=st.sampled_from([0, 30, 200]), budget=st.integers(3, 8), short=st.integers(0, 5))
    def fund(self, payer, op, n, prices, units, extra, settle, budget, short) -> None:
        trainers = [TrainerTerms(self.trainers[i], prices[i] * PRICE, units[i]) for i in range(n)]
        need = sum(t.price * t.units for t in trainers)
        # Now and then a price above the cap or too little value: refused, changes nothing.
        value = max(0, need + extra * PRICE - (PRICE if short == 0 else 0))
        cap = PRICE if short == 1 else 2 * PRICE
        terms = JobTerms(self.operators[op], self.c.now() + 300, settle, 100, cap, budget)
        self.nonce += 1
        key = self.c.key(self.nonce, self.payers[payer])
        call = self.c.fn().fund(self.nonce, terms.as_tuple(), [t.as_tuple() for t in trainers])
        if self._do(call, self.payers[payer], value):
            self.jobs.append(key)
            self.funded[key] = value

    def _trainer_of(self, key: bytes, who: int) -> str:
        """Mostly a trainer registered for the job (else any)."""
        registered = [t for t in self.trainers if self.c.fn().trainer(key, t).call()[3]]
        pool = registered if registered and who < 5 else self.trainers
        return pool[who % len(pool)]

    @precondition(lambda self: self.jobs)
    @rule(j=idx, who=small, price=st.integers(0, 3), units=st.integers(1, 2), by=st.sampled_from(["op", "payer", "x"]))
    def add_trainer(self, j, who, price, units, by) -> None:
        key = self._job(j)
        job = self.c.job(key)
        sender = {"op": job.operator, "payer": job.payer, "x": self.trainers[who]}[by]
        self._do(self.c.fn().addTrainers(key, [TrainerTerms(self.trainers[who], price * PRICE, units).as_tuple()]), sender)

    @precondition(lambda self: self.jobs)
    @rule(j=idx, who=st.integers(0, 5), rnd=small, unit=small, offset=st.sampled_from([-50, 0, 0, 20]))
    def issue_receipt(self, j, who, rnd, unit, offset) -> None:
        self._issue(j, who, rnd, unit, offset)

    @precondition(lambda self: self.jobs)
    @rule(j=idx, who=st.integers(0, 5), rnd=small, unit=small, offset=st.sampled_from([-50, 0, 20]))
    def issue_then_claim_when_due(self, j, who, rnd, unit, offset) -> None:
        self._issue(j, who, rnd, unit, offset)
        self.claim(len(self.receipts) - 1, True)

    def _issue(self, j: int, who: int, rnd: int, unit: int, offset: int) -> None:
        key = self._job(j)
        job = self.c.job(key)
        trainer = self._trainer_of(key, who)
        r = Receipt(key, rnd, unit, trainer, keccak(text=f"{rnd}{unit}{trainer}"),
                    max(0, self.c.now() + offset))
        self.receipts.append((r, self.c.sign(r, job.operator)))
        self.issued.add((key, rnd, unit, r.trainer, r.update_hash, r.issued_at))

    def _wait_until_claimable(self, r: Receipt) -> None:
        job = self.c.job(r.job_key)
        if job.status != JobStatusV2.NONE and r.issued_at + job.settle_window > self.c.now() + 1:
            self.c.tester.time_travel(r.issued_at + job.settle_window)

    def _due(self, r: Receipt) -> bool:
        """Would a correctly signed claim of ``r`` pay in the next block?"""
        job = self.c.job(r.job_key)
        reg = self.c.fn().trainer(r.job_key, r.trainer).call()
        unit = self.c.fn().unitState(r.job_key, r.round, r.unit).call()
        now = self.c.now() + 1  # the block the claim is mined in
        return (job.status not in (JobStatusV2.NONE, JobStatusV2.RELEASED) and r.issued_at <= job.close_at
                and r.issued_at + job.settle_window <= now <= job.release_at
                and reg[3] and unit[1] == UnitStatusV2.NONE and reg[2] < reg[1])

    @precondition(lambda self: self.receipts)
    @rule(i=idx, wait=st.booleans())
    def claim(self, i, wait) -> None:
        r, sig = self.receipts[i % len(self.receipts)]
        if wait:  # go to the first second the receipt is claimable, if that is ahead
            self._wait_until_claimable(r)
        due = self._due(r)
        event(f"issued receipt claimed while due: {due}")
        ok = self._do(self.c.fn().claim(r.job_key, r.as_tuple(), sig), r.trainer)
        assert ok == due, f"claim {'failed' if due else 'paid'} unexpectedly: {r}"

    @precondition(lambda self: self.jobs)
    @rule(j=idx, who=st.integers(0, 5), how=st.sampled_from(["self-signed", "other-job", "other-trainer",
                                                              "other-chain", "other-contract", "high-s"]),
          k=idx, thief=small)
    def replay(self, j, who, how, k, thief) -> None:
        """Forged and replayed variants of a fresh receipt, tried once it is claimable: they
        never pay; then the genuine receipt is claimed (and must pay if due)."""
        self.fresh_unit += 1
        self._issue(j, who, 0, self.fresh_unit, 0)
        r, sig = self.receipts[-1]
        op = self.c.job(r.job_key).operator
        fake, fsig = r, sig
        if how == "self-signed":  # a unit the operator never acknowledged
            fake = Receipt(r.job_key, r.round, r.unit + 3, r.trainer, r.update_hash, r.issued_at)
            fsig = self.c.sign(fake, r.trainer)
        elif how == "other-job":
            fake = Receipt(self._job(k), r.round, r.unit, r.trainer, r.update_hash, r.issued_at)
            if fake.job_key == r.job_key or self.c.job(fake.job_key).operator != op:
                return
        elif how == "other-trainer":
            fake = Receipt(r.job_key, r.round, r.unit, self._trainer_of(r.job_key, thief), r.update_hash, r.issued_at)
            if fake.trainer == r.trainer:
                return
        elif how == "other-chain":
            fsig = self.c.sign(r, op, self.c.domain(chain_id=296))
        elif how == "other-contract":
            fsig = self.c.sign(r, op, self.c.domain(contract=self.twin.address))
        else:
            fsig = malleable_twin(sig)
        self._wait_until_claimable(fake)
        due = self._due(fake)
        event(f"forged receipt ({how}) tried while due: {due}")
        assert not self._do(self.c.fn().claim(fake.job_key, fake.as_tuple(), fsig), fake.trainer), f"a {how} receipt paid"
        self.claim(len(self.receipts) - 1, True)

    @precondition(lambda self: self.jobs)
    @rule(j=idx, picks=st.lists(st.tuples(small, small, st.integers(0, 5), st.booleans()), min_size=1, max_size=4),
          as_op=st.integers(0, 4))
    def settle(self, j, picks, as_op) -> None:
        key = self._job(j)
        job = self.c.job(key)
        sender = job.operator if as_op else job.payer
        verdicts = []
        for r, u, w, ok in picks:
            trainer = self._trainer_of(key, w)
            verdicts.append(Verdict(r, u, trainer, keccak(text=f"{r}{u}{trainer}"), ok,
                                    b"\0" * 32 if ok else keccak(text="bad")))
        self._do(self.c.fn().settle(key, [v.as_tuple() for v in verdicts]), sender)

    @precondition(lambda self: self.jobs)
    @rule(j=idx, as_op=st.booleans())
    def complete(self, j, as_op) -> None:
        key = self._job(j)
        job = self.c.job(key)
        self._do(self.c.fn().complete(key, b"ptr", keccak(text="res")), job.operator if as_op else job.payer)

    @precondition(lambda self: self.jobs)
    @rule(j=idx, by=st.sampled_from(["op", "payer", "x"]))
    def cancel(self, j, by) -> None:
        key = self._job(j)
        job = self.c.job(key)
        self._do(self.c.fn().cancel(key), {"op": job.operator, "payer": job.payer, "x": self.trainers[0]}[by])

    @precondition(lambda self: self.jobs)
    @rule(j=idx, who=small)
    def release(self, j, who) -> None:
        self._do(self.c.fn().release(self._job(j)), self.trainers[who])

    @precondition(lambda self: any(self.credited[a] > self.withdrawn[a] for a in self.everyone))
    @rule(who=st.integers(0, 6))
    def withdraw(self, who) -> None:
        self._do(self.c.fn().withdraw(), self.everyone[who])

    @rule(seconds=st.sampled_from([5, 40, 150, 700]))
    def warp(self, seconds) -> None:
        self.c.warp(seconds)

    # ------------------------------------------------------------------ invariants

    @invariant()
    def money_is_conserved(self) -> None:
        escrow = 0
        for key in self.jobs:
            job = self.c.job(key)
            assert job.free + job.reserved == job.escrow
            escrow += job.escrow
        pending = {a: self.c.pending(a) for a in self.everyone}
        assert self.c.balance(self.c.address) == escrow + sum(pending.values())
        for a in self.everyone:
            assert pending[a] == self.credited[a] - self.withdrawn[a]

    @invariant()
    def nobody_paid_beyond_price_times_units(self) -> None:
        for (key, trainer), amount in self.paid.items():
            price, units, used, _ = self.c.fn().trainer(key, trainer).call()
            assert amount <= price * units and amount <= price * used

    @invariant()
    def released_jobs_return_all_not_paid(self) -> None:
        for key in self.jobs:
            if self.c.job(key).status == JobStatusV2.RELEASED:
                paid = sum(v for (k, _), v in self.paid.items() if k == key)
                assert self.refunded[key] == self.funded[key] - paid


TestEscrowV2Machine = EscrowV2Machine.TestCase
TestEscrowV2Machine.settings = settings(
    max_examples=10,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
