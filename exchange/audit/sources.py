"""Where an audited log comes from (a node database opened read-only, or a bundle file) and which
checkpoint keys an auditor trusts (given outright, or attested by the agency's certificate).

Everything here reads; nothing writes to a node's database.
"""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from cryptography import x509

from exchange import clock
from exchange.audit import checkpoints, merkle
from exchange.audit.checkpoints import Checkpoint, Verifier
from exchange.audit.entries import Entry
from exchange.audit.log import stored_tree
from exchange.errors import AuditError, Unverifiable
from exchange.store import audit as rows
from exchange.store.audit import KeyRecord
from exchange.store.db import connect

BUNDLE_FORMAT = "vn-exchange-audit-bundle"
BUNDLE_VERSION = 1


class LogSource(Protocol):
    """A log to audit, from a node database or from a bundle."""

    origin: str

    def entries(self) -> Iterator[tuple[int, bytes]]: ...

    def dossier_entries(self, dossier: str) -> list[tuple[int, bytes]]: ...

    def checkpoint_notes(self) -> list[str]: ...

    def key_records(self) -> list[KeyRecord]: ...

    def count(self) -> int: ...

    def tree(self) -> merkle.SubtreeHashes: ...

    def peer_checkpoint_notes(self) -> list[str]:
        """The checkpoints of other nodes that this node keeps as their witness."""
        ...


class DatabaseSource:
    """A node database, opened read-only; proofs come from its stored subtree hashes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.conn = connect(path, readonly=True)
        try:
            note, first = rows.first_checkpoint_note(self.conn), rows.first_entry(self.conn)
        except sqlite3.DatabaseError as exc:
            raise Unverifiable(f"{path}: not a node database ({exc})") from None
        if note is not None:
            self.origin = checkpoints.parse(note).origin
        elif first is not None:
            self.origin = checkpoints.origin_for(Entry.decode(first)[1].node)
        else:
            self.origin = ""

    def count(self) -> int:
        return rows.count_entries(self.conn)

    def entries(self) -> Iterator[tuple[int, bytes]]:
        return rows.entries(self.conn)

    def dossier_entries(self, dossier: str) -> list[tuple[int, bytes]]:
        return rows.dossier_entries(self.conn, dossier)

    def checkpoint_notes(self) -> list[str]:
        return rows.checkpoint_notes(self.conn)

    def key_records(self) -> list[KeyRecord]:
        return rows.key_records(self.conn)

    def tree(self) -> merkle.SubtreeHashes:
        return stored_tree(self.conn)

    def stored_nodes(self, level: int) -> Iterator[tuple[int, bytes]]:
        return rows.subtrees_at(self.conn, level)

    def peer_checkpoint_notes(self) -> list[str]:
        return rows.all_peer_notes(self.conn)


class BundleSource:
    """A bundle file: JSON lines holding a header, keys, entries (exact bytes) and checkpoints.
    Proofs come from a tree recomputed in memory from the entries."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._keys: list[KeyRecord] = []
        self._entries: list[bytes] = []
        self._notes: list[str] = []
        self._peer_notes: list[str] = []
        try:
            lines = path.read_text("utf-8").splitlines()
            header = json.loads(lines[0])
        except (OSError, ValueError, IndexError) as exc:
            raise Unverifiable(f"{path}: not a readable bundle ({exc})") from None
        if header.get("format") != BUNDLE_FORMAT or header.get("version") != BUNDLE_VERSION:
            raise Unverifiable(f"{path}: not a {BUNDLE_FORMAT} version {BUNDLE_VERSION}")
        self.origin = str(header.get("origin", ""))
        self.exported_at = _moment(header.get("exported_at"))
        """When the node exported it: the moment its checkpoints' age is judged at."""
        for number, line in enumerate(lines[1:], 2):
            self._read_line(number, line)

    def _read_line(self, number: int, line: str) -> None:
        try:
            record = json.loads(line)
        except ValueError:
            raise Unverifiable(f"{self.path}:{number}: not a JSON line") from None
        if "entry" in record:
            self._entries.append(str(record["entry"]).encode("utf-8"))
        elif "checkpoint" in record:
            self._notes.append(str(record["checkpoint"]))
        elif "peer_checkpoint" in record:
            self._peer_notes.append(str(record["peer_checkpoint"]))
        elif "key" in record:
            self._keys.append(KeyRecord(**record["key"]))
        else:
            raise Unverifiable(f"{self.path}:{number}: unknown record {sorted(record)}")

    def count(self) -> int:
        return len(self._entries)

    def entries(self) -> Iterator[tuple[int, bytes]]:
        yield from enumerate(self._entries)

    def dossier_entries(self, dossier: str) -> list[tuple[int, bytes]]:
        return [(index, data) for index, data in enumerate(self._entries)
                if Entry.decode(data)[1].dossier == dossier]

    def checkpoint_notes(self) -> list[str]:
        return list(self._notes)

    def key_records(self) -> list[KeyRecord]:
        return list(self._keys)

    def tree(self) -> merkle.SubtreeHashes:
        return merkle.in_memory([merkle.leaf_hash(e) for e in self._entries])

    def peer_checkpoint_notes(self) -> list[str]:
        return list(self._peer_notes)


def _moment(text: object) -> dt.datetime | None:
    try:
        return clock.parse(str(text)) if text else None
    except ValueError:
        return None


def open_source(path: Path) -> DatabaseSource | BundleSource:
    """A database or a bundle, told apart by their first bytes."""
    try:
        with path.open("rb") as handle:
            magic = handle.read(16)
    except OSError as exc:
        raise AuditError(f"{path}: {exc.strerror}") from None
    return DatabaseSource(path) if magic.startswith(b"SQLite format 3") else BundleSource(path)


def decoded(source: LogSource) -> list[Entry]:
    """Every entry of a log, decoded; Unverifiable at the first that is not canonical."""
    return [Entry.decode(data)[1] for _, data in source.entries()]


def checkpoint_of(source: LogSource, size: int) -> Checkpoint:
    """The log's own checkpoint of ``size``; AuditError naming the sizes it has otherwise."""
    held = [checkpoints.parse(note) for note in source.checkpoint_notes()]
    for checkpoint in held:
        if checkpoint.size == size:
            return checkpoint
    sizes = ", ".join(str(c.size) for c in held) or "none"
    raise AuditError(f"the log has no checkpoint of size {size} (its checkpoints: {sizes})")


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

    @property
    def given(self) -> bool:
        return bool(self.keys) or self.cert is not None

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
    """The checkpoint, if one of ``verifiers`` signed it; Unverifiable naming the problem otherwise."""
    errors = []
    for verifier in verifiers:
        try:
            return checkpoints.verify(note, verifier)
        except Unverifiable as exc:
            errors.append(str(exc))
    parsed = checkpoints.parse(note)
    raise Unverifiable(f"checkpoint of size {parsed.size}: no trusted signature "
                       f"({'; '.join(errors) or 'no trusted key'})")
