"""A receiving node's intake alone, in one process: what each transfer costs the loop.

    python benchmarks/intake.py [--transfers 1280] [--window 64] [--runs 3]

The commune of benchmarks/e2e.py seals ``--transfers`` 10 KiB transfers to the police; the
police's ``intake.receive_batch`` then takes them in, ``--window`` at a time, each window one
transaction (verified, authorized, recorded with its audit entries and receipt, committed), as
the loop does between a fetch and an ack. Printed: microseconds per transfer with the envelopes
opened in the loop, and with verdicts a verifier process found beforehand (what is left to the
loop when the workers verify: ``node.verifiers``), each the median of ``--runs`` fresh nodes.
No transport, no deliveries, no other process: the loop's own work, for comparing changes to it.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from e2e import COMMUNE, POLICE, make_nodes, submit_many  # noqa: E402

from exchange.node.config import NodeConfig  # noqa: E402
from exchange.node.context import NodeContext  # noqa: E402
from exchange.node.intake import receive_batch  # noqa: E402
from exchange.node.verifiers import Verdict, VerifierPool  # noqa: E402


def sealed(root: Path, transfers: int) -> list[tuple[str, bytes]]:
    submit_many(root, 1, transfers)
    with NodeContext.open(NodeConfig.load(root / "nodes" / COMMUNE / "node.toml")) as commune:
        return [(row.message_id, row.body) for row in commune.store.due_outbox(transfers)]


def one_run(transfers: int, window: int, pooled: bool) -> float:
    """Microseconds per transfer for a fresh police node."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        make_nodes(root, "")
        bodies = sealed(root, transfers)
        with NodeContext.open(NodeConfig.load(root / "nodes" / POLICE / "node.toml")) as police:
            verdicts: list[Verdict] | None = None
            if pooled:
                pool = VerifierPool.start(police.opener, police.config.cert, police.config.key, 1)
                assert pool is not None
                assert pool.wait_ready(60)
                batch = pool.submit([(f"message {mid}", body) for mid, body in bodies])
                assert batch is not None
                verdicts = batch.verdicts(police.opener)
                pool.close()
            begin = time.perf_counter()
            for i in range(0, len(bodies), window):
                results = receive_batch(police, bodies[i:i + window], verdicts[i:i + window] if verdicts else None)
                assert all(r.outcome.value == "accepted" for r in results), results[0]
            return (time.perf_counter() - begin) / len(bodies) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--transfers", type=int, default=1280)
    parser.add_argument("--window", type=int, default=64)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    print(f"{args.transfers} transfers of 10 KiB in windows of {args.window}, the police's receive_batch")
    figures: dict[str, list[float]] = {"opened in the loop": [], "verdicts from a worker": []}
    for _ in range(args.runs):
        for name in figures:  # alternating, so that a busy spell weighs on both
            figures[name].append(one_run(args.transfers, args.window, name != "opened in the loop"))
    for name, runs in figures.items():
        print(f"  {name:24} {statistics.median(runs):7.0f} us a transfer (median of {args.runs}: "
              f"{', '.join(f'{r:.0f}' for r in runs)})")


if __name__ == "__main__":
    main()
