"""Transfers through two nodes, end to end, on RabbitMQ and on the embedded transport.

    python benchmarks/e2e.py [--dossiers 2000] [--rate 100] [--latency-seconds 20] [--runs 3] [--skip-rabbitmq]

Two node daemons run as separate processes: a commune desk and the district police, procedure
1.004194 (temporary residence: the commune hands the dossier to the police). A transfer counts
when it is sealed (ECDSA, signxml), published with a confirm, consumed, verified, authorized,
committed with its audit entry, acked, receipted with a signed receipt, and the receipt verified
and recorded at the sender. Figures:

- throughput: ``--dossiers`` 10 KiB dossiers submitted while the daemons are stopped, then both
  daemons started; transfers fully receipted per second from the first publication to the last
  receipt recorded (the commune's audit log), so the processes' start-up does not count;
- latency: dossiers submitted at ``--rate`` per second while both run; p50/p99 from the sealed
  entry to the receipt-received entry in the commune's audit log;
- baseline: raw pika publish+consume of the same bytes (benchmarks/transport.py), in each run,
  and the ratio of the two on the same line; with ``--runs`` the medians of the runs at the end.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from transport import raw_pika  # noqa: E402

from exchange.cli import main as cli  # noqa: E402
from exchange.codes import AgencyCode, ProcedureCode  # noqa: E402
from exchange.demo import samples  # noqa: E402
from exchange.node.config import NodeConfig  # noqa: E402
from exchange.node.context import NodeContext  # noqa: E402
from exchange.node.workflow import submit  # noqa: E402

RULES = Path(__file__).resolve().parent.parent / "tests" / "rules" / "seed-2019"
COMMUNE, POLICE = "000.04.10.H49", "000.30.10.H49"
PROCEDURE = "1.004194"
EXE = str(Path(sys.executable).parent / "exchange")


def make_nodes(root: Path, broker: str) -> None:
    assert cli(["pki", "init-ca", "--out", str(root / "ca")]) == 0
    for agency in (COMMUNE, POLICE):
        argv = ["node", "init", "--agency", agency, "--ca", str(root / "ca"), "--rules", str(RULES),
                "--out", str(root / "nodes" / agency)]
        assert cli([*argv, "--broker", broker] if broker else argv) == 0


def start(root: Path, agency: str) -> subprocess.Popen[bytes]:
    log = (root / f"{agency}.log").open("ab")
    process = subprocess.Popen([EXE, "run", "--config", str(root / "nodes" / agency / "node.toml")],
                               stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while b"node.started" not in (root / f"{agency}.log").read_bytes() and time.monotonic() < deadline:
        time.sleep(0.1)
    return process


def stop(process: subprocess.Popen[bytes]) -> None:
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=120)


def numbered(n: int) -> dict[str, object]:
    """The n-th dossier's sequence and reception day: a desk numbers at most 9,999 a day, so
    long runs go back a day for each 9,999."""
    day, sequence = divmod(n - 1, 9999)
    received = dt.datetime.now(dt.UTC) - dt.timedelta(days=day) if day else None
    return {"sequence": sequence + 1, "received_at": received}


def submit_many(root: Path, first: int, count: int, rate: float | None = None) -> None:
    ctx = NodeContext.open(NodeConfig.load(root / "nodes" / COMMUNE / "node.toml"))
    try:
        start_time = time.perf_counter()
        for i in range(count):
            spec = samples.SampleSpec(AgencyCode(COMMUNE), ProcedureCode(PROCEDURE), size_kb=10,
                                      **numbered(first + i))
            submit(ctx, samples.to_bytes(samples.sample_dossier(spec)))
            if rate:
                time.sleep(max(0.0, start_time + (i + 1) / rate - time.perf_counter()))
    finally:
        ctx.close()


def unreceipted(root: Path) -> int:
    with sqlite3.connect(root / "nodes" / COMMUNE / "state" / "node.db") as conn:
        return int(conn.execute("SELECT COUNT(*) FROM outbox WHERE kind = 'transfer' AND state != 'acknowledged'")
                   .fetchone()[0])


def latencies(root: Path, since: int) -> list[float]:
    with sqlite3.connect(root / "nodes" / COMMUNE / "state" / "node.db") as conn:
        rows = conn.execute("SELECT data FROM audit_entries WHERE idx >= ? AND event IN ('sealed', "
                            "'receipt-received')", (since,)).fetchall()
    sealed, done = {}, {}
    for (data,) in rows:
        entry = json.loads(data)
        at = dt.datetime.fromisoformat(entry["time"].replace("Z", "+00:00")).timestamp()
        (sealed if entry["event"] == "sealed" else done)[entry["message"]] = at
    return sorted(done[m] - sealed[m] for m in done if m in sealed)


def receipted_span(root: Path) -> float:
    """Seconds from the commune's first publication to its last receipt recorded."""
    with sqlite3.connect(root / "nodes" / COMMUNE / "state" / "node.db") as conn:
        rows = conn.execute("SELECT data FROM audit_entries WHERE event IN ('published', 'receipt-received')")
        times = {"published": [], "receipt-received": []}  # type: dict[str, list[float]]
        for (data,) in rows:
            entry = json.loads(data)
            times[entry["event"]].append(
                dt.datetime.fromisoformat(entry["time"].replace("Z", "+00:00")).timestamp())
    return max(times["receipt-received"]) - min(times["published"])


