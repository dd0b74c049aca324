"""Throughput and latency on a RabbitMQ cluster before, during and after the loss of a broker node.

    python benchmarks/cluster.py [--dossiers 500] [--seconds 60] [--kill-at 20] [--down-for 15]

Starts a private three-node cluster (tests/rabbit_cluster.py; never the host's broker) and the
soak's district (four node processes, tests/cluster_loss.py), every node listing the three
brokers. Dossiers are submitted at a steady rate; ``--kill-at`` seconds in, the broker node every
node process is connected to is SIGKILLed, and ``--down-for`` seconds later started again.
Printed, for each phase (before the kill, while the node is down, after it is back): dossiers
completing their round trip per second (both branches of the birth route and back at the desk)
and the p50 and p99 of that round trip, as ratios of the phase before; each node's failover
time (the kill to its next ``amqp.connected``); and the time until throughput recovered (the
first second after the kill from which three seconds average 80% of the rate before). The run's
invariants are checked as in the test (nothing lost, nothing delivered twice, audits verified).
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.cluster_loss import ClusterLoss, Loss, Phase, Timeline  # noqa: E402
from tests.node_cluster import events_named  # noqa: E402
from tests.rabbit_cluster import private_cluster  # noqa: E402
from tests.soak import NODES, Plan  # noqa: E402

RECOVERED = 0.8
"""Throughput counts as recovered at this share of the rate before the loss."""


def per_second(timeline: Timeline, seconds: float) -> list[int]:
    """Round trips completed in each second of the load."""
    counts = [0] * (int(seconds) + 1)
    for at in timeline.returned.values():
        second = int(at - timeline.began)
        if 0 <= second < len(counts):
            counts[second] += 1
    return counts


def recovery(counts: list[int], kill_at: float, before_rate: float) -> float | None:
    """Seconds from the kill to the first second from which three average ``RECOVERED`` of before."""
    start = int(kill_at)
    for second in range(start, len(counts) - 2):
        if sum(counts[second:second + 3]) / 3 >= RECOVERED * before_rate:
            return second - kill_at
    return None


def failovers(run: ClusterLoss, killed_wall: float) -> dict[str, float]:
    """Per node process: seconds from the kill to its first connection after it."""
    found = {}
    for agency in NODES:
        for event in events_named(run.cluster.log(agency), "amqp.connected"):
            at = dt.datetime.fromisoformat(event["timestamp"]).timestamp()
            if at > killed_wall:
                found[agency] = at - killed_wall
                break
    return found


def line(phase: Phase, before: Phase) -> str:
    ratio = f"{phase.throughput / before.throughput:5.2f}x" if before.throughput else "  n/a"
    p99 = phase.percentile(99)
    return (f"  {phase.name:<22} {phase.throughput:6.1f} dossiers/s ({ratio})   p50 {phase.percentile(50):5.2f} s   "
            f"p99 {p99:5.2f} s ({p99 / before.percentile(99):5.2f}x)   n={len(phase.latencies)}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dossiers", type=int, default=500)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--kill-at", type=float, default=20.0)
    parser.add_argument("--down-for", type=float, default=15.0)
    args = parser.parse_args()
    plan = Plan(dossiers=args.dossiers, fault_seconds=args.seconds, drain_seconds=300.0)
    with tempfile.TemporaryDirectory() as tmp, private_cluster() as rabbits:
        run = ClusterLoss(Path(tmp), plan, rabbits, (Loss(0, args.kill_at, args.down_for),))
        wall_offset = time.time() - time.monotonic()
        figures = run.run()
        timeline = run.timeline
        killed_wall = timeline.began + args.kill_at + wall_offset
        back = args.kill_at + args.down_for
        end = max(at for at in timeline.submitted.values()) - timeline.began + 0.001
        before = timeline.phase("before the loss", 0.0, args.kill_at)
        phases = [before, timeline.phase("while a node is down", args.kill_at, back),
                  timeline.phase("after it is back", back, end)]
        counts = per_second(timeline, end)
        moved = failovers(run, killed_wall)
    print(f"{figures.dossiers} dossiers on a 3-node cluster over {args.seconds:.0f} s; broker node 1 "
          f"SIGKILLed at {args.kill_at:.0f} s, started again at {back:.0f} s (per phase: dossiers submitted "
          "in it, their round trip commune -> police + insurance -> commune)")
    for phase in phases:
        print(line(phase, before))
    print("  failover (kill -> connected to another node): "
          + ", ".join(f"{agency[-9:]} {seconds:.2f} s" for agency, seconds in moved.items()))
    recovered = recovery(counts, args.kill_at, before.throughput)
    print("  throughput back to 80% of before: "
          + (f"{recovered:.0f} s after the kill" if recovered is not None else "not within the run"))
    print(f"  completed per second: {counts}")
    print(f"  invariants: {len(figures.problems)} problems" + "".join(f"\n    - {p}" for p in figures.problems))
    return 1 if figures.problems else 0


if __name__ == "__main__":
    sys.exit(main())
