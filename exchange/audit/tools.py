"""What auditors run: verify a log (database or bundle), export a bundle, prove a dossier's entries,
check two checkpoints' consistency, reconcile two nodes, and show a dossier's hand-offs.

Everything here reads; nothing writes to a node's database.
"""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from cryptography import x509

from exchange.audit import checkpoints, merkle
from exchange.audit.checkpoints import Checkpoint, Verifier
from exchange.audit.log import AuditError, Entry, Event, stored_subtree
from exchange.store.db import connect

BUNDLE_FORMAT = "vn-exchange-audit-bundle"
BUNDLE_VERSION = 1
PROGRESS_EVERY = 50_000


@dataclass(frozen=True)
class KeyRecord:
    verifier: str
    attestation: str
    certificate: str
    from_size: int


class LogSource(Protocol):
    """A log to audit, from a node database or from a bundle."""

    origin: str

    def entries(self) -> Iterator[tuple[int, bytes]]: ...

    def checkpoint_notes(self) -> list[str]: ...

    def key_records(self) -> list[KeyRecord]: ...

    def count(self) -> int: ...


class DatabaseSource:
    """A node database, opened read-only."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.conn = connect(path, readonly=True)
        try:
            row = self.conn.execute("SELECT note FROM audit_checkpoints ORDER BY size LIMIT 1").fetchone()
            first = self.conn.execute("SELECT data FROM audit_entries ORDER BY idx LIMIT 1").fetchone()
        except sqlite3.DatabaseError as exc:
            raise AuditError(f"{path}: not a node database ({exc})") from None
        if row:
            self.origin = checkpoints.parse(row[0]).origin
        elif first:
            self.origin = checkpoints.origin_for(Entry.decode(bytes(first[0]))[1].node)
        else:
            self.origin = ""

    def count(self) -> int:
        return int(self.conn.execute("SELECT COUNT(*) FROM audit_entries").fetchone()[0])

    def entries(self) -> Iterator[tuple[int, bytes]]:
        for index, data in self.conn.execute("SELECT idx, data FROM audit_entries ORDER BY idx"):
            yield int(index), bytes(data)

    def checkpoint_notes(self) -> list[str]:
        return [r[0] for r in self.conn.execute("SELECT note FROM audit_checkpoints ORDER BY size")]

    def key_records(self) -> list[KeyRecord]:
        rows = self.conn.execute("SELECT verifier, attestation, certificate, from_size FROM audit_keys "
                                 "ORDER BY from_size")
        return [KeyRecord(*row) for row in rows]

    def stored_nodes(self, level: int) -> Iterator[tuple[int, bytes]]:
        query = "SELECT idx, hash FROM audit_nodes WHERE level = ? ORDER BY idx"
        for index, value in self.conn.execute(query, (level,)):
            yield int(index), bytes(value)


class BundleSource:
    """A bundle file: JSON lines holding a header, keys, entries (exact bytes) and checkpoints."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._keys: list[KeyRecord] = []
        self._entries: list[bytes] = []
        self._notes: list[str] = []
        try:
            lines = path.read_text("utf-8").splitlines()
            header = json.loads(lines[0])
        except (OSError, ValueError, IndexError) as exc:
            raise AuditError(f"{path}: not a readable bundle ({exc})") from None
        if header.get("format") != BUNDLE_FORMAT or header.get("version") != BUNDLE_VERSION:
            raise AuditError(f"{path}: not a {BUNDLE_FORMAT} version {BUNDLE_VERSION}")
        self.origin = str(header.get("origin", ""))
        for number, line in enumerate(lines[1:], 2):
            self._read_line(number, line)

    def _read_line(self, number: int, line: str) -> None:
        try:
            record = json.loads(line)
        except ValueError:
            raise AuditError(f"{self.path}:{number}: not a JSON line") from None
        if "entry" in record:
            self._entries.append(str(record["entry"]).encode("utf-8"))
        elif "checkpoint" in record:
            self._notes.append(str(record["checkpoint"]))
        elif "key" in record:
            self._keys.append(KeyRecord(**record["key"]))
        else:
            raise AuditError(f"{self.path}:{number}: unknown record {sorted(record)}")

    def count(self) -> int:
        return len(self._entries)

    def entries(self) -> Iterator[tuple[int, bytes]]:
        yield from enumerate(self._entries)

    def checkpoint_notes(self) -> list[str]:
        return list(self._notes)

    def key_records(self) -> list[KeyRecord]:
        return list(self._keys)

    def leaves(self) -> list[bytes]:
        return [merkle.leaf_hash(e) for e in self._entries]


