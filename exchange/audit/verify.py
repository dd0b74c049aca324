"""Verify a whole log: recompute the tree from the entries and hold every checkpoint, and in a
database every stored subtree hash, to it. Reports every problem with where it is."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from exchange.audit import checkpoints, merkle
from exchange.audit.checkpoints import Checkpoint, Verifier
from exchange.audit.entries import Entry
from exchange.audit.sources import DatabaseSource, LogSource, Trust, check_note
from exchange.errors import Unverifiable

PROGRESS_EVERY = 50_000


@dataclass
class Report:
    entries: int = 0
    checkpoints: int = 0
    first_time: str | None = None
    last_time: str | None = None
    covered: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def holds(self) -> bool:
        return not self.problems


def verify(source: LogSource, trust: Trust, progress: Callable[[int, int], None] | None = None) -> Report:
    """Recompute the whole tree from the entries and hold every checkpoint and stored hash to it."""
    report = Report()
    verifiers = trust.verifiers(source, report.problems)
    signed = _signed_checkpoints(source, verifiers, report)
    frontier = merkle.Frontier()
    pending = sorted(signed, key=lambda c: c.size)
    stored = _StoredNodes(source) if isinstance(source, DatabaseSource) else None
    total = source.count()
    last_good = 0
    for position, (index, data) in enumerate(source.entries()):
        if not _check_entry(position, index, data, report, source.origin):
            break
        finished = frontier.add(merkle.leaf_hash(data))
        if stored is not None:
            stored.compare(finished, report)
        while pending and pending[0].size == frontier.size:
            checkpoint = pending.pop(0)
            if frontier.root() == checkpoint.root:
                last_good = checkpoint.size
            else:
                report.problems.append(f"checkpoint of size {checkpoint.size} does not match entries "
                                       f"{last_good}..{checkpoint.size - 1}: an entry in that range was "
                                       "changed, removed, added or moved")
        if progress and position % PROGRESS_EVERY == 0:
            progress(position, total)
    report.entries = frontier.size
    for checkpoint in pending:
        report.problems.append(f"checkpoint of size {checkpoint.size} covers entries the log does not have: "
                               f"the log ends at {frontier.size} (truncated tail?)")
    report.checkpoints = len(signed)
    report.covered = last_good
    if stored is not None:
        stored.finish(frontier.size, report)
    return report


def _signed_checkpoints(source: LogSource, verifiers: list[Verifier], report: Report) -> list[Checkpoint]:
    signed = []
    for note in source.checkpoint_notes():
        try:
            signed.append(check_note(note, verifiers))
        except Unverifiable as exc:
            report.problems.append(str(exc))
    return signed


def _check_entry(position: int, index: int, data: bytes, report: Report, origin: str) -> bool:
    if index != position:
        report.problems.append(f"entry {position} is missing: the next stored entry is {index}")
        return False
    try:
        own_index, entry = Entry.decode(data)
    except Unverifiable as exc:
        report.problems.append(f"entry {position}: {exc}")
        return True
    if own_index != position:
        report.problems.append(f"entry {position} says it is entry {own_index}: entries were moved")
    if origin and checkpoints.origin_for(entry.node) != origin:
        report.problems.append(f"entry {position} is from node {entry.node}, not this log's")
    stamp = entry.time.isoformat()
    report.first_time = report.first_time or stamp
    report.last_time = stamp
    return True


class _StoredNodes:
    """Compares the database's stored subtree hashes with the recomputed ones, level by level."""

    def __init__(self, source: DatabaseSource) -> None:
        self.source = source
        self.cursors: dict[int, Iterator[tuple[int, bytes]]] = {}
        self.reported = 0

    def compare(self, finished: list[tuple[int, int, bytes]], report: Report) -> None:
        for level, index, value in finished:
            cursor = self.cursors.setdefault(level, self.source.stored_nodes(level))
            row = next(cursor, None)
            if row is None or row[0] != index or row[1] != value:
                first, last = index << level, ((index + 1) << level) - 1
                self._problem(report, f"stored hash at level {level} index {index} does not match "
                                      f"the entries (covers entries {first}..{last})")

    def finish(self, size: int, report: Report) -> None:
        for level, cursor in self.cursors.items():
            extra = next(cursor, None)
            if extra is not None:
                self._problem(report, f"stored hash at level {level} index {extra[0]} has no entries "
                                      f"under it (the log has {size})")

    def _problem(self, report: Report, text: str) -> None:
        self.reported += 1
        if self.reported <= 20:
            report.problems.append(text)


def terminal_progress(position: int, total: int) -> None:
    if sys.stderr.isatty() and total:
        width = 30
        done = int(width * position / total)
        sys.stderr.write(f"\rverifying [{'#' * done}{'.' * (width - done)}] {position:,}/{total:,}")
        sys.stderr.flush()
