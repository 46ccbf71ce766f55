"""Audit-log benchmark: signed submits per second against the devnet topic log (a real server
process over HTTP) and chain verification speed; ``fedswarm bench ledger`` includes it."""

from __future__ import annotations

import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from fedswarm.ledger.audit import LocalAuditLog
from fedswarm.ledger.auditserver import start_audit_server
from fedswarm.ledger.verify import verify_messages


def run(quick: bool = False, workdir: Path | None = None) -> dict[str, Any]:
    """Measure and return ``{"audit_submits_per_s", "audit_submit_p50_ms", ...}``.

    One client submits ``n`` small JSON messages sequentially (latency = HTTP round trip +
    signature + SQLite commit), then two clients in parallel (contention on the sequence
    transaction), then the whole topic is read back and verified.
    """
    from libp2p.crypto.ed25519 import create_new_key_pair

    n = 200 if quick else 2000
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        proc, info = start_audit_server(Path(tmp) / "audit.db")
        try:
            url = info["audit"]["url"]
            with LocalAuditLog(url, create_new_key_pair()) as log:
                topic = log.create_topic("bench")
                payload = {"state": "training", "round": 1, "step": 0, "loss": 0.5}
                latencies = []
                t0 = time.perf_counter()
                for i in range(n):
                    s = time.perf_counter()
                    log.submit(topic, payload | {"step": i})
                    latencies.append(time.perf_counter() - s)
                sequential = n / (time.perf_counter() - t0)

                clients = [LocalAuditLog(url, create_new_key_pair()) for _ in range(2)]

                def worker(c: LocalAuditLog) -> None:
                    for i in range(n // 2):
                        c.submit(topic, payload | {"step": i})

                threads = [threading.Thread(target=worker, args=(c,)) for c in clients]
                t0 = time.perf_counter()
                for t in threads:
                    t.start()
                for t in threads:
                    t.join()
                parallel = (n // 2 * 2) / (time.perf_counter() - t0)
                for c in clients:
                    c.close()

                t0 = time.perf_counter()
                messages = list(log.iter_raw(topic))
                read_rate = len(messages) / (time.perf_counter() - t0)
                t0 = time.perf_counter()
                result = verify_messages(messages)
                verify_rate = len(messages) / (time.perf_counter() - t0)
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    latencies.sort()
    return {
        "audit_messages": len(messages),
        "audit_submits_per_s": round(sequential, 1),
        "audit_submits_per_s_2_clients": round(parallel, 1),
        "audit_submit_p50_ms": round(latencies[len(latencies) // 2] * 1000, 2),
        "audit_submit_p99_ms": round(latencies[int(len(latencies) * 0.99)] * 1000, 2),
        "audit_read_msgs_per_s": round(read_rate, 1),
        "audit_verify_msgs_per_s": round(verify_rate, 1),
        "audit_verified_ok": result.ok,
    }


if __name__ == "__main__":
    import json
    import sys

    print(json.dumps(run(quick="--quick" in sys.argv)))
