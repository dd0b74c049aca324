"""The drop-folder door: an agency system writes dossiers into ``inbox/`` and takes incoming
dossiers and status updates from ``outbox/`` (written by the daemon's delivery).

The agency system writes ``name.part`` and renames it ``name.xml`` when complete. The node claims
a file by renaming it into ``processing/``, submits it, and moves it to ``accepted/``, or to
``rejected/`` with ``name.error.txt`` saying exactly what is wrong. A crash at any point leaves
the file in ``inbox/`` or ``processing/``; the next pass takes it again, and a dossier already
submitted is recognized by its code, so no file is lost or taken twice.

Whatever lies in the folder is untrusted. Only regular files are opened, never through a link
and never blocking (a FIFO would hold up the node's loop), and none is read past the size cap.
A name that is not UTF-8, a directory, a link, a file too large, one that is not a dossier, and
one whose handling failed in any way are each rejected with the reason, and the other files are
taken: no file can stop the node, or stop it again after a restart. Only the node's own
database failing (``StoreError``) leaves a file in ``processing/``, for the next pass.
"""

from __future__ import annotations

import os
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path

import structlog
from lxml import etree

from exchange.envelope.dossier import load as load_dossier
from exchange.errors import AlreadySubmitted, ExchangeError, InvalidDossier, StoreError
from exchange.files import write_atomic
from exchange.node.context import NodeContext
from exchange.node.doors import Door
from exchange.node.workflow import submit
from exchange.xml.safexml import DEFAULT_MAX_BYTES

log = structlog.get_logger(__name__)

FOLDERS = ("inbox", "processing", "accepted", "rejected")
MAX_FILE_BYTES = DEFAULT_MAX_BYTES
"""A larger file is rejected from its size, unread: the hardened parser would refuse it anyway."""
OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
"""Never through a symbolic link; never waiting for a writer (a FIFO opened without O_NONBLOCK
blocks until one comes)."""
NOT_REGULAR = {stat.S_IFDIR: "a directory", stat.S_IFLNK: "a symbolic link", stat.S_IFIFO: "a named pipe (FIFO)",
               stat.S_IFSOCK: "a socket", stat.S_IFCHR: "a character device", stat.S_IFBLK: "a block device"}


