"""Every table of a node's database, and the migrations between versions.

The database's ``PRAGMA user_version`` says which migrations it has had; ``migrate`` applies the
missing ones in order, each in its own transaction, so a node and an operator's command opening
the same database at once see either the old shape or the new one. A migration is never edited
after it ships: a change of shape is a new migration at the end of ``MIGRATIONS``.
"""

from __future__ import annotations

import sqlite3

NODE_STATE = """
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY,
    message_id TEXT NOT NULL UNIQUE,
    recipient TEXT NOT NULL,
    kind TEXT NOT NULL,
    dossier TEXT,
    step TEXT,
    body BLOB NOT NULL,
    envelope_sha256 TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending',
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt REAL NOT NULL,
    created REAL NOT NULL,
    last_error TEXT
);
CREATE INDEX IF NOT EXISTS outbox_due ON outbox (state, next_attempt);
CREATE TABLE IF NOT EXISTS inbox (
    message_id TEXT PRIMARY KEY,
    sender TEXT NOT NULL,
    kind TEXT NOT NULL,
    dossier TEXT,
    step TEXT,
    envelope_sha256 TEXT NOT NULL,
    received_at REAL NOT NULL,
    outcome TEXT NOT NULL,
    reason TEXT,
    receipt_id TEXT,
    payload BLOB,
    delivered INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS inbox_undelivered ON inbox (delivered) WHERE delivered = 0;
CREATE TABLE IF NOT EXISTS dossiers (
    code TEXT PRIMARY KEY,
    procedure TEXT NOT NULL,
    origin TEXT NOT NULL,
    received_at TEXT NOT NULL,
    state TEXT NOT NULL,
    payload BLOB NOT NULL,
    updated REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS steps (
    dossier TEXT NOT NULL,
    step TEXT NOT NULL,
    agency TEXT NOT NULL,
    state TEXT NOT NULL,
    due TEXT,
    done_at TEXT,
    result TEXT,
    PRIMARY KEY (dossier, step)
);
CREATE TABLE IF NOT EXISTS statuses (
    dossier TEXT NOT NULL,
    sender TEXT NOT NULL,
    step TEXT,
    exchange_status TEXT NOT NULL,
    dossier_status INTEGER NOT NULL,
    at TEXT NOT NULL,
    note TEXT
);
CREATE TABLE IF NOT EXISTS webhooks (
    message_id TEXT PRIMARY KEY,
    state TEXT NOT NULL DEFAULT 'pending',
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt REAL NOT NULL,
    last_error TEXT
);
"""

AUDIT = """
CREATE TABLE IF NOT EXISTS audit_entries (
    idx INTEGER PRIMARY KEY,
    data BLOB NOT NULL,
    event TEXT NOT NULL,
    time TEXT NOT NULL,
    dossier TEXT,
    message_id TEXT
);
CREATE INDEX IF NOT EXISTS audit_entries_dossier ON audit_entries (dossier) WHERE dossier IS NOT NULL;
CREATE INDEX IF NOT EXISTS audit_entries_message ON audit_entries (message_id) WHERE message_id IS NOT NULL;
CREATE TABLE IF NOT EXISTS audit_nodes (
    level INTEGER NOT NULL,
    idx INTEGER NOT NULL,
    hash BLOB NOT NULL,
    PRIMARY KEY (level, idx)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS audit_checkpoints (
    size INTEGER PRIMARY KEY,
    root BLOB NOT NULL,
    note TEXT NOT NULL,
    made_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS audit_keys (
    verifier TEXT PRIMARY KEY,
    attestation TEXT NOT NULL,
    certificate TEXT NOT NULL,
    from_size INTEGER NOT NULL,
    added_at TEXT NOT NULL
);
CREATE TRIGGER IF NOT EXISTS audit_entries_append_only BEFORE INSERT ON audit_entries
WHEN NEW.idx != (SELECT COALESCE(MAX(idx) + 1, 0) FROM audit_entries)
BEGIN SELECT RAISE(ABORT, 'audit entries are appended at the end only'); END;
CREATE TRIGGER IF NOT EXISTS audit_checkpoints_grow BEFORE INSERT ON audit_checkpoints
WHEN NEW.size <= (SELECT COALESCE(MAX(size), 0) FROM audit_checkpoints)
BEGIN SELECT RAISE(ABORT, 'a checkpoint must cover more entries than the last'); END;
"""

