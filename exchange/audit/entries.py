"""Audit entries: what happened (``Event``), the record of it (``Entry``), and its canonical bytes.

The canonical encoding is what the tree hashes and auditors read, so it never changes shape: sorted
keys, no spaces, UTF-8, absent fields omitted, the leaf index and a format version included.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from exchange import clock
from exchange.errors import Unverifiable

ENTRY_VERSION = 1


class Event(StrEnum):
    """What happened. The values are part of the canonical encoding: never rename one."""

    SUBMITTED = "submitted"
    SEALED = "sealed"
    PUBLISHED = "published"
    RECEIVED = "received"
    REFUSED = "refused"
    DELIVERED = "delivered"
    RECEIPT_SENT = "receipt-sent"
    RECEIPT_RECEIVED = "receipt-received"
    RETRANSMITTED = "retransmitted"
    DEAD_LETTERED = "dead-lettered"
    REPLAYED = "replayed"
    STEP_DONE = "step-done"
    STATUS_SENT = "status-sent"
    STATUS_RECEIVED = "status-received"
    RULES_LOADED = "rules-loaded"
    KEY_ROTATED = "key-rotated"
    NODE_STARTED = "node-started"
    NODE_STOPPED = "node-stopped"
    FORK_DETECTED = "fork-detected"
    PAUSED = "paused"  # the dossier's clock stopped: a fee to pay, documents to supplement
    RESUMED = "resumed"  # and started again; detail says by how many working days the deadlines moved
    REROUTED = "re-routed"  # a step's agency was abolished: its successor performs the step
    ENDED = "dossier-ended"  # the dossier's final state, as this node learnt it
    CONFIG_INSTALLED = "config-installed"  # a configuration bundle verified and kept, to apply at its time
    CONFIG_APPLIED = "config-applied"  # its rules, CA and CRL in force, together


@dataclass(frozen=True, slots=True)
class Entry:
    """One audited event. ``detail`` holds event-specific strings (a rules digest, a reason code,
    the operator who replayed a message, a due date)."""

    event: Event
    node: str
    time: dt.datetime = field(default_factory=clock.now)
    dossier: str | None = None
    procedure: str | None = None
    step: str | None = None
    message_id: str | None = None
    counterpart: str | None = None
    envelope_sha256: str | None = None
    detail: Mapping[str, str] = field(default_factory=dict)

    def encode(self, index: int) -> bytes:
        """The canonical form: sorted keys, no spaces, UTF-8, absent fields omitted, the leaf
        index included so that an entry cannot be moved to another position."""
        form: dict[str, Any] = {"v": ENTRY_VERSION, "i": index, "event": self.event.value,
                                "node": self.node, "time": clock.utc(self.time)}
        optional = {"dossier": self.dossier, "procedure": self.procedure, "step": self.step,
                    "message": self.message_id, "counterpart": self.counterpart,
                    "envelope": self.envelope_sha256}
        form.update({k: v for k, v in optional.items() if v is not None})
        if self.detail:
            form["detail"] = dict(self.detail)
        return canonical(form)

    @classmethod
    def decode(cls, data: bytes) -> tuple[int, Entry]:
        """The index and entry of a canonical encoding; Unverifiable if it is not one."""
        try:
            form = json.loads(data)
            index, entry = form["i"], cls(
                event=Event(form["event"]), node=form["node"],
                time=clock.parse(form["time"]),
                dossier=form.get("dossier"), procedure=form.get("procedure"), step=form.get("step"),
                message_id=form.get("message"), counterpart=form.get("counterpart"),
                envelope_sha256=form.get("envelope"), detail=form.get("detail", {}))
        except (ValueError, KeyError, TypeError) as exc:
            raise Unverifiable(f"not an audit entry: {exc}") from None
        if form.get("v") != ENTRY_VERSION:
            raise Unverifiable(f"unknown entry version {form.get('v')!r}")
        if canonical(form) != data:
            raise Unverifiable("not in canonical form")
        return index, entry


def canonical(form: Mapping[str, Any]) -> bytes:
    return json.dumps(form, ensure_ascii=False, sort_keys=True, separators=(",", ":")).encode("utf-8")