def open_source(path: Path) -> DatabaseSource | BundleSource:
    """A database or a bundle, told apart by their first bytes."""
    try:
        with path.open("rb") as handle:
            magic = handle.read(16)
    except OSError as exc:
        raise AuditError(f"{path}: {exc.strerror}") from None
    return DatabaseSource(path) if magic.startswith(b"SQLite format 3") else BundleSource(path)


# Trust -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Trust:
    """Which checkpoint keys an auditor accepts: given outright, or attested by a certificate."""

    keys: tuple[Verifier, ...] = ()
    cert: x509.Certificate | None = None

    @classmethod
    def from_key_file(cls, path: Path) -> Trust:
        try:
            lines = [line for line in path.read_text("utf-8").splitlines() if line.strip()]
        except OSError as exc:
            raise AuditError(f"{path}: {exc.strerror}") from None
        return cls(keys=tuple(Verifier.parse(line) for line in lines))

    @classmethod
    def from_cert_file(cls, path: Path) -> Trust:
        try:
            return cls(cert=x509.load_pem_x509_certificate(path.read_bytes()))
        except (OSError, ValueError) as exc:
            raise AuditError(f"{path}: not a PEM certificate ({exc})") from None

    def verifiers(self, source: LogSource, problems: list[str]) -> list[Verifier]:
        if self.cert is None:
            return list(self.keys)
        trusted = []
        for record in source.key_records():
            verifier = Verifier.parse(record.verifier)
            if checkpoints.check_attestation(verifier, record.attestation, self.cert):
                trusted.append(verifier)
            else:
                problems.append(f"checkpoint key {verifier.name}+{verifier.key_hash.hex()} is not "
                                "attested by the given certificate")
        return trusted


def check_note(note: str, verifiers: list[Verifier]) -> Checkpoint:
    """The checkpoint, if one of ``verifiers`` signed it; AuditError naming the problem otherwise."""
    errors = []
    for verifier in verifiers:
        try:
            return checkpoints.verify(note, verifier)
        except AuditError as exc:
            errors.append(str(exc))
    parsed = checkpoints.parse(note)
    raise AuditError(f"checkpoint of size {parsed.size}: no trusted signature "
                     f"({'; '.join(errors) or 'no trusted key'})")


# Verify ------------------------------------------------------------------------------------

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
        except AuditError as exc:
            report.problems.append(str(exc))
    return signed


def _check_entry(position: int, index: int, data: bytes, report: Report, origin: str) -> bool:
    if index != position:
        report.problems.append(f"entry {position} is missing: the next stored entry is {index}")
        return False
    try:
        own_index, entry = Entry.decode(data)
    except AuditError as exc:
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


# Export, prove, consistency -------------------------------------------------------------

def export(source: DatabaseSource, out: Path) -> int:
    """Write a bundle; returns the number of entries."""
    notes = source.checkpoint_notes()
    header = {"format": BUNDLE_FORMAT, "version": BUNDLE_VERSION, "origin": source.origin,
              "entries": source.count(), "checkpoints": len(notes),
              "exported_at": dt.datetime.now(dt.UTC).isoformat()}
    count = 0
    tmp = out.with_name(out.name + ".part")
    with tmp.open("w", encoding="utf-8") as handle:
        handle.write(json.dumps(header, ensure_ascii=False) + "\n")
        for key in source.key_records():
            handle.write(json.dumps({"key": key.__dict__}, ensure_ascii=False) + "\n")
        for _, data in source.entries():
            handle.write(json.dumps({"entry": data.decode("utf-8")}, ensure_ascii=False) + "\n")
            count += 1
        for note in notes:
            handle.write(json.dumps({"checkpoint": note}, ensure_ascii=False) + "\n")
    tmp.replace(out)
    return count


