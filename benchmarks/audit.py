"""Audit log figures: appends per second in batches, proof time and verify time at scale.

    python benchmarks/audit.py [--entries 1000000] [--batch 500] [--rounds 5]

Appends run in transactions of ``--batch`` entries, as the node commits a window of messages;
the baseline is a plain INSERT of the same entry bytes into an indexed table in the same run
(what any SQLite-backed log pays without a tree). Proofs are inclusion and consistency proofs
against the full tree, medians of many; verify recomputes the whole tree from the database.
Aims: over 20,000 appends per second, proofs under 1 ms at 1 million entries.
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
from pathlib import Path

from exchange.audit import merkle
from exchange.audit.checkpoints import Checkpointer, NoteSigner, origin_for
from exchange.audit.entries import Entry, Event
from exchange.audit.log import AuditLog
from exchange.audit.sources import DatabaseSource, Trust
from exchange.audit.verify import verify
from exchange.store import db

AGENCY = "000.04.10.H49"


def entries(start: int, count: int) -> list[Entry]:
    return [Entry(Event.PUBLISHED, AGENCY, dossier=f"{AGENCY}-261129-{i % 9999 + 1:04d}",
                  procedure="2.000986", step="residence", message_id=f"{i:08x}-0000-4000-8000-000000000000",
                  counterpart="000.30.10.H49", envelope_sha256=f"{i:064x}", detail={"due": "2026-12-02"})
            for i in range(start, start + count)]


def baseline(path: Path, total: int, batch: int) -> float:
    conn = db.connect(path)
    conn.execute("CREATE TABLE plain (idx INTEGER PRIMARY KEY, data BLOB, dossier TEXT)")
    conn.execute("CREATE INDEX plain_dossier ON plain (dossier)")
    start = time.perf_counter()
    for offset in range(0, total, batch):
        rows = [(i, e.encode(i), e.dossier) for i, e in enumerate(entries(offset, batch), offset)]
        with conn:
            conn.executemany("INSERT INTO plain VALUES (?, ?, ?)", rows)
    return total / (time.perf_counter() - start)


def fill(log: AuditLog, total: int, batch: int, checkpointer: Checkpointer) -> float:
    start = time.perf_counter()
    for offset in range(0, total, batch):
        with log.conn:
            log.append_many(entries(offset, batch))
        checkpointer.maybe()
    checkpointer.make()
    return total / (time.perf_counter() - start)


def median_ms(fn: object, samples: int) -> float:
    times = []
    for _ in range(samples):
        start = time.perf_counter()
        fn()  # type: ignore[operator]
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--entries", type=int, default=1_000_000)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--baseline-entries", type=int, default=100_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        plain = baseline(root / "plain.db", args.baseline_entries, args.batch)
        conn = db.connect(root / "node.db")
        log = AuditLog(conn, AGENCY)
        signer = NoteSigner.generate(origin_for(AGENCY))
        signer.save(root / "checkpoint-key.pem")
        checkpointer = Checkpointer(log, signer, every_entries=10_000, every_seconds=3600)
        rate = fill(log, args.entries, args.batch, checkpointer)
        size = log.size
        rng = random.Random(1)
        inclusion = median_ms(lambda: log.inclusion_proof(rng.randrange(size), size), 2000)
        consistency = median_ms(lambda: log.consistency_proof(rng.randrange(1, size), size), 2000)
        index = rng.randrange(size)
        proof = log.inclusion_proof(index, size)
        root_hash = log.root(size)
        leaf = log.leaf(index)
        check = median_ms(lambda: merkle.verify_inclusion(index, size, leaf, proof, root_hash), 2000)
        trust = Trust(keys=(signer.verifier,))
        start = time.perf_counter()
        report = verify(DatabaseSource(root / "node.db"), trust)
        verify_s = time.perf_counter() - start
        print(f"audit log of {size:,} entries (batches of {args.batch}), "
              f"{report.checkpoints} checkpoints, verify {'holds' if report.holds else 'FAILS'}")
        print(f"  appends            {rate:10,.0f}/s   (plain SQLite insert of the same bytes: "
              f"{plain:,.0f}/s, ratio {plain / rate:.2f}x)")
        print(f"  inclusion proof    {inclusion:10.3f} ms median")
        print(f"  consistency proof  {consistency:10.3f} ms median")
        print(f"  proof check        {check:10.3f} ms median")
        print(f"  verify everything  {verify_s:10.1f} s   ({size / verify_s:,.0f} entries/s)")


if __name__ == "__main__":
    main()
