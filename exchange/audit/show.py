"""The processing-control view (*phiếu kiểm soát quá trình giải quyết hồ sơ*): each hand-off of a
dossier with its time, from, to, result and whether it was on time; or the list of dossiers."""

from __future__ import annotations

import datetime as dt

from exchange.audit.entries import Entry, Event
from exchange.audit.sources import LogSource, decoded


def show(source: LogSource, dossier: str | None, tz: dt.tzinfo) -> list[str]:
    """The processing-control view: each hand-off with its time, from, to, result and timeliness."""
    entries = [e for e in decoded(source) if dossier is None or e.dossier == dossier]
    if dossier is None:
        return _dossier_list(entries)
    rows = [("time", "event", "from", "to", "step", "result", "due", "")]
    for entry in entries:
        if entry.event not in _HANDOFF:
            continue
        local = entry.time.astimezone(tz)
        sender, receiver = _parties(entry)
        due = entry.detail.get("due", "")
        timely = ""
        if due:
            timely = "on time" if local.date().isoformat() <= due else "LATE"
        rows.append((f"{local:%Y-%m-%d %H:%M}", entry.event.value, sender, receiver, entry.step or "",
                     entry.detail.get("result", entry.detail.get("reason", "")), due, timely))
    if len(rows) == 1:
        return [f"no hand-off of dossier {dossier} in this log"]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return [f"dossier {dossier}", *("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
                                    for r in rows)]


_HANDOFF = {Event.SUBMITTED, Event.PUBLISHED, Event.RECEIVED, Event.REFUSED, Event.DELIVERED,
            Event.STEP_DONE, Event.RECEIPT_RECEIVED, Event.STATUS_SENT, Event.STATUS_RECEIVED,
            Event.DEAD_LETTERED}


def _parties(entry: Entry) -> tuple[str, str]:
    other = entry.counterpart or ""
    if entry.event in (Event.RECEIVED, Event.REFUSED, Event.STATUS_RECEIVED, Event.RECEIPT_RECEIVED):
        return other, entry.node
    if entry.event is Event.DELIVERED:
        return entry.node, "agency system"
    if entry.event in (Event.SUBMITTED, Event.STEP_DONE):
        return entry.node, other or entry.node
    return entry.node, other


def _dossier_list(entries: list[Entry]) -> list[str]:
    seen: dict[str, list[Entry]] = {}
    for entry in entries:
        if entry.dossier:
            seen.setdefault(entry.dossier, []).append(entry)
    if not seen:
        return ["no dossier in this log"]
    return [f"{code}  {len(items)} entries, last: {items[-1].event.value} at "
            f"{items[-1].time:%Y-%m-%d %H:%M}Z" for code, items in sorted(seen.items())]
