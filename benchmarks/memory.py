"""Memory of two node processes over a long run: is it flat?

    python benchmarks/memory.py [--transfers 1000000] [--chunk 2000] [--skip-rabbitmq]

The commune desk and the district police of benchmarks/e2e.py run as daemons while the desk submits
``--chunk`` dossiers at a time (10 KiB, procedure 1.004194) and both drain them, over and over until
``--transfers`` transfers are receipted. After each chunk: the transfers so far, the rate of that
chunk, and each daemon's resident memory (VmRSS; its verifier processes' apart), open descriptors
and database size. A leak shows as a slope; a flat run shows the first chunks' growth (caches,
the audit tree's memo) and then nothing.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from e2e import COMMUNE, POLICE, make_nodes, start, stop, submit_many, unreceipted  # noqa: E402

from exchange.codes import AgencyCode  # noqa: E402


def rss_and_fds(pid: int) -> tuple[int, int]:
    """Resident memory (KiB) and open descriptors of a process."""
    rss = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1])
    return rss, len(list(Path(f"/proc/{pid}/fd").iterdir()))


def children_rss(pid: int) -> int:
    """Resident memory (KiB) of a process's children: a node's verifier processes."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            try:
                total += rss_and_fds(int(child))[0]
            except FileNotFoundError:
                continue  # gone meanwhile
    return total


def figures(root: Path, agency: str, pid: int) -> str:
    rss, fds = rss_and_fds(pid)
    database = (root / "nodes" / agency / "state" / "node.db").stat().st_size
    return (f"{agency[-9:]} {rss / 1024:6.1f} MiB (+{children_rss(pid) / 1024:5.1f} workers) {fds:3d} fds "
            f"db {database / 2**20:6.0f} MiB")


def run(broker: str, transfers: int, chunk: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        if broker:
            from tests.transport_helpers import delete_queues  # the bench reuses the test helper

            delete_queues(AgencyCode(COMMUNE), AgencyCode(POLICE))
        make_nodes(root, broker)
        processes = {POLICE: start(root, POLICE), COMMUNE: start(root, COMMUNE)}
        done = 0
        try:
            while done < transfers:
                begin = time.perf_counter()
                submit_many(root, done + 1, chunk)
                while unreceipted(root):
                    time.sleep(0.05)
                done += chunk
                rate = chunk / (time.perf_counter() - begin)
                shown = "  ".join(figures(root, agency, process.pid) for agency, process in processes.items())
                print(f"  {done:9,} transfers  {rate:5.0f}/s  {shown}", flush=True)
        finally:
            for process in processes.values():
                stop(process)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--broker", default="amqp://guest:guest@127.0.0.1:5672/%2F")
    parser.add_argument("--transfers", type=int, default=1_000_000)
    parser.add_argument("--chunk", type=int, default=2000)
    parser.add_argument("--skip-rabbitmq", action="store_true")
    args = parser.parse_args()
    kinds = [("embedded", "")] + ([] if args.skip_rabbitmq else [("RabbitMQ", args.broker)])
    for name, broker in kinds:
        print(f"{name}: {args.transfers:,} transfers of 10 KiB dossiers, commune -> police, chunks of {args.chunk}")
        run(broker, args.transfers, args.chunk)


if __name__ == "__main__":
    main()
