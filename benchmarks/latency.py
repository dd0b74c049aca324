"""Where a transfer's latency goes, stage by stage, read from both nodes' audit logs.

    python benchmarks/latency.py [--rate 100] [--seconds 5] [--rabbitmq]

The commune desk and the district police of benchmarks/e2e.py run as daemons while the desk
submits ``--rate`` dossiers a second for ``--seconds``. For each transfer: sealed -> published
(the commune's outbox and the broker's confirm), published -> received (the police took it in,
committed), received -> receipt recorded (the police's receipt back to the commune and recorded
there). p50, p90 and p99 of each stage and of the whole, in milliseconds (audit times are to the
millisecond).
"""

from __future__ import annotations

import argparse
import datetime as dt
import itertools
import json
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from e2e import COMMUNE, POLICE, make_nodes, start, stop, submit_many, unreceipted  # noqa: E402

from exchange.codes import AgencyCode  # noqa: E402

STAGES = (("commune", "sealed"), ("commune", "published"), ("police", "received"), ("commune", "receipt-received"))


def first_times(root: Path, agency: str) -> dict[tuple[str, str], float]:
    """(message id, event) -> when the node's audit log first says so."""
    with sqlite3.connect(root / "nodes" / agency / "state" / "node.db") as conn:
        rows = conn.execute("SELECT data FROM audit_entries").fetchall()
    found: dict[tuple[str, str], float] = {}
    for (data,) in rows:
        entry = json.loads(data)
        if "message" in entry:
            at = dt.datetime.fromisoformat(entry["time"].replace("Z", "+00:00")).timestamp()
            found.setdefault((entry["message"], entry["event"]), at)
    return found


def percentiles(values: list[float]) -> str:
    ordered = sorted(values)
    return (f"p50 {statistics.median(ordered):6.1f} ms  p90 {ordered[int(len(ordered) * 0.9)]:6.1f}  "
            f"p99 {ordered[max(0, int(len(ordered) * 0.99) - 1)]:6.1f}")


def run(broker: str, rate: float, seconds: float) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        if broker:
            from tests.transport_helpers import delete_queues  # the bench reuses the test helper

            delete_queues(AgencyCode(COMMUNE), AgencyCode(POLICE))
        make_nodes(root, broker)
        processes = [start(root, POLICE), start(root, COMMUNE)]
        try:
            submit_many(root, 1, int(rate * seconds), rate=rate)
            deadline = time.monotonic() + 60
            while unreceipted(root) and time.monotonic() < deadline:
                time.sleep(0.05)
        finally:
            for process in processes:
                stop(process)
        times = {"commune": first_times(root, COMMUNE), "police": first_times(root, POLICE)}
    messages = {message for message, event in times["commune"] if event == "sealed"}
    complete = [m for m in messages if all((m, event) in times[node] for node, event in STAGES)]
    print(f"  {len(complete)} transfers at {rate:.0f}/s ({'RabbitMQ' if broker else 'embedded'})")
    for (node_a, a), (node_b, b) in itertools.pairwise(STAGES):
        spans = [(times[node_b][m, b] - times[node_a][m, a]) * 1000 for m in complete]
        print(f"    {a:>16} -> {b:<17} {percentiles(spans)}")
    whole = [(times["commune"][m, "receipt-received"] - times["commune"][m, "sealed"]) * 1000 for m in complete]
    print(f"    {'whole':>37} {percentiles(whole)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rate", type=float, default=100)
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--rabbitmq", action="store_true")
    parser.add_argument("--broker", default="amqp://guest:guest@127.0.0.1:5672/%2F")
    args = parser.parse_args()
    run(args.broker if args.rabbitmq else "", args.rate, args.seconds)


if __name__ == "__main__":
    main()
