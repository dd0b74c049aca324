"""What refreshing the node's gauges costs on a node that has worked for years.

    python benchmarks/metrics.py [--rows 200000] [--rounds 21]

A node (embedded transport) with ``--rows`` outbox rows settled long ago, three steps per
dossier for ``--rows`` dossiers (a few ready and overdue), ``--rows`` webhook pushes done, and its
audit log. The baseline, in the same run and on the same database, is what the refresh did before
issue 18 (the outbox counts, the audit log's size, the certificate); the figure is the whole
refresh now (outbox counts and oldest due row, overdue summary, webhook backlog, checkpoint, fork
alarms counted since the last pass, CRL age). Medians of ``--rounds``. The housekeeping refreshes
at most every ``GAUGES_EVERY_S`` (15 s): the share of one core it costs is printed. Aim: under 1%.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from exchange.node.config import NodeConfig
from exchange.node.context import NodeContext
from exchange.node.metrics import GAUGES_EVERY_S, Metrics
from exchange.node.status import today
from exchange.store.states import OutboxState, StepState

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.agencies import COMMUNE  # noqa: E402
from tests.node_cluster import Cluster  # noqa: E402

STEPS = ("register", "residence", "insurance")


def fill(ctx: NodeContext, rows: int) -> None:
    """Years of settled work, through the store's own statements, in one transaction."""
    store = ctx.store
    with store.transaction():
        for i in range(rows):
            message_id = str(uuid.UUID(int=i))
            store.enqueue(message_id, "000.30.10.H49", "transfer", f"D-{i}", "residence", b"<e/>", "0" * 64)
            store.settle(store.outbox_by_message(message_id).id, OutboxState.ACKNOWLEDGED)  # type: ignore[union-attr]
            store.webhook_enqueue(message_id, 0.0)
            store.webhook_done(message_id, 1)
            store.add_steps(f"D-{i}", [(step, str(ctx.agency)) for step in STEPS])
            for step in STEPS:
                store.finish_step(f"D-{i}", step, str(ctx.agency), "2025-03-03T09:00:00+07:00")
        for i in range(20):  # a few overdue, as on any busy node
            store.make_ready(f"LATE-{i}", "register", str(ctx.agency), "2025-06-02")
    assert store.overdue_summary(today(ctx))[0] == 20
    assert store.step("LATE-0", "register").state is StepState.READY  # type: ignore[union-attr]


def before(metrics: Metrics, ctx: NodeContext) -> Callable[[], None]:
    """The refresh as it was: the outbox counts, the audit log's size and the certificate."""
    def refresh() -> None:
        counts = ctx.store.counts()
        for state in OutboxState:
            metrics.outbox.labels(state.value).set(counts.get(f"outbox_{state.value}", 0))
        metrics.audit.set(ctx.audit.size)
        metrics.certificate_left.set(ctx.signer.cert.not_valid_after_utc.timestamp() - time.time())
    return refresh


def median_ms(action: Callable[[], None], rounds: int) -> float:
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        action()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=21)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        cluster = Cluster(Path(tmp))
        cluster.init(str(COMMUNE))
        with NodeContext.open(NodeConfig.load(cluster.config(str(COMMUNE)))) as ctx:
            started = time.perf_counter()
            fill(ctx, args.rows)
            print(f"filled {args.rows} outbox rows, {3 * args.rows} steps, {args.rows} webhooks "
                  f"in {time.perf_counter() - started:.1f} s")
            metrics = Metrics()
            metrics.refresh(ctx)  # the first pass counts the whole audit log for fork alarms
            old = median_ms(before(metrics, ctx), args.rounds)
            new = median_ms(lambda: metrics.refresh(ctx), args.rounds)
    print(f"refresh before issue 18 (baseline): {old:7.2f} ms  (median of {args.rounds})")
    print(f"refresh now:                        {new:7.2f} ms  ({new / old:.2f}x the baseline)")
    print(f"share of one core at one refresh every {GAUGES_EVERY_S:.0f} s: {new / 10 / GAUGES_EVERY_S:.3f}% "
          f"(aim < 1%); every housekeeping pass (0.5 s), as before: {new / 10 / 0.5:.2f}%")


if __name__ == "__main__":
    main()
