"""Delivery: hand each recorded dossier and status update to the agency system's folder, once.

A file is written aside (``.pending/``) and made durable (each file and the folder fsynced, never
the whole host's page cache), its delivery committed with its audit entry, and only then renamed
into the folder: the agency system never sees a half-written file, and a crash
between the commit and the rename is repaired at the next start (``recover``). Doors that
follow a delivery (webhooks) queue their work in the same transaction.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from exchange.audit.entries import Event
from exchange.errors import StoreError
from exchange.files import PRIVATE_MODE, sync_dir
from exchange.node.context import NodeContext
from exchange.node.doors import Door
from exchange.node.faults import fault
from exchange.node.metrics import Metrics
from exchange.store.node import InboxRecord

log = structlog.get_logger("exchange.delivery")

PRIVATE_DIR_MODE = 0o700
"""Delivered dossiers are personal data: files 0600, in folders the node makes 0700."""
WRITERS = 8
"""Files written and fsynced at once by a delivery."""
PENDING = ".pending"
"""Beside the delivered files, on the same file system: written here, renamed into place."""


@dataclass
class Deliverer:
    ctx: NodeContext
    metrics: Metrics
    doors: Sequence[Door] = ()
    _pool: ThreadPoolExecutor | None = field(default=None, repr=False)

    @property
    def folder(self) -> Path:
        return self.ctx.config.delivery_dir

    def deliver(self, limit: int = 256) -> int:
        """Hand over up to ``limit`` accepted envelopes not yet delivered; returns how many."""
        records = self.ctx.store.undelivered(limit)
        if not records:
            return 0
        pending = self.folder / PENDING
        _private_dir(self.folder)
        _private_dir(pending)
        names = [file_name(record) for record in records]
        self._write(pending, names, records)
        sync_dir(pending)  # and their names, before their delivery is recorded
        with self.ctx.store.transaction():
            for name, record in zip(names, records, strict=True):
                self._record(record, name)
            for door in self.doors:
                door.delivered(self.ctx, [record.message_id for record in records])
        fault("after-deliver-commit")
        for name in names:
            (pending / name).replace(self.folder / name)
        sync_dir(self.folder)
        self.metrics.delivered.inc(len(names))
        return len(names)

    def _write(self, pending: Path, names: list[str], records: Sequence[InboxRecord]) -> None:
        """Each file written and fsynced, several at once: the file system commits concurrent
        fsyncs together (on ext4 here, 290 us a file one by one, 150 us eight at a time)."""
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=WRITERS, thread_name_prefix="deliver")
        payloads = [record.payload or b"" for record in records]
        list(self._pool.map(_write_durable, [pending / name for name in names], payloads))

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None

    def _record(self, record: InboxRecord, name: str) -> None:
        self.ctx.store.mark_delivered(record.message_id)
        self.ctx.record(self.ctx.entry(Event.DELIVERED, dossier=record.dossier, step=record.step,
                                       message_id=record.message_id, counterpart=record.sender,
                                       envelope_sha256=record.envelope_sha256, detail={"file": name}))

    def recover(self) -> int:
        """After a crash: files whose delivery was committed but not yet renamed are renamed now
        (the others are written again by the next ``deliver``); returns how many."""
        pending = self.folder / PENDING
        if not pending.is_dir():
            return 0
        renamed = 0
        for path in pending.glob("*.xml"):
            if self.ctx.store.delivered(message_id_of(path.name)):
                path.replace(self.folder / path.name)
                renamed += 1
        if renamed:
            sync_dir(self.folder)
        return renamed


class DeliveryWorker:
    """Deliveries on a thread of their own, over a database connection of their own: the loop
    that takes envelopes in only says there is something to deliver, and goes on verifying and
    receipting while the files are written and fsynced (a quarter of a receiving node's time when
    it was done in the loop). Every ``poll_s`` it looks anyway, as the housekeeping did."""

    def __init__(self, deliverer: Deliverer, poll_s: float) -> None:
        self.deliverer = deliverer
        self.poll_s = poll_s
        self._due = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="delivery", daemon=True)
        self._thread.start()

    def poke(self) -> None:
        self._due.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._due.wait(self.poll_s)
            self._due.clear()
            try:
                while self.deliverer.deliver() and not self._stop.is_set():
                    pass
            except (StoreError, OSError) as exc:  # the database or the folder failed: tried again
                log.error("delivery.failed", error=str(exc))
                self._stop.wait(self.poll_s)
            except Exception as exc:  # noqa: BLE001 - a fault here must not end deliveries for good
                log.error("delivery.failed", error=repr(exc), exc_info=exc)
                self._stop.wait(self.poll_s)

    def close(self) -> None:
        """Finish the delivery in hand (its files, its commit, its renames), then stop."""
        self._stop.set()
        self._due.set()
        self._thread.join()
        self.deliverer.close()
        self.deliverer.ctx.store.close()


def file_name(record: InboxRecord) -> str:
    """``kind-dossier-step-messageid.xml``: what the agency system sees, and the key back to the row."""
    return f"{record.kind}-{record.dossier}-{record.step}-{record.message_id}.xml"


def message_id_of(name: str) -> str:
    """The message id (a UUID: five hyphenated groups) at the end of a delivered file's name."""
    return "-".join(Path(name).stem.rsplit("-", 5)[-5:])


def _private_dir(path: Path) -> None:
    """A folder of delivered dossiers that the node makes is for its user only (0700), whatever the
    umask; one the operator made is left as they chose."""
    if not path.is_dir():
        path.mkdir(mode=PRIVATE_DIR_MODE, parents=True, exist_ok=True)
        path.chmod(PRIVATE_DIR_MODE)


def _write_durable(path: Path, data: bytes) -> None:
    """A new file in ``.pending`` (ours alone: no temporary name needed), 0600, on disk."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, PRIVATE_MODE)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)