APPEND_ONLY = ("audit_entries", "audit_nodes", "audit_checkpoints", "audit_keys")
"""Tables whose rows, once written, no statement may change or remove."""

WITNESS = """
CREATE TABLE IF NOT EXISTS peer_checkpoints (
    origin TEXT NOT NULL,
    size INTEGER NOT NULL,
    root BLOB NOT NULL,
    note TEXT NOT NULL,
    received_at TEXT NOT NULL,
    proven INTEGER NOT NULL,
    PRIMARY KEY (origin, size)
);
CREATE TABLE IF NOT EXISTS sent_checkpoints (
    peer TEXT PRIMARY KEY,
    size INTEGER NOT NULL
);
"""


def _append_only_triggers() -> str:
    return "\n".join(
        f"CREATE TRIGGER IF NOT EXISTS {table}_no_{op.lower()} BEFORE {op} ON {table} "
        f"BEGIN SELECT RAISE(ABORT, '{table} is append-only: {op} refused'); END;"
        for table in APPEND_ONLY for op in ("UPDATE", "DELETE"))


# Version 1 is the shape every database had before versions were counted: its statements all say
# IF NOT EXISTS, so a database from then (user_version 0, tables present) takes it unchanged.
MIGRATIONS: tuple[str, ...] = (
    NODE_STATE + AUDIT + _append_only_triggers() + WITNESS,
    # 2: publications that failed are counted apart from those the broker confirmed, so that an
    # outage neither makes the first confirmed publication look like a retransmission nor spends
    # the retransmission bound.
    "ALTER TABLE outbox ADD COLUMN failures INTEGER NOT NULL DEFAULT 0;",
    # 3: a dossier's clock stops while the applicant pays or supplements: the working days it stood
    # still move its deadlines, and while it stands still it is known since when.
    "ALTER TABLE dossiers ADD COLUMN paused_days INTEGER NOT NULL DEFAULT 0;\n"
    "ALTER TABLE dossiers ADD COLUMN paused_since TEXT;",
    # 4: the certificates of the agencies this node sends to, so that it can encrypt their payloads:
    # from the configuration bundle's directory, and learnt from their verified envelopes.
    "CREATE TABLE IF NOT EXISTS peer_certificates (agency TEXT PRIMARY KEY, certificate BLOB NOT NULL, "
    "not_after REAL NOT NULL, learnt_at REAL NOT NULL);",
    # 5: the questions the housekeeping and the heartbeat ask every few seconds (overdue steps, the
    # webhook backlog) answered from an index, not a scan of every step and webhook ever recorded.
    "CREATE INDEX IF NOT EXISTS steps_by_state_due ON steps (state, due);\n"
    "CREATE INDEX IF NOT EXISTS webhooks_by_state ON webhooks (state);",
    # 6: a dossier's statuses found by its code (a status is read on every transfer's end and
    # status page), not by scanning every status the node ever received.
    "CREATE INDEX IF NOT EXISTS statuses_by_dossier ON statuses (dossier);",
)
VERSION = len(MIGRATIONS)


def version(conn: sqlite3.Connection) -> int:
    return int(conn.execute("PRAGMA user_version").fetchone()[0])


def migrate(conn: sqlite3.Connection) -> int:
    """Bring the database to ``VERSION``; returns the version it had. Never inside a transaction:
    each migration is its own."""
    found = version(conn)
    if found >= VERSION:
        return found
    conn.execute("BEGIN IMMEDIATE")
    try:
        current = version(conn)  # another process may have migrated while this one waited
        for number in range(current, VERSION):
            for statement in _statements(MIGRATIONS[number]):
                conn.execute(statement)
        conn.execute(f"PRAGMA user_version = {VERSION}")
    except BaseException:
        conn.rollback()
        raise
    conn.commit()
    return found


def _statements(script: str) -> list[str]:
    """A script split into statements (``executescript`` would commit the caller's transaction)."""
    statements, pending = [], ""
    for line in script.splitlines(keepends=True):
        pending += line
        if sqlite3.complete_statement(pending):
            statements.append(pending.strip())
            pending = ""
    return [s for s in statements if s]
