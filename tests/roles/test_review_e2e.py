"""The client's reference-based review end to end: five cheating trainers among eight (two
Sybils of one owner sending the global weights plus noise, a copier re-sending its colluder's
update, a trainer claiming 10**15 samples, one reversing its step) on real processes.

Nothing a cheater hands in is paid, every honest unit is, the model still learns, and every
rejection's evidence is on the audit topic with the hash that went on chain.
"""

from __future__ import annotations

import json

import pytest
from eth_utils import keccak

from fedswarm.demo import run_demo

pytestmark = pytest.mark.slow

FAULTS = ["sybil-lazy", "copy", "inflate-samples", "reverse"]


def test_five_cheaters_among_eight_are_unpaid_and_honest_work_is_paid(tmp_path):
    report = run_demo(trainers=8, rounds=5, faults=FAULTS, workdir=tmp_path, quiet=True)
    assert report["ok"], report.get("error")
    assert report["final"]["val_accuracy"] >= 0.95
    faults = sorted(t["fault"] for t in report["trainers"] if t["fault"])
    assert faults == ["copy", "inflate-samples", "reverse", "sybil-lazy", "sybil-lazy"], faults
    for t in report["trainers"]:
        if t["fault"]:
            # every unit it committed was rejected on chain; nothing paid
            assert t["units_accepted"] == 0 and t["paid_wei"] == 0, t
            assert t["units_rejected"] == t["units_committed"] >= 1, t
        else:
            # honest (the copier's source included): every committed unit accepted and paid
            assert t["units_rejected"] == 0, t
            assert t["units_accepted"] == t["units_committed"] >= 1, t
            assert t["paid_wei"] == t["units_accepted"] * t["price_wei"], t
    assert report["audit"]["states"].get("rejected", 0) >= 5 * 5
    assert report["audit"]["states"].get("round_reviewed", 0) >= 5
    evidence = report["review"]["evidence"]
    assert evidence, report["review"]
    for entry in evidence:
        body = json.loads(entry["evidence"])
        digest = "0x" + keccak(entry["evidence"].encode()).hex()
        assert digest == entry["reason_hash"]
        if entry.get("chain_reason_hash") is not None:  # what the settlement put on chain
            assert entry["chain_reason_hash"] == digest, entry
        assert body["reason"] and body["check"]
    assert any(e.get("chain_reason_hash") for e in evidence)
    checks = {json.loads(e["evidence"])["check"] for e in evidence}
    assert {"samples", "reference"} <= checks, checks  # the inflater and the step checks
    assert any(json.loads(e["evidence"]).get("copy_of") for e in evidence) or "reexec" in checks
    assert report["review"]["rounds"] and all(r["reexecuted"] for r in report["review"]["rounds"])
