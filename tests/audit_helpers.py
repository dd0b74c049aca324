"""Building audit logs for tests: a node database with attested checkpoint keys and entries."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from exchange.audit.checkpoints import Checkpointer, NoteSigner, attest, origin_for, register_key
from exchange.audit.entries import Entry, Event
from exchange.audit.log import AuditLog
from exchange.cli import main
from exchange.codes import AgencyCode
from exchange.envelope import pki
from exchange.store import db
from tests.agencies import COMMUNE, POLICE

if TYPE_CHECKING:
    import pytest


@dataclass
class Node:
    """A node's audit side: database, log, checkpoint signer and the files an auditor gets."""

    directory: Path
    agency: str
    conn: sqlite3.Connection
    log: AuditLog
    signer: NoteSigner
    checkpointer: Checkpointer

    @property
    def database(self) -> Path:
        return self.directory / "node.db"

    @property
    def key_file(self) -> Path:
        return self.directory / "checkpoint-key.pub"

    @property
    def cert_file(self) -> Path:
        return self.directory / "agency" / pki.AGENCY_CERT

    def add(self, *entries: Entry) -> None:
        with self.conn:
            self.log.append_many(entries)

    def checkpoint(self) -> None:
        assert self.checkpointer.make() is not None


def make_node(directory: Path, ca: pki.CertificateAuthority, agency: str = str(COMMUNE)) -> Node:
    directory.mkdir(parents=True, exist_ok=True)
    pki.issue_agency(ca, AgencyCode(agency), directory / "agency", force=True)
    agency_key = pki.load_key(directory / "agency" / pki.AGENCY_KEY)
    conn = db.connect(directory / "node.db")
    log = AuditLog(conn, agency)
    signer = NoteSigner.generate(origin_for(agency))
    signer.save(directory / "checkpoint-key.pem")
    with conn:
        register_key(log, signer.verifier, attest(signer.verifier, agency_key),
                     (directory / "agency" / pki.AGENCY_CERT).read_text())
    return Node(directory, agency, conn, log, signer, Checkpointer(log, signer, every_entries=10))


def transfer(node: str, event: Event, message: str, counterpart: str, dossier: str = "000.04.10.H49-261129-0001",
             envelope: str = "ab" * 32, **detail: str) -> Entry:
    return Entry(event, node, dossier=dossier, procedure="2.000986", step="residence", message_id=message,
                 counterpart=counterpart, envelope_sha256=envelope, detail=detail)


def filled(node: Node, count: int, checkpoint_every: int = 10) -> Node:
    """Append ``count`` entries (after the key entry), checkpointing every few, and at the end."""
    for i in range(count):
        node.add(transfer(node.agency, Event.PUBLISHED, f"m{i}", str(POLICE),
                          dossier=f"000.04.10.H49-261129-{i % 5 + 1:04d}"))
        if (i + 1) % checkpoint_every == 0:
            node.checkpoint()
    node.checkpoint()
    return node


def raw(path: Path) -> sqlite3.Connection:
    """A connection that may tamper: the append-only triggers dropped, as an attacker would."""
    conn = sqlite3.connect(str(path))
    for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'").fetchall():
        conn.execute(f'DROP TRIGGER "{name}"')
    return conn


def run(capsys: pytest.CaptureFixture[str], *argv: str | Path) -> tuple[int, str, str]:
    """`exchange ARGV…` in process: its exit code, standard output and standard error."""
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err