def prove(source: DatabaseSource, dossier: str) -> dict[str, Any]:
    """Every entry about ``dossier`` with its inclusion proof against the latest checkpoint."""
    notes = source.checkpoint_notes()
    if not notes:
        raise AuditError("the log has no checkpoint yet: nothing to prove against")
    latest = checkpoints.parse(notes[-1])
    tree = merkle.SubtreeHashes(lambda level, index: stored_subtree(source.conn, level, index))
    rows = source.conn.execute("SELECT idx, data FROM audit_entries WHERE dossier = ? ORDER BY idx",
                               (dossier,))
    proven, pending = [], []
    for index, data in rows:
        if index >= latest.size:
            pending.append({"index": index, "entry": bytes(data).decode("utf-8")})
            continue
        proven.append({"index": index, "entry": bytes(data).decode("utf-8"),
                       "leaf_hash": merkle.leaf_hash(bytes(data)).hex(),
                       "proof": [p.hex() for p in tree.inclusion_proof(index, latest.size)]})
    return {"dossier": dossier, "origin": latest.origin, "tree_size": latest.size,
            "root": latest.root.hex(), "checkpoint": latest.note,
            "keys": [k.__dict__ for k in source.key_records()], "entries": proven,
            "not_yet_checkpointed": pending}


def consistency(old_note: str, new_note: str, bundle: BundleSource, trust: Trust) -> list[str]:
    """Problems with two checkpoints of one log: signatures, roots against the bundle, the proof."""
    problems: list[str] = []
    verifiers = trust.verifiers(bundle, problems) if (trust.keys or trust.cert) else [
        Verifier.parse(k.verifier) for k in bundle.key_records()]
    try:
        old, new = check_note(old_note, verifiers), check_note(new_note, verifiers)
    except AuditError as exc:
        return [*problems, str(exc)]
    if old.origin != new.origin:
        return [*problems, f"the checkpoints are of two logs: {old.origin} and {new.origin}"]
    if old.size > new.size:
        old, new = new, old
    leaves = bundle.leaves()
    if new.size > len(leaves):
        return [*problems, f"the bundle has {len(leaves)} entries, the newer checkpoint covers {new.size}"]
    tree = merkle.in_memory(leaves)
    for checkpoint in (old, new):
        if tree.root(checkpoint.size) != checkpoint.root:
            problems.append(f"checkpoint of size {checkpoint.size} does not match the bundle's entries")
    proof = tree.consistency_proof(old.size, new.size) if old.size else []
    if old.size and not merkle.verify_consistency(old.size, new.size, proof, old.root, new.root):
        problems.append(f"checkpoint {old.size} and checkpoint {new.size} are not consistent: a fork")
    return problems


# Reconcile and show ----------------------------------------------------------------------

def _decoded(source: LogSource) -> list[Entry]:
    return [Entry.decode(data)[1] for _, data in source.entries()]


def reconcile(a: LogSource, b: LogSource) -> tuple[int, list[str]]:
    """Match every transfer between two nodes with its other half; (matched, gaps in words)."""
    entries_a, entries_b = _decoded(a), _decoded(b)
    if not entries_a or not entries_b:
        return 0, ["one of the bundles has no entries"]
    node_a, node_b = entries_a[0].node, entries_b[0].node
    matched, gaps = 0, []
    for sender, receiver, sent, got in ((node_a, node_b, entries_a, entries_b),
                                        (node_b, node_a, entries_b, entries_a)):
        count, found = _match_direction(sender, receiver, sent, got)
        matched += count
        gaps += found
    return matched, gaps


