"""The trainer's SQLite state and its pure helpers (fast, no processes)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from nacl.public import PrivateKey

from fedswarm.learning.weights import load_weights_bytes, save_weights_bytes, save_weights_file
from fedswarm.roles.trainer import UnitError
from fedswarm.roles.trainer.records import TrainerDB, UnitState
from fedswarm.roles.trainer.unit import _open_key
from fedswarm.storage.sealed import seal_key_b64
from fedswarm.testing.faults import POISON_SCALE, poison_update


def test_units_survive_reopen_and_are_not_taken_twice(tmp_path: Path) -> None:
    # Prepare
    db = TrainerDB(tmp_path / "t.db")
    assert db.add_job("j1", "12D3KooWclient", "0.0.5", 10)
    assert not db.add_job("j1", "12D3KooWother", "0.0.6", 99)  # first record wins

    # Execute
    assert db.add_unit("j1", 0, 1, {"x": 1}, deadline=123.0)
    assert not db.add_unit("j1", 0, 1, {"x": 2}, deadline=456.0)  # held
    db.set_unit(("j1", 0, 1), UnitState.UPLOADING, update_sha256="ab" * 32, update_size=7)
    db.close()
    db = TrainerDB(tmp_path / "t.db")

    # Assert
    rec = db.unit("j1", 0, 1)
    assert rec is not None and rec.state == UnitState.UPLOADING and rec.work == {"x": 1}
    assert rec.update_sha256 == "ab" * 32 and rec.update_size == 7
    assert "work" not in rec.public()
    assert db.job("j1").client_peer_id == "12D3KooWclient"  # type: ignore[union-attr]
    assert [u.key for u in db.units(states=(UnitState.UPLOADING,))] == [("j1", 0, 1)]


def test_failed_unit_can_be_taken_again_and_jobs_finish_once(tmp_path: Path) -> None:
    db = TrainerDB(tmp_path / "t.db")
    db.add_job("j1", "12D3KooWclient", "0.0.5", 10)
    db.add_unit("j1", 0, 0, {}, deadline=1.0)
    db.set_unit(("j1", 0, 0), UnitState.FAILED, reason="bad hash")
    assert db.add_unit("j1", 0, 0, {"again": True}, deadline=2.0)
    assert db.unit("j1", 0, 0).state == UnitState.ACCEPTED  # type: ignore[union-attr]
    assert db.finish_job("j1", "done") and not db.finish_job("j1", "done")
    assert db.counts() == {"accepted": 1}


def test_poison_scales_the_delta_and_keeps_the_layout(tmp_path: Path) -> None:
    glob = {"w": np.zeros((4, 3), np.float32), "n": np.array(5, np.int64)}
    save_weights_file(tmp_path / "g.safetensors", glob)
    update = save_weights_bytes({"w": np.full((4, 3), 0.01, np.float32), "n": np.array(5, np.int64)})

    out = load_weights_bytes(poison_update(update, tmp_path / "g.safetensors", seed=1))

    assert out["w"].shape == (4, 3) and out["w"].dtype == np.float32
    assert int(out["n"]) == 5
    # the delta is 50x larger (plus noise), far from an honest update
    assert np.abs(out["w"]).mean() > 0.01 * POISON_SCALE / 2


def test_a_sealed_key_that_does_not_open_fails_the_unit_with_a_named_reason() -> None:
    mine, other = PrivateKey.generate(), PrivateKey.generate()
    key = bytes(range(32))
    assert _open_key(seal_key_b64(key, mine.public_key), "chunk c1", mine) == key
    with pytest.raises(UnitError, match=r"not base64 \(global weights\)"):
        _open_key("not base64!", "global weights", mine)
    with pytest.raises(UnitError, match=r"chunk c1"):
        _open_key(seal_key_b64(key, other.public_key), "chunk c1", mine)
