"""The drop-folder door: an agency system writes dossiers into ``inbox/`` and takes incoming
dossiers and status updates from ``outbox/`` (written by the daemon's delivery).

The agency system writes ``name.part`` and renames it ``name.xml`` when complete. The node claims
a file by renaming it into ``processing/``, submits it, and moves it to ``accepted/``, or to
``rejected/`` with ``name.error.txt`` saying exactly what is wrong. A crash at any point leaves
the file in ``inbox/`` or ``processing/``; the next pass takes it again, and a dossier already
submitted is recognized by its code, so no file is lost or taken twice.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import structlog
from lxml import etree

from exchange.envelope.dossier import load as load_dossier
from exchange.errors import AlreadySubmitted, ExchangeError
from exchange.files import write_atomic
from exchange.node.context import NodeContext
from exchange.node.doors import Door
from exchange.node.workflow import submit

log = structlog.get_logger(__name__)

FOLDERS = ("inbox", "processing", "accepted", "rejected")


@dataclass
class DropFolder(Door):
    """The drop-folder door: the housekeeping polls it."""

    root: Path

    def __post_init__(self) -> None:
        for name in FOLDERS:
            (self.root / name).mkdir(parents=True, exist_ok=True)

    def poll(self, ctx: NodeContext, limit: int = 100) -> int:
        """Take in what is waiting (first what a crash left in processing/); returns how many."""
        claimed = sorted((self.root / "processing").glob("*.xml"))
        for path in sorted((self.root / "inbox").glob("*.xml"))[:limit]:
            target = self.root / "processing" / path.name
            path.replace(target)
            claimed.append(target)
        for path in claimed:
            self._take(ctx, path)
        return len(claimed)

    def _take(self, ctx: NodeContext, path: Path) -> None:
        data = path.read_bytes()
        try:
            code = submit(ctx, data, source=path.name)
        except ExchangeError as exc:
            if isinstance(exc, AlreadySubmitted) and self._same(data, exc.code, ctx):
                log.info("dropfolder.retaken", file=path.name)  # a crash after submit, before the move
                path.replace(self.root / "accepted" / path.name)
                return
            write_atomic(self.root / "rejected" / f"{path.stem}.error.txt",
                         f"{path.name} was not submitted:\n{exc}\n".encode())
            path.replace(self.root / "rejected" / path.name)
            log.warning("dropfolder.rejected", file=path.name, error=str(exc).splitlines()[0])
            return
        path.replace(self.root / "accepted" / path.name)
        log.info("dropfolder.submitted", file=path.name, dossier=str(code))

    @staticmethod
    def _same(data: bytes, code: str, ctx: NodeContext) -> bool:
        """Whether the stored dossier with this file's code is this file's dossier, byte for byte
        as submit stored it (another file reusing the code is refused, not taken as a retry)."""
        root, _ = load_dossier(data)
        return ctx.store.dossier_payload(code) == etree.tostring(root)
