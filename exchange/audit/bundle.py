"""Export a log as a bundle: one self-contained file of JSON lines that auditors verify, prove from
and reconcile without the node's database (``sources.BundleSource`` reads it back). It also
carries the checkpoints of other nodes that this node witnessed, so that the bundle serves as
``--peer`` when those nodes are audited."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from exchange import clock
from exchange.audit.sources import BUNDLE_FORMAT, BUNDLE_VERSION, LogSource


def export(source: LogSource, out: Path) -> int:
    """Write a bundle (atomically: a partial file never takes the name); returns the entry count."""
    notes = source.checkpoint_notes()
    header = {"format": BUNDLE_FORMAT, "version": BUNDLE_VERSION, "origin": source.origin,
              "entries": source.count(), "checkpoints": len(notes),
              "exported_at": clock.now().isoformat()}
    count = 0
    tmp = out.with_name(out.name + ".part")
    with tmp.open("w", encoding="utf-8") as handle:
        handle.write(_line(header))
        for key in source.key_records():
            handle.write(_line({"key": dataclasses.asdict(key)}))
        for _, data in source.entries():
            handle.write(_line({"entry": data.decode("utf-8")}))
            count += 1
        for note in notes:
            handle.write(_line({"checkpoint": note}))
        for note in source.peer_checkpoint_notes():
            handle.write(_line({"peer_checkpoint": note}))
    tmp.replace(out)
    return count


def _line(record: object) -> str:
    return json.dumps(record, ensure_ascii=False) + "\n"