def audit_size(root: Path) -> int:
    with sqlite3.connect(root / "nodes" / COMMUNE / "state" / "node.db") as conn:
        return int(conn.execute("SELECT COUNT(*) FROM audit_entries").fetchone()[0])


def run(broker: str, dossiers: int, rate: float, latency_seconds: float) -> tuple[float, float, float]:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        if broker:
            from tests.transport_helpers import delete_queues  # the bench reuses the test helper

            delete_queues(AgencyCode(COMMUNE), AgencyCode(POLICE))
        make_nodes(root, broker)
        police = start(root, POLICE)
        stop(police)  # declares the police queue so that submissions are routable
        submit_many(root, 1, dossiers)
        begin = time.perf_counter()
        processes = [start(root, POLICE), start(root, COMMUNE)]
        while unreceipted(root) and time.perf_counter() - begin < 600:
            time.sleep(0.05)
        throughput = dossiers / receipted_span(root)
        since = audit_size(root)
        submit_many(root, dossiers + 1, int(rate * latency_seconds), rate=rate)
        deadline = time.perf_counter() + 60
        while unreceipted(root) and time.perf_counter() < deadline:
            time.sleep(0.05)
        lat = latencies(root, since)
        for process in processes:
            stop(process)
    p50 = statistics.median(lat) * 1000 if lat else float("nan")
    p99 = lat[int(len(lat) * 0.99) - 1] * 1000 if lat else float("nan")
    return throughput, p50, p99


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--broker", default="amqp://guest:guest@127.0.0.1:5672/%2F")
    parser.add_argument("--dossiers", type=int, default=2000)
    parser.add_argument("--rate", type=float, default=100)
    parser.add_argument("--latency-seconds", type=float, default=20)
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--skip-rabbitmq", action="store_true")
    args = parser.parse_args()
    print(f"{args.dossiers} transfers of 10 KiB dossiers, commune -> police ({PROCEDURE}), two node processes")
    kinds = [("embedded", "")] + ([] if args.skip_rabbitmq else [("RabbitMQ", args.broker)])
    results: dict[str, list[tuple[float, float, float, float]]] = {name: [] for name, _ in kinds}
    for number in range(1, args.runs + 1):
        for name, broker in kinds:
            throughput, p50, p99 = run(broker, args.dossiers, args.rate, args.latency_seconds)
            raw = raw_pika(args.broker, 10, 3.0) if not args.skip_rabbitmq else float("nan")
            results[name].append((throughput, p50, p99, raw))
            print(f"  run {number} {name:9} {throughput:8,.0f} transfers/s receipted; raw pika {raw:7,.0f} msg/s "
                  f"(ratio {throughput / raw:5.1%}); at {args.rate:.0f}/s: p50 {p50:6.1f} ms, p99 {p99:6.1f} ms")
    if args.runs > 1:
        for name, rows in results.items():
            throughput, p50, p99, raw = (statistics.median(column) for column in zip(*rows, strict=True))
            print(f"  median of {args.runs} {name:9} {throughput:8,.0f} transfers/s; raw pika {raw:7,.0f} msg/s "
                  f"(ratio {throughput / raw:5.1%}); p50 {p50:6.1f} ms, p99 {p99:6.1f} ms")


if __name__ == "__main__":
    main()
