"""The node's one SQLite database: how every part of the node opens it."""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path

from exchange.errors import ConfigError, StoreBusy, StoreError
from exchange.files import PRIVATE_MODE

BUSY_TIMEOUT_MS = 10_000
"""Several processes may share a database (the node, an operator's command): wait, do not fail."""


def connect(path: Path | str, *, readonly: bool = False) -> sqlite3.Connection:
    """A connection in WAL mode with full durability; ``readonly`` for auditors' tools."""
    target = Path(path)
    if readonly and not target.is_file():
        raise ConfigError(f"{target}: no such database")
    if not readonly:
        private(target)
    uri = f"file:{target}?mode=ro" if readonly else str(target)
    conn = sqlite3.connect(uri, uri=readonly, timeout=BUSY_TIMEOUT_MS / 1000, check_same_thread=False)
    if not readonly:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
    conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    return conn


def private(path: Path) -> None:
    """The database readable by its owner only (0600), whatever the umask: created so, or made so.
    SQLite gives its -wal and -shm files the database's mode; those already there are fixed too."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, PRIVATE_MODE)
        try:
            if os.fstat(fd).st_mode & 0o077:
                os.fchmod(fd, PRIVATE_MODE)
        finally:
            os.close(fd)
        for suffix in ("-wal", "-shm"):
            companion = path.with_name(path.name + suffix)
            with contextlib.suppress(FileNotFoundError):
                if companion.stat().st_mode & 0o077:
                    companion.chmod(PRIVATE_MODE)
    except OSError as exc:
        raise StoreError(f"{path}: {exc.strerror or exc}") from None


@contextlib.contextmanager
def translated(path: Path | str) -> Iterator[None]:
    """SQLite's errors as ours, at the store's edge: a lock held too long is StoreBusy, anything
    else the database raises is StoreError; both name the file."""
    try:
        yield
    except sqlite3.OperationalError as exc:
        text = str(exc)
        if "locked" in text or "busy" in text:
            raise StoreBusy(f"{path}: the database is locked by another process (waited "
                            f"{BUSY_TIMEOUT_MS // 1000} s); try again") from exc
        raise StoreError(f"{path}: {text}") from exc
    except sqlite3.DatabaseError as exc:
        raise StoreError(f"{path}: {exc}") from exc
