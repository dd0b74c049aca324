"""The node's one SQLite database: how every part of the node opens it."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

from exchange.errors import ConfigError, StoreBusy, StoreError
from exchange.files import PRIVATE_MODE

BUSY_TIMEOUT_MS = 10_000
"""Several processes may share a database (the node, an operator's command): wait, do not fail."""
LOCK_POLL_MIN_S, LOCK_POLL_MAX_S = 0.0002, 0.002


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


def begin_immediate(conn: sqlite3.Connection, timeout: float | None = None) -> None:
    """Take the database's write lock, as soon as the writer holding it lets go, waiting at most
    ``timeout`` seconds (default: the node database's busy timeout), which is also the busy
    timeout the connection is set back to.

    SQLite's own busy handler sleeps 1, 2, 5, 10, 15, 20, 25... ms between tries, so a node
    waiting behind a desk's 3 ms commit lost up to 30 ms a transfer (benchmarks/e2e.py at 100/s:
    half the commune's loop was that sleep). Here the tries are 0.2 ms apart at first, 2 ms at
    most, for the same overall bound; the handler stays on for every other statement."""
    if timeout is None:
        timeout = BUSY_TIMEOUT_MS / 1000
    conn.execute("PRAGMA busy_timeout=0")
    try:
        deadline = time.monotonic() + timeout
        pause = LOCK_POLL_MIN_S
        while True:
            try:
                conn.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) and "busy" not in str(exc) or time.monotonic() >= deadline:
                    raise
            time.sleep(pause)
            pause = min(pause * 2, LOCK_POLL_MAX_S)
    finally:
        conn.execute(f"PRAGMA busy_timeout={int(timeout * 1000)}")


def private(path: Path) -> None:
    """The database readable by its owner only (0600), whatever the umask: created so, or made so.
    SQLite gives its -wal and -shm files the database's mode; those already there are fixed too."""
    try:
        # Never open (and so close) a descriptor of a database file that exists: closing any
        # descriptor of a file drops every POSIX lock this process holds on it, SQLite's included,
        # and another connection of this process may be in the middle of a transaction.
        if not path.exists():
            with contextlib.suppress(FileExistsError):  # another process made it just now
                os.close(os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, PRIVATE_MODE))
        if path.stat().st_mode & 0o077:
            path.chmod(PRIVATE_MODE)
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
