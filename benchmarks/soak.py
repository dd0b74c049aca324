"""A long chaos soak on both transports, printing what it measured.

    python benchmarks/soak.py [--dossiers 600] [--fault-seconds 300] [--seed 11] [--skip-rabbitmq]

Four node processes (two commune desks, the district police, social insurance) pass birth
registrations (a route with a join) while random faults land: SIGKILL and SIGSTOP of nodes, and on
RabbitMQ stop_app and kill -9 of a private broker node (never the host's). Then a bounded drain,
and the invariants (tests/soak.py): every dossier final, no file delivered twice or missing, files
and audited deliveries one to one, outboxes settled, no dead letters, queues empty, every audit
log verified and every pair reconciled, no traceback, no watchdog gap over 10 s. Printed: the
faults, the drain time, the longest watchdog gap, memory and descriptors of the node that was
never killed, and every problem found (none, when all is well).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.rabbit_node import private_node  # noqa: E402
from tests.soak import Plan, Soak  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dossiers", type=int, default=600)
    parser.add_argument("--fault-seconds", type=float, default=300.0)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--skip-rabbitmq", action="store_true")
    args = parser.parse_args()
    plan = Plan(dossiers=args.dossiers, fault_seconds=args.fault_seconds, drain_seconds=600.0, seed=args.seed)
    problems = 0
    with tempfile.TemporaryDirectory() as tmp:
        figures = Soak(Path(tmp) / "embedded", plan).run()
        print(figures.report(), flush=True)
        problems += len(figures.problems)
        if not args.skip_rabbitmq:
            with private_node() as rabbit:
                figures = Soak(Path(tmp) / "rabbitmq", plan, rabbit).run()
            print(figures.report(), flush=True)
            problems += len(figures.problems)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
