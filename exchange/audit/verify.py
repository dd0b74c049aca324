"""Verify a whole log: recompute the tree from the entries and hold every checkpoint, and in a
database every stored subtree hash, to it. Reports every problem with where it is.

A log that holds is only as good as who vouches for it. Anyone with the node's files can rewrite
an entry, recompute the tree and re-sign or delete the node's own checkpoints; only the
checkpoints its peers keep (from receipts: ``witness``) are out of the node's reach. So the
report tells apart the entries covered by a checkpoint a peer holds (``witnessed``), those covered
only by the node's own checkpoints, and those not covered at all; a peer's copy that the entries
do not reproduce is a fork, reported as a problem.
"""

from __future__ import annotations

import datetime as dt
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

from exchange.audit import checkpoints, merkle
from exchange.audit.checkpoints import Checkpoint, Verifier
from exchange.audit.entries import Entry
from exchange.audit.sources import DatabaseSource, LogSource, Trust, check_note
from exchange.errors import Unverifiable

PROGRESS_EVERY = 50_000


@dataclass(frozen=True)
class PeerCopy:
    """What one peer holds of this log: its name and the checkpoint notes it kept."""

    peer: str
    notes: tuple[str, ...]


@dataclass
class Report:
    entries: int = 0
    checkpoints: int = 0
    first_time: str | None = None
    last_time: str | None = None
    covered: int = 0
    """Entries covered by the latest good checkpoint (the node's own)."""
    witnessed: int = 0
    """Entries covered by a checkpoint a peer holds, whose root the entries reproduce."""
    witnesses: tuple[str, ...] = ()
    """The peers that hold the checkpoint of size ``witnessed``."""
    waiting_since: dt.datetime | None = None
    """The time of the first entry no checkpoint covers, if any."""
    problems: list[str] = field(default_factory=list)

    @property
    def holds(self) -> bool:
        return not self.problems

    @property
    def own_only(self) -> int:
        """Entries covered by the node's own checkpoints only."""
        return max(self.covered - self.witnessed, 0)

    @property
    def uncovered(self) -> int:
        return self.entries - max(self.covered, self.witnessed)

    def stale(self, reference: dt.datetime, max_age: dt.timedelta) -> bool:
        """Entries have waited longer than ``max_age`` before ``reference`` for a checkpoint, or no
        entry is covered by any checkpoint at all: nothing vouches for them."""
        if not self.uncovered:
            return False
        return not max(self.covered, self.witnessed) or (
            self.waiting_since is not None and reference - self.waiting_since > max_age)


def verify(source: LogSource, trust: Trust, progress: Callable[[int, int], None] | None = None,
           peers: Sequence[PeerCopy] = ()) -> Report:
    """Recompute the whole tree from the entries and hold every checkpoint and stored hash to it,
    and every checkpoint of this log that ``peers`` hold."""
    report = Report()
    verifiers = trust.verifiers(source, report.problems)
    signed = _signed_checkpoints(source, verifiers, report)
    held = _peer_checkpoints(peers, source.origin, verifiers, report)
    frontier = merkle.Frontier()
    pending = sorted(signed, key=lambda c: c.size)
    stored = _StoredNodes(source) if isinstance(source, DatabaseSource) else None
    total = source.count()
    last_good = 0
    starts = {0, *(c.size for c in pending), *(c.size for _, c in held)}
    first_after: dict[int, dt.datetime | None] = {}
    for position, (index, data) in enumerate(source.entries()):
        if not _check_entry(position, index, data, report, source.origin):
            break
        if position in starts:
            first_after[position] = _time(data)
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
        _hold_peers(held, frontier, report)
        if progress and position % PROGRESS_EVERY == 0:
            progress(position, total)
    report.entries = frontier.size
    for checkpoint in pending:
        report.problems.append(f"checkpoint of size {checkpoint.size} covers entries the log does not have: "
                               f"the log ends at {frontier.size} (truncated tail?)")
    for peer, checkpoint in held:
        report.problems.append(f"fork: peer {peer} holds a checkpoint of size {checkpoint.size}, but the log "
                               f"ends at {frontier.size}: its history was cut off or rewritten")
    report.checkpoints = len(signed)
    report.covered = last_good
    report.waiting_since = first_after.get(max(last_good, report.witnessed)) if report.uncovered else None
    if stored is not None:
        stored.finish(frontier.size, report)
    return report


def _peer_checkpoints(peers: Sequence[PeerCopy], origin: str, verifiers: list[Verifier],
                      report: Report) -> list[tuple[str, Checkpoint]]:
    """The checkpoints of this log that peers hold and a trusted key signed, smallest first."""
    held = []
    for copy in peers:
        for note in copy.notes:
            try:
                if checkpoints.parse(note).origin != origin:
                    continue  # another node's checkpoint, which this peer witnesses too
                held.append((copy.peer, check_note(note, verifiers)))
            except Unverifiable as exc:
                report.problems.append(f"peer {copy.peer} holds a checkpoint of this log that does not verify: {exc}")
    return sorted(held, key=lambda item: item[1].size)


def _hold_peers(held: list[tuple[str, Checkpoint]], frontier: merkle.Frontier, report: Report) -> None:
    """Hold the peers' checkpoints of the current size to the recomputed root (``held`` is consumed)."""
    while held and held[0][1].size == frontier.size:
        peer, checkpoint = held.pop(0)
        if frontier.root() != checkpoint.root:
            report.problems.append(f"fork: peer {peer} holds a checkpoint of size {checkpoint.size} whose root "
                                   f"the entries do not produce: entries 0..{checkpoint.size - 1} differ from "
                                   "what the node showed its peer")
        elif checkpoint.size == report.witnessed:
            report.witnesses = (*report.witnesses, peer)
        else:
            report.witnessed, report.witnesses = checkpoint.size, (peer,)


def _time(data: bytes) -> dt.datetime | None:
    try:
        return Entry.decode(data)[1].time
    except Unverifiable:
        return None


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
