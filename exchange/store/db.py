"""The node's one SQLite database: how every part of the node opens it."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from exchange.errors import ConfigError

BUSY_TIMEOUT_MS = 10_000
"""Several processes may share a database (the node, an operator's command): wait, do not fail."""


def connect(path: Path | str, *, readonly: bool = False) -> sqlite3.Connection:
    """A connection in WAL mode with full durability; ``readonly`` for auditors' tools."""
    target = Path(path)
    if readonly and not target.is_file():
        raise ConfigError(f"{target}: no such database")
    uri = f"file:{target}?mode=ro" if readonly else str(target)
    conn = sqlite3.connect(uri, uri=readonly, timeout=BUSY_TIMEOUT_MS / 1000, check_same_thread=False)
    if not readonly:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
    conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    return conn
