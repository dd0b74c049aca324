"""The audit log in the node database: transactions, append-only, checkpoints, witnessing."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from unittest import mock

import pytest

from exchange.audit import checkpoints, merkle
from exchange.audit.checkpoints import NoteSigner, Verifier
from exchange.audit.entries import Entry, Event
from exchange.audit.log import AuditLog
from exchange.audit.witness import Verdict, Witness
from exchange.envelope import pki
from exchange.errors import AuditError, LogDamaged, Unverifiable
from exchange.store import schema
from tests.agencies import COMMUNE, POLICE
from tests.audit_helpers import Node, filled, make_node, raw, transfer

AGENCY = str(COMMUNE)
PACKAGE = Path(__file__).resolve().parent.parent / "exchange"


@pytest.fixture
def ca(tmp_path: Path) -> pki.CertificateAuthority:
    return pki.init_ca(tmp_path / "ca", "Audit Test CA")


@pytest.fixture
def node(tmp_path: Path, ca: pki.CertificateAuthority) -> Node:
    return make_node(tmp_path / "node", ca)


def test_entry_encoding_is_canonical_and_versioned() -> None:
    """An entry encodes to sorted-key JSON with its version and index, and decodes back."""
    entry = transfer(AGENCY, Event.PUBLISHED, "m1", str(POLICE), due="2026-12-01")
    data = entry.encode(7)
    assert data.startswith(b'{"counterpart":"000.30.10.H49","detail":{"due":"2026-12-01"}')
    assert b'"i":7' in data
    assert b'"v":1' in data
    index, back = Entry.decode(data)
    assert (index, back.message_id, back.detail) == (7, "m1", {"due": "2026-12-01"})


def test_non_canonical_entry_is_refused() -> None:
    """The same content with other spacing is not a valid entry."""
    data = transfer(AGENCY, Event.PUBLISHED, "m1", "x").encode(0)
    with pytest.raises(Unverifiable, match="canonical"):
        Entry.decode(data.replace(b",", b", ", 1))


def test_entry_commits_with_the_callers_transaction(node: Node) -> None:
    """An entry appended in a transaction that rolls back leaves no trace, leaf or node."""
    size = node.log.size

    def failing_state_change() -> None:
        with node.conn:
            node.log.append(transfer(AGENCY, Event.RECEIVED, "m1", "x"))
            raise RuntimeError("the state change failed")

    with pytest.raises(RuntimeError):
        failing_state_change()
    assert node.log.size == size
    assert node.conn.execute("SELECT COUNT(*) FROM audit_nodes WHERE level = 0").fetchone()[0] == size


@pytest.mark.parametrize("statement", [
    "UPDATE audit_entries SET data = x'00' WHERE idx = 0",
    "DELETE FROM audit_entries WHERE idx = 0",
    "UPDATE audit_nodes SET hash = x'00' WHERE level = 0 AND idx = 0",
    "DELETE FROM audit_checkpoints",
    "DELETE FROM audit_keys",
    "INSERT INTO audit_entries (idx, data, event, time) VALUES (99, x'00', 'x', 't')",
])
def test_log_is_append_only(node: Node, statement: str) -> None:
    """Updates, deletes and inserts anywhere but the end are refused by the database itself."""
    filled(node, 3)
    with pytest.raises(sqlite3.IntegrityError, match="append|refused"):
        node.conn.execute(statement)


def test_stored_tree_matches_recomputation_at_every_size(node: Node) -> None:
    """Root, inclusion and consistency proofs from stored subtrees equal an in-memory tree's."""
    leaves = [merkle.leaf_hash(node.log.entry(0))]
    for i in range(1, 70):
        entry = transfer(AGENCY, Event.PUBLISHED, f"m{i}", "x")
        node.add(entry)
        leaves.append(merkle.leaf_hash(entry.encode(i)))
        memory = merkle.in_memory(leaves)
        assert node.log.root() == memory.root(len(leaves))
    for size in (1, 2, 3, 31, 32, 33, 70):
        for index in (0, size // 2, size - 1):
            assert node.log.inclusion_proof(index, size) == memory.inclusion_proof(index, size)
        assert node.log.consistency_proof(max(1, size // 3), size) == memory.consistency_proof(
            max(1, size // 3), size)


def test_batch_append_equals_single_appends(tmp_path: Path, ca: pki.CertificateAuthority) -> None:
    """A batch of entries builds the same tree as the same entries appended one by one."""
    one, many = make_node(tmp_path / "one", ca), make_node(tmp_path / "many", ca)
    entries = [transfer(AGENCY, Event.PUBLISHED, f"m{i}", "x") for i in range(37)]
    for entry in entries:
        one.add(entry)
    many.add(*entries)
    assert merkle.root_of([merkle.leaf_hash(d) for _, d in one.log.entries(1)]) == merkle.root_of(
        [merkle.leaf_hash(d) for _, d in many.log.entries(1)])
    assert one.log.size == many.log.size


def test_checkpoint_note_format(node: Node) -> None:
    """A checkpoint is origin, size, base64 root, a blank line, and one em-dash signature line."""
    filled(node, 5)
    note = node.checkpointer.latest()
    assert note is not None
    lines = note.note.split("\n")
    assert lines[0] == f"vn-exchange/audit/{AGENCY}"
    assert lines[1] == str(node.log.size)
    assert lines[3] == ""
    assert lines[4].startswith(f"\u2014 vn-exchange/audit/{AGENCY} ")
    assert checkpoints.verify(note.note, node.signer.verifier).root == node.log.root()


def test_checkpoint_signature_is_checked(node: Node) -> None:
    """A changed size, a changed root or another key's signature is refused."""
    filled(node, 5)
    latest = node.checkpointer.latest()
    assert latest is not None
    note = latest.note
    with pytest.raises(Unverifiable, match="no valid signature"):
        checkpoints.verify(note.replace(f"\n{latest.size}\n", f"\n{latest.size + 1}\n"), node.signer.verifier)
    other = NoteSigner.generate(node.signer.name)
    with pytest.raises(Unverifiable, match="no valid signature"):
        checkpoints.verify(note, other.verifier)
    assert Verifier.parse(str(node.signer.verifier)) == node.signer.verifier


def test_checkpoints_every_n_entries_and_on_time(node: Node) -> None:
    """The checkpointer is due after N entries, or after T seconds with anything new."""
    clock = [0.0]
    node.checkpointer.clock = lambda: clock[0]
    node.checkpointer.every_entries, node.checkpointer.every_seconds = 5, 60
    node.checkpoint()
    node.add(*[transfer(AGENCY, Event.PUBLISHED, f"m{i}", "x") for i in range(3)])
    assert not node.checkpointer.due()
    clock[0] = 61
    assert node.checkpointer.due()
    node.checkpoint()
    node.add(*[transfer(AGENCY, Event.PUBLISHED, f"n{i}", "x") for i in range(5)])
    assert node.checkpointer.due()


def test_signing_failure_never_blocks_appends(node: Node) -> None:
    """When signing fails, appends go on and the next checkpoint covers every entry."""
    with mock.patch.object(NoteSigner, "sign", side_effect=ValueError("key store offline")):
        node.add(transfer(AGENCY, Event.PUBLISHED, "m1", "x"))
        assert node.checkpointer.make() is None
        node.add(transfer(AGENCY, Event.PUBLISHED, "m2", "x"))
    made = node.checkpointer.make()
    assert made is not None
    assert made.size == node.log.size


def test_checkpoint_must_cover_committed_entries_only(node: Node) -> None:
    """Making a checkpoint inside an open transaction is refused."""
    node.conn.execute("BEGIN")
    node.log.append(transfer(AGENCY, Event.PUBLISHED, "m1", "x"))
    with pytest.raises(AuditError, match="commit before"):
        node.checkpointer.make()
    node.conn.rollback()


def test_no_checkpoint_over_a_rewritten_history(node: Node) -> None:
    """If the tree no longer matches the last checkpoint, the node refuses to sign another."""
    filled(node, 5)
    with raw(node.database) as conn:
        conn.execute("UPDATE audit_nodes SET hash = ? WHERE level = 2 AND idx = 0", (b"\x00" * 32,))
    node.add(transfer(AGENCY, Event.PUBLISHED, "late", "x"))
    with pytest.raises(LogDamaged, match="no longer matches"):
        node.checkpointer.make()


def test_second_checkpoint_of_the_same_size_is_refused(node: Node) -> None:
    """The database refuses a checkpoint that does not cover more entries than the last."""
    filled(node, 5)
    latest = node.checkpointer.latest()
    assert latest is not None
    with pytest.raises(sqlite3.IntegrityError), node.conn:
        node.conn.execute("INSERT INTO audit_checkpoints (size, root, note, made_at) VALUES (?, ?, ?, ?)",
                          (latest.size, b"\x01" * 32, "forged", "now"))


def test_witness_accepts_a_growing_honest_peer(tmp_path: Path, ca: pki.CertificateAuthority) -> None:
    """Checkpoints carried on receipts, with proofs from the last one sent, verify as consistent."""
    peer = make_node(tmp_path / "peer", ca, str(POLICE))
    me = make_node(tmp_path / "me", ca)
    witness, peer_witness = Witness(me.log), Witness(peer.log)
    verdicts = []
    for round_ in range(3):
        filled(peer, 4 + round_)
        with peer.conn:
            attachment = peer_witness.attachment_for(AGENCY, peer.checkpointer.latest())
        assert attachment is not None
        with me.conn:
            observed = witness.observe(attachment.note, peer.signer.verifier, attachment.from_size,
                                       attachment.proof)
        verdicts.append(observed.verdict)
    assert verdicts == [Verdict.FIRST, Verdict.CONSISTENT, Verdict.CONSISTENT]


def test_witness_detects_a_fork(tmp_path: Path, ca: pki.CertificateAuthority) -> None:
    """Two roots for one size from one peer are a fork: logged, audited, and the node goes on."""
    peer = filled(make_node(tmp_path / "peer", ca, str(POLICE)), 4)
    me = make_node(tmp_path / "me", ca)
    witness = Witness(me.log)
    honest = peer.checkpointer.latest()
    assert honest is not None
    forged = peer.signer.sign(checkpoints.checkpoint_body(honest.origin, honest.size, b"\x07" * 32))
    with me.conn:
        assert witness.observe(honest.note, peer.signer.verifier).verdict is Verdict.FIRST
    size = me.log.size
    with me.conn:
        observed = witness.observe(forged, peer.signer.verifier)
    assert observed.verdict is Verdict.FORK
    assert me.log.size == size + 1
    _, alarm = Entry.decode(me.log.entry(size))
    assert alarm.event is Event.FORK_DETECTED
    assert alarm.counterpart == honest.origin


def test_witness_detects_an_inconsistent_proof(tmp_path: Path, ca: pki.CertificateAuthority) -> None:
    """A larger checkpoint whose proof does not link it to the held one is a fork."""
    peer = filled(make_node(tmp_path / "peer", ca, str(POLICE)), 4)
    me = make_node(tmp_path / "me", ca)
    witness = Witness(me.log)
    first = peer.checkpointer.latest()
    assert first is not None
    with me.conn:
        witness.observe(first.note, peer.signer.verifier)
    rewritten = peer.signer.sign(checkpoints.checkpoint_body(first.origin, first.size + 3, b"\x09" * 32))
    with me.conn:
        observed = witness.observe(rewritten, peer.signer.verifier, first.size, (b"\x01" * 32,))
    assert observed.verdict is Verdict.FORK


def test_witness_refuses_an_unsigned_checkpoint(tmp_path: Path, ca: pki.CertificateAuthority) -> None:
    """A checkpoint signed by another key than the peer's is refused outright."""
    peer = filled(make_node(tmp_path / "peer", ca, str(POLICE)), 2)
    me = make_node(tmp_path / "me", ca)
    latest = peer.checkpointer.latest()
    assert latest is not None
    with pytest.raises(Unverifiable):
        Witness(me.log).observe(latest.note, NoteSigner.generate(latest.origin).verifier)


def test_audit_log_migrates_a_bare_database(tmp_path: Path) -> None:
    """An audit log opened on a new database migrates it: user_version is set and every audit and
    witness table exists."""
    conn = sqlite3.connect(tmp_path / "bare.db")
    AuditLog(conn, AGENCY)
    assert schema.version(conn) == schema.VERSION
    tables = {name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"audit_entries", "audit_nodes", "audit_checkpoints", "audit_keys", "peer_checkpoints",
            "sent_checkpoints"} <= tables


def test_audit_log_in_a_transaction_needs_a_migrated_database(tmp_path: Path) -> None:
    """Opened inside a transaction on an unmigrated database, the audit log refuses rather than commit it."""
    conn = sqlite3.connect(tmp_path / "bare.db")
    conn.execute("BEGIN")
    with pytest.raises(AuditError, match="not migrated"):
        AuditLog(conn, AGENCY)
    conn.rollback()
    AuditLog(conn, AGENCY)
    conn.execute("BEGIN")
    assert AuditLog(conn, AGENCY).size == 0


def test_missing_stored_hash_is_damage(node: Node) -> None:
    """A subtree hash missing from the database is reported as LogDamaged, not a plain refusal."""
    filled(node, 3)
    with raw(node.database) as conn:
        conn.execute("DELETE FROM audit_nodes WHERE level = 1 AND idx = 0")
    with pytest.raises(LogDamaged, match="level 1 index 0"):
        node.log.root(3)


def test_audit_sql_lives_in_the_store_and_imports_go_down() -> None:
    """No audit module runs SQL itself, and no store module imports the audit package."""
    for module in (PACKAGE / "audit").glob("*.py"):
        assert "execute(" not in module.read_text("utf-8"), module.name
    for module in (PACKAGE / "store").glob("*.py"):
        assert "exchange.audit" not in module.read_text("utf-8"), module.name
