"""A round whose reference made its own chunk worse (an overshooting learning rate) is no
yardstick for "a fair share of what the reference achieves": honest units are not rejected on
their own-chunk share then, while norm and direction still catch a lazy one."""

from __future__ import annotations

import numpy as np
import pytest

from fedswarm.learning.reference import UpdateHistory
from fedswarm.learning.review import VALIDATION, UnitInput, review_round
from fedswarm.learning.review_policy import ReexecPolicy, TrainerRecords

G = np.zeros(64, np.float32)
RNG = np.random.default_rng(3)
BASE = RNG.normal(size=64)
HONEST = {f"c{i}": (G + BASE + 1.2 * RNG.normal(size=64)).astype(np.float32) for i in range(3)}


def losses(own_after: float):
    def evaluate(params: np.ndarray, key: str) -> float:
        moved = not np.allclose(params, G)
        if key == VALIDATION:
            return 0.9 if moved else 1.0
        return own_after if moved else 1.0  # every trained model scores own_after on a chunk

    return evaluate


def run(own_after: float, secret: bytes) -> object:
    units = [UnitInput("u0", "t0", "c0", HONEST["c0"], 100, 1, 100),
             UnitInput("u1", "t1", "c1", HONEST["c1"], 100, 1, 100),
             UnitInput("lazy", "t2", "c2", G.copy(), 100, 1, 100)]
    chunk_of = {u.unit_id: u.chunk for u in units}
    return review_round(G, units, round_index=0, secret=secret, evaluate=losses(own_after),
                        reexecute=lambda uid: HONEST[chunk_of[uid]].copy(), history=UpdateHistory(seed=1),
                        records=TrainerRecords(), policy=ReexecPolicy(max_per_round=1))


@pytest.mark.parametrize("secret", [bytes([i]) * 32 for i in range(6)])
def test_honest_units_pass_when_the_reference_made_its_chunk_worse(secret: bytes) -> None:
    rep = run(own_after=1.2, secret=secret)
    assert rep.reference_own_drop == pytest.approx(-0.2)
    assert sorted(rep.rejected) == ["lazy"], {u: r.verdict.reason for u, r in rep.units.items()}
    judged = [u for u in ("u0", "u1") if u not in rep.reexecuted]
    assert all(u in rep.doubtful for u in judged)  # re-executed with priority where budget allows
    assert rep.evidence("u0")["reference_own_drop"] == pytest.approx(-0.2)


@pytest.mark.parametrize("secret", [bytes([i]) * 32 for i in range(6)])
def test_own_share_is_judged_when_the_reference_learned(secret: bytes) -> None:
    rep = run(own_after=0.7, secret=secret)  # everyone removed 30 % of its chunk's loss
    assert rep.reference_own_drop == pytest.approx(0.3)
    assert sorted(rep.rejected) == ["lazy"]
    lazy = rep.units["lazy"].verdict.reason
    assert "norm ratio" in lazy or "re-execution" in lazy


