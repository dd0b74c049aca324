"""The node's store: one schema with versioned migrations, states as enums, errors by type,
one definition of overdue shared by the command line and the HTTP API."""

from __future__ import annotations

import hashlib
import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from exchange.adapters.dropfolder import DropFolder
from exchange.codes import AgencyCode, DossierCode
from exchange.demo import samples
from exchange.errors import AlreadySubmitted, StepNotReady, UnknownDossier
from exchange.node.context import NodeContext
from exchange.node.status import view
from exchange.node.workflow import complete, submit
from exchange.store import schema
from exchange.store.node import Store
from exchange.store.states import DossierState, StepState
from tests.agencies import BIRTH, COMMUNE, POLICE


def dossier_bytes(sequence: int) -> bytes:
    spec = samples.SampleSpec(COMMUNE, BIRTH, size_kb=2, sequence=sequence)
    return samples.to_bytes(samples.sample_dossier(spec))


def test_a_new_database_is_at_the_latest_schema_version(tmp_path: Path) -> None:
    """Opening a store migrates an empty database to the schema version the code knows."""
    store = Store(tmp_path / "node.db")
    try:
        assert schema.version(store.conn) == schema.VERSION
        tables = {name for (name,) in store.conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        assert {"outbox", "inbox", "dossiers", "steps", "statuses", "webhooks", "audit_entries",
                "peer_checkpoints"} <= tables
    finally:
        store.close()


def test_a_database_from_before_versions_keeps_its_rows(tmp_path: Path) -> None:
    """A database made before user_version was counted (tables present, version 0) migrates in place."""
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as conn:
        conn.executescript(schema.NODE_STATE)
        conn.execute("INSERT INTO dossiers (code, procedure, origin, received_at, state, payload, updated) "
                     "VALUES ('x', '2.000986', 'o', '2026-01-01T00:00:00Z', 'processing', x'00', 0)")
    conn.close()
    store = Store(path)
    try:
        assert schema.version(store.conn) == schema.VERSION
        row = store.dossier("x")
        assert row is not None
        assert row.state is DossierState.PROCESSING
    finally:
        store.close()


def test_migrating_twice_changes_nothing(tmp_path: Path) -> None:
    """A second process opening a migrated database finds nothing to do."""
    Store(tmp_path / "node.db").close()
    store = Store(tmp_path / "node.db")
    try:
        assert schema.migrate(store.conn) == schema.VERSION
    finally:
        store.close()


def test_submitting_a_dossier_twice_is_already_submitted(commune: NodeContext) -> None:
    """The second submission of one dossier raises AlreadySubmitted naming its code, and changes nothing."""
    code = submit(commune, dossier_bytes(1))
    entries = commune.audit.size
    with pytest.raises(AlreadySubmitted) as caught:
        submit(commune, dossier_bytes(1))
    assert caught.value.code == str(code)
    assert commune.audit.size == entries


def test_a_step_of_an_unknown_dossier_is_unknown(commune: NodeContext) -> None:
    """Reporting a step of a dossier this node never saw raises UnknownDossier."""
    with pytest.raises(UnknownDossier):
        complete(commune, DossierCode(f"{COMMUNE}-260101-0042"), "residence")


def test_another_agencys_step_is_not_ready_here(commune: NodeContext) -> None:
    """A step the police performs cannot be reported done at the commune: StepNotReady, not a text match."""
    code = submit(commune, dossier_bytes(2))
    police_step = next(s for s in commune.store.steps(str(code)) if s.agency == str(POLICE))
    with pytest.raises(StepNotReady, match="performed by"):
        complete(commune, code, police_step.step)


def test_states_come_back_as_enums(commune: NodeContext) -> None:
    """Rows read from the store carry enum states, so callers compare by identity, not by spelling."""
    code = submit(commune, dossier_bytes(3))
    row = commune.store.dossier(str(code))
    assert row is not None
    assert row.state is DossierState.PROCESSING
    assert {s.state for s in commune.store.steps(str(code))} <= set(StepState)
    assert commune.store.steps(str(code))[0].state is StepState.DONE


def _make_overdue(ctx: NodeContext, code: DossierCode, agency: AgencyCode) -> str:
    """Put a step of ``agency`` in the ready state with a due date long past (what time would do)."""
    step = next(s for s in ctx.store.steps(str(code)) if s.agency == str(agency) and s.state is not StepState.DONE)
    with ctx.store.transaction() as conn:
        conn.execute("UPDATE steps SET state = 'ready', due = '2025-01-02' WHERE dossier = ? AND step = ?",
                     (str(code), step.step))
    return step.step


def test_overdue_is_one_answer_for_status_and_the_api(commune: NodeContext) -> None:
    """A step ready past its due date is overdue alike in `status`, the timeline and the API's overdue list."""
    late = submit(commune, dossier_bytes(4))
    on_time = submit(commune, dossier_bytes(5))
    step = _make_overdue(commune, late, COMMUNE)
    flagged = {(row["code"], s["step"]) for row in view(commune) for s in row["steps"] if s["overdue"]}
    assert flagged == {(str(late), step)}
    assert [s["step"] for s in view(commune, str(late))[0]["steps"] if s["overdue"]] == [step]
    assert [row["code"] for row in view(commune, overdue_only=True)] == [str(late)]
    assert str(on_time) in {row["code"] for row in view(commune)}


def test_overdue_elsewhere_is_not_on_this_agencys_list(commune: NodeContext) -> None:
    """The API's overdue list is this agency's work; a peer's late step shows in status, not in the list."""
    code = submit(commune, dossier_bytes(6))
    _make_overdue(commune, code, POLICE)
    assert any(s["overdue"] for row in view(commune) for s in row["steps"])
    assert view(commune, overdue_only=True) == []


def test_a_file_reusing_a_submitted_code_is_rejected(commune: NodeContext) -> None:
    """A different file with the code of a dossier already submitted is rejected, not taken as a retry."""
    folder = DropFolder(commune.config.dropfolder_dir)
    submit(commune, dossier_bytes(7))
    other = samples.to_bytes(samples.sample_dossier(samples.SampleSpec(COMMUNE, BIRTH, size_kb=3, sequence=7)))
    (folder.root / "inbox" / "again.xml").write_bytes(other)
    folder.poll(commune)
    assert (folder.root / "rejected" / "again.xml").exists()
    assert "already submitted" in (folder.root / "rejected" / "again.error.txt").read_text()


def test_status_json_lists_what_waits_here(commune: NodeContext) -> None:
    """`status --json` rows name the steps waiting at this node, and round-trip through JSON."""
    code = submit(commune, dossier_bytes(8))
    (row,) = [r for r in json.loads(json.dumps(view(commune))) if r["code"] == str(code)]
    assert row["state"] == "processing"
    assert row["pending_here"] == [s.step for s in commune.store.ready_steps(str(COMMUNE)) if s.dossier == str(code)]


def test_a_command_waiting_on_a_locked_database_says_so(commune: NodeContext, monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    """`exchange done` while another process holds the node's write lock past the busy timeout exits
    1 with a sentence naming the database, not a sqlite3 traceback."""
    from exchange.cli import main
    from exchange.store import db

    code = submit(commune, dossier_bytes(9))
    monkeypatch.setattr(db, "BUSY_TIMEOUT_MS", 200)
    holder = sqlite3.connect(commune.config.database, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        status = main(["done", "--config", str(commune.config.source), "--dossier", str(code), "--step", "return"])
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    err = capsys.readouterr().err
    assert status == 1
    assert "is locked by another process" in err
    assert str(commune.config.database) in err
    assert "Traceback" not in err


def test_opening_another_connection_keeps_this_process_locks(tmp_path: Path) -> None:
    """A second Store on the same file (a thread's own, as the delivery thread and the HTTP API
    have) must not drop the first one's POSIX locks: closing any descriptor of a file drops every
    lock the process holds on it. Seen: another process's connection, believing itself the last,
    then deleted the WAL under the node, and the database was malformed."""
    path = tmp_path / "node.db"
    first = Store(path)
    with first.transaction():
        first.conn.execute("CREATE TABLE IF NOT EXISTS probe (x)")
        first.conn.execute("INSERT INTO probe VALUES (1)")
    second = Store(path)
    try:
        subprocess.run([sys.executable, "-c", "import sqlite3, sys; c = sqlite3.connect(sys.argv[1]); "
                        "c.execute('SELECT COUNT(*) FROM probe').fetchall(); c.close()", str(path)], check=True)
        assert path.with_name("node.db-wal").exists()
        assert first.conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    finally:
        second.close()
        first.close()


def test_the_gauges_questions_use_an_index(tmp_path: Path) -> None:
    """The overdue summary and the webhook backlog, asked every few seconds, search an index
    instead of scanning every step and webhook ever recorded (schema version 5)."""
    store = Store(tmp_path / "node.db")
    try:
        plans = {
            "overdue": store.conn.execute(
                "EXPLAIN QUERY PLAN SELECT COUNT(DISTINCT dossier), MIN(due) FROM steps "
                "WHERE state = ? AND due IS NOT NULL AND due < ?", ("ready", "2026-12-01")).fetchall(),
            "webhooks": store.conn.execute(
                "EXPLAIN QUERY PLAN SELECT COUNT(*) FROM webhooks WHERE state = ?", ("pending",)).fetchall(),
        }
        for name, plan in plans.items():
            details = " ".join(str(row[-1]) for row in plan)
            assert "INDEX" in details, f"{name}: {details}"
    finally:
        store.close()


def test_a_certificate_learnt_in_a_rolled_back_transaction_is_learnt_again(tmp_path: Path) -> None:
    """The store remembers which peer certificates it kept only once they commit: one learnt in a
    transaction that rolled back is written again the next time it is seen."""
    store = Store(tmp_path / "node.db")
    der = b"a peer certificate's DER"
    fingerprint = hashlib.sha256(der).hexdigest()

    def learn_then_fail() -> None:
        with store.transaction():
            store.learn_certificate("000.30.10.H49", der, 4e9)
            raise RuntimeError("rolled back")

    try:
        with pytest.raises(RuntimeError):
            learn_then_fail()
        assert not store.learnt_certificate("000.30.10.H49", fingerprint)
        assert store.peer_certificate("000.30.10.H49", 0) is None
        with store.transaction():
            store.learn_certificate("000.30.10.H49", der, 4e9)
        assert store.learnt_certificate("000.30.10.H49", fingerprint)
        assert store.peer_certificate("000.30.10.H49", 0) == der
    finally:
        store.close()