def _by(entries: list[Entry], events: set[Event], counterpart: str) -> dict[str, Entry]:
    return {e.message_id: e for e in entries
            if e.event in events and e.counterpart == counterpart and e.message_id}


def _match_direction(sender: str, receiver: str, sent: list[Entry],
                     got: list[Entry]) -> tuple[int, list[str]]:
    published = _by(sent, {Event.PUBLISHED}, receiver)
    received = _by(got, {Event.RECEIVED, Event.STATUS_RECEIVED, Event.REFUSED}, sender)
    receipts_sent = _by(got, {Event.RECEIPT_SENT}, sender)
    receipts_got = _by(sent, {Event.RECEIPT_RECEIVED}, receiver)
    gaps, matched = [], 0
    for message, entry in sorted(published.items()):
        other = received.get(message)
        where = f"{sender} → {receiver} message {message} (dossier {entry.dossier}, step {entry.step})"
        if other is None:
            gaps.append(f"{where}: published by {sender}, never recorded by {receiver}")
            continue
        if other.envelope_sha256 != entry.envelope_sha256:
            gaps.append(f"{where}: {sender} published envelope {entry.envelope_sha256}, "
                        f"{receiver} recorded {other.envelope_sha256}")
        if message not in receipts_sent:
            gaps.append(f"{where}: {receiver} recorded no receipt sent")
        elif message not in receipts_got:
            gaps.append(f"{where}: {receiver} sent a receipt, {sender} recorded none received")
        else:
            matched += 1
    for message in sorted(set(received) - set(published)):
        gaps.append(f"{sender} → {receiver} message {message}: recorded by {receiver}, "
                    f"never published by {sender}")
    return matched, gaps


def show(source: LogSource, dossier: str | None, tz: dt.tzinfo) -> list[str]:
    """The processing-control view: each hand-off with its time, from, to, result and timeliness."""
    entries = [e for e in _decoded(source) if dossier is None or e.dossier == dossier]
    if dossier is None:
        return _dossier_list(entries)
    rows = [("time", "event", "from", "to", "step", "result", "due", "")]
    for entry in entries:
        if entry.event not in _HANDOFF:
            continue
        local = entry.time.astimezone(tz)
        sender, receiver = _parties(entry)
        due = entry.detail.get("due", "")
        timely = ""
        if due:
            timely = "on time" if local.date().isoformat() <= due else "LATE"
        rows.append((f"{local:%Y-%m-%d %H:%M}", entry.event.value, sender, receiver, entry.step or "",
                     entry.detail.get("result", entry.detail.get("reason", "")), due, timely))
    if len(rows) == 1:
        return [f"no hand-off of dossier {dossier} in this log"]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return [f"dossier {dossier}", *("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
                                    for r in rows)]


_HANDOFF = {Event.SUBMITTED, Event.PUBLISHED, Event.RECEIVED, Event.REFUSED, Event.DELIVERED,
            Event.STEP_DONE, Event.RECEIPT_RECEIVED, Event.STATUS_SENT, Event.STATUS_RECEIVED,
            Event.DEAD_LETTERED}


def _parties(entry: Entry) -> tuple[str, str]:
    other = entry.counterpart or ""
    if entry.event in (Event.RECEIVED, Event.REFUSED, Event.STATUS_RECEIVED, Event.RECEIPT_RECEIVED):
        return other, entry.node
    if entry.event is Event.DELIVERED:
        return entry.node, "agency system"
    if entry.event in (Event.SUBMITTED, Event.STEP_DONE):
        return entry.node, other or entry.node
    return entry.node, other


def _dossier_list(entries: list[Entry]) -> list[str]:
    seen: dict[str, list[Entry]] = {}
    for entry in entries:
        if entry.dossier:
            seen.setdefault(entry.dossier, []).append(entry)
    if not seen:
        return ["no dossier in this log"]
    return [f"{code}  {len(items)} entries, last: {items[-1].event.value} at "
            f"{items[-1].time:%Y-%m-%d %H:%M}Z" for code, items in sorted(seen.items())]