def test_an_overshooting_reference_is_no_yardstick_for_own_shares() -> None:
    """The 85k benchmark cell (lr 0.05, momentum 0.9): the reference lowered its own chunk's loss
    by 15 % but raised the held-out loss 2.6x, and honest units made their own chunks worse. The
    own-chunk share is not judged then (it refused every honest unit of such a round); norm and
    direction still refuse the lazy one, and the own share is judged again in a healthy round."""
    def evaluate(own: dict[str, float], val_moved: float):
        def ev(params: np.ndarray, key: str) -> float:
            moved = not np.allclose(params, G)
            if key == VALIDATION:
                return val_moved if moved else 1.0
            if not moved:
                return 1.0
            return own["ref"] if np.allclose(params, HONEST["c0"]) else own["other"]
        return ev

    units = [UnitInput("u0", "t0", "c0", HONEST["c0"], 100, 1, 100),
             UnitInput("u1", "t1", "c1", HONEST["c1"], 100, 1, 100),
             UnitInput("lazy", "t2", "c2", G.copy(), 100, 1, 100)]
    chunk_of = {u.unit_id: u.chunk for u in units}

    def review(val_moved: float) -> object:
        secret = next(s for s in (bytes([i]) * 32 for i in range(64))
                      if review_round(G, units[:2], round_index=0, secret=s, evaluate=lambda p, k: 1.0,
                                      reexecute=lambda uid: HONEST[chunk_of[uid]].copy(),
                                      history=UpdateHistory(seed=1), records=TrainerRecords(),
                                      policy=ReexecPolicy(max_per_round=1)).reference == "u0")
        return review_round(G, units, round_index=0, secret=secret, evaluate=evaluate({"ref": 0.85, "other": 1.1},
                                                                                      val_moved),
                            reexecute=lambda uid: HONEST[chunk_of[uid]].copy(), history=UpdateHistory(seed=1),
                            records=TrainerRecords(), policy=ReexecPolicy(max_per_round=1))

    rep = review(val_moved=2.6)  # the reference (u0) overshot: held-out loss 2.6x
    assert rep.reference == "u0" and rep.reference_own_drop == pytest.approx(0.15)
    assert sorted(rep.rejected) == ["lazy"], {u: r.verdict.reason for u, r in rep.units.items()}
    rep = review(val_moved=0.9)  # a healthy round: u1's own share (-0.1 / 0.15) is refused
    assert sorted(rep.rejected) == ["lazy", "u1"]
    assert "own-chunk loss share" in rep.units["u1"].verdict.reason


def test_a_low_own_share_is_excused_only_for_work_specific_to_its_own_rows() -> None:
    """Round 1 of the 85k cell: the reference removed 15 % of its chunk's loss and raised the
    held-out loss 10 %; an honest unit raised its own chunk's loss 5 % but held-out data's 20 %
    (it learned its own rows: gap +0.15) and is as good as the reference on held-out data: its
    low share is a doubt, not a refusal. Generic work that hurts its own rows as much as unseen
    ones (gap 0) is still refused on its share."""
    own = {"c0": 0.85, "c1": 0.95, "c2": 1.2}  # losses after training, by chunk of the unit
    val = {"c0": 1.1, "c1": 1.2, "c2": 1.2}

    def ev(params: np.ndarray, key: str) -> float:
        moved = next((c for c, p in HONEST.items() if np.allclose(params, p)), None)
        if moved is None:
            return 1.0
        return val[moved] if key == VALIDATION else (own[moved] if key == moved else 1.0)

    units = [UnitInput(f"u{i}", f"t{i}", f"c{i}", HONEST[f"c{i}"], 100, 1, 100) for i in range(3)]
    secret = next(s for s in (bytes([i]) * 32 for i in range(64))
                  if review_round(G, units, round_index=0, secret=s, evaluate=lambda p, k: 1.0,
                                  reexecute=lambda uid: HONEST["c" + uid[1]].copy(), history=UpdateHistory(seed=1),
                                  records=TrainerRecords(), policy=ReexecPolicy(max_per_round=1)).reference == "u0")
    own["c1"] = 1.05  # own drop -0.05, validation drop -0.2: gap +0.15, excess +0.1
    rep = review_round(G, units, round_index=0, secret=secret, evaluate=ev,
                       reexecute=lambda uid: HONEST["c" + uid[1]].copy(), history=UpdateHistory(seed=1),
                       records=TrainerRecords(), policy=ReexecPolicy(max_per_round=1))
    assert rep.reference == "u0" and rep.reference_own_drop == pytest.approx(0.15)
    assert "u1" in rep.accepted and "u1" in rep.doubtful, rep.units["u1"].verdict.reason
    assert rep.rejected == ["u2"] and "own-chunk loss share" in rep.units["u2"].verdict.reason