@dataclass
class DropFolder(Door):
    """The drop-folder door: the housekeeping polls it."""

    root: Path
    max_bytes: int = MAX_FILE_BYTES
    _stuck: set[Path] = field(default_factory=set, init=False, repr=False)
    """Files that could not even be moved to rejected/: left alone until the node restarts."""

    def __post_init__(self) -> None:
        for name in FOLDERS:
            (self.root / name).mkdir(parents=True, exist_ok=True)

    def poll(self, ctx: NodeContext, limit: int = 100) -> int:
        """Take in what is waiting (first what a crash left in processing/); returns how many."""
        claimed = self._listed("processing")
        for path in self._listed("inbox")[:limit]:
            target = self._claim(path)
            if target is not None:
                claimed.append(target)
        for path in claimed:
            self._take_isolated(ctx, path)
        return len(claimed)

    def _listed(self, folder: str) -> list[Path]:
        """The entries named ``*.xml`` of any kind (what is not a regular file is rejected when
        taken); undecodable names come as surrogate escapes, as ``os`` gives them."""
        with os.scandir(self.root / folder) as entries:
            names = sorted(entry.name for entry in entries if entry.name.endswith(".xml"))
        return [path for path in (self.root / folder / name for name in names) if path not in self._stuck]

    def _claim(self, path: Path) -> Path | None:
        """Rename the entry into processing/ (a rename opens nothing and follows no link)."""
        target = self.root / "processing" / path.name
        try:
            path.replace(target)
        except FileNotFoundError:
            return None  # the agency system took it back
        except OSError as exc:  # e.g. a directory where a file of that name waits in processing/
            self._reject(path, f"it could not be moved into processing/: {exc.strerror}")
            return None
        return target

    def _take_isolated(self, ctx: NodeContext, path: Path) -> None:
        """Take one file; whatever goes wrong, that file is rejected and the others are taken."""
        try:
            self._take(ctx, path)
        except StoreError:
            raise  # the node's database, not the file: it stays in processing/ for the next pass
        except ExchangeError as exc:
            self._reject(path, str(exc) or type(exc).__name__)
        except Exception as exc:  # noqa: BLE001 - one poison file must not stop the node: isolate it
            log.error("dropfolder.failed", file=_shown(path.name), exc_info=exc)
            self._reject(path, f"the node could not process it ({type(exc).__name__}: {exc})")

    def _take(self, ctx: NodeContext, path: Path) -> None:
        name = _shown(path.name)
        if name != path.name:
            raise InvalidDossier(f"the file name '{name}' is not valid UTF-8; give the file a UTF-8 name "
                                 "(it was not opened)")
        try:
            data = self._read(path)
        except FileNotFoundError:
            self._vanished(path)
            return
        try:
            code = submit(ctx, data, source=name)
        except AlreadySubmitted as exc:
            if not self._same(data, exc.code, ctx):
                raise InvalidDossier(f"{exc} with different content; a dossier code is used once") from None
            log.info("dropfolder.retaken", file=name)  # a crash after submit, before the move
            self._accept(path)
            return
        log.info("dropfolder.submitted", file=name, dossier=str(code))
        self._accept(path)

    def _read(self, path: Path) -> bytes:
        """The file's bytes if it is a regular file within the size cap; anything else is refused
        before it is opened, and checked again on the open descriptor (it may have been swapped)."""
        _regular(path.name, os.lstat(path))
        try:
            fd = os.open(path, OPEN_FLAGS)
        except FileNotFoundError:
            raise
        except OSError as exc:  # ELOOP: swapped for a link since the lstat
            raise InvalidDossier(f"{_shown(path.name)} could not be opened: {exc.strerror}") from None
        with os.fdopen(fd, "rb") as handle:
            size = _regular(path.name, os.fstat(fd)).st_size
            if size > self.max_bytes:
                raise InvalidDossier(self._too_large(path, size))
            data = handle.read(self.max_bytes + 1)
        if len(data) > self.max_bytes:
            raise InvalidDossier(self._too_large(path, len(data)))  # it grew while read
        return data

    def _too_large(self, path: Path, size: int) -> str:
        return f"{_shown(path.name)}: {size} bytes exceeds the cap of {self.max_bytes}; it was not read"

    @staticmethod
    def _same(data: bytes, code: str, ctx: NodeContext) -> bool:
        """Whether the stored dossier with this file's code is this file's dossier, byte for byte
        as submit stored it (another file reusing the code is refused, not taken as a retry)."""
        root, _ = load_dossier(data)
        return ctx.store.dossier_payload(code) == etree.tostring(root)

    # filing

    def _reject(self, path: Path, reason: str) -> None:
        """Move the entry to rejected/ beside ``name.error.txt`` giving the reason; if even that
        fails, the entry is left alone (logged once) until the node restarts."""
        name = _shown(path.name)
        try:
            target = self._free("rejected", path.name)
            write_atomic(target.with_name(f"{target.stem}.error.txt"),
                         f"{name} was not submitted:\n{reason}\n".encode("utf-8", "backslashreplace"))
            path.replace(target)
        except OSError as exc:
            self._stuck.add(path)
            log.error("dropfolder.stuck", file=name, reason=_first_line(reason), error=str(exc))
            return
        log.warning("dropfolder.rejected", file=name, error=_first_line(reason))

    def _vanished(self, path: Path) -> None:
        """A file removed between the listing and the reading: nothing to move, but a note says why."""
        name = _shown(path.name)
        target = self._free("rejected", path.name)
        try:
            write_atomic(target.with_name(f"{target.stem}.error.txt"),
                         f"{name} was not submitted:\nit disappeared before the node could read it\n".encode())
        except OSError as exc:
            log.error("dropfolder.note_failed", file=name, error=str(exc))
        log.warning("dropfolder.vanished", file=name)

    def _accept(self, path: Path) -> None:
        """File a submitted dossier in accepted/; if that fails, it stays in processing/, where
        the next start recognizes it as submitted (never rejected: it was taken)."""
        try:
            path.replace(self._free("accepted", path.name))
        except OSError as exc:
            self._stuck.add(path)
            log.error("dropfolder.stuck", file=_shown(path.name), reason="submitted, not filed", error=str(exc))

    def _free(self, folder: str, name: str) -> Path:
        """``folder/name``, or a name with the time in it if that is taken (a name used again)."""
        target = self.root / folder / name
        if os.path.lexists(target):
            stem, suffix = os.path.splitext(name)
            target = self.root / folder / f"{stem}.{time.time_ns()}{suffix}"
        return target


def _shown(name: str) -> str:
    """A file name as text a person can read: bytes that are not UTF-8 shown as ``\\xNN``."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _first_line(text: str) -> str:
    return text.partition("\n")[0]


def _regular(name: str, status: os.stat_result) -> os.stat_result:
    kind = NOT_REGULAR.get(stat.S_IFMT(status.st_mode))
    if kind is not None:
        raise InvalidDossier(f"{_shown(name)} is {kind}, not a regular file; it was not opened")
    return status
