"""Reconcile two nodes: match every transfer one published to the other with the other's record
of receiving (or refusing) it and of the receipt, in both directions, and list what lacks its
other half."""

from __future__ import annotations

from exchange.audit.entries import Entry, Event
from exchange.audit.sources import LogSource, decoded


def reconcile(a: LogSource, b: LogSource) -> tuple[int, list[str]]:
    """Match every transfer between two nodes with its other half; (matched, gaps in words)."""
    entries_a, entries_b = decoded(a), decoded(b)
    if not entries_a or not entries_b:
        return 0, ["one of the logs has no entries"]
    node_a, node_b = entries_a[0].node, entries_b[0].node
    matched, gaps = 0, []
    for sender, receiver, sent, got in ((node_a, node_b, entries_a, entries_b),
                                        (node_b, node_a, entries_b, entries_a)):
        count, found = _match_direction(sender, receiver, sent, got)
        matched += count
        gaps += found
    return matched, gaps


def _by(entries: list[Entry], events: set[Event], counterpart: str) -> dict[str, Entry]:
    return {e.message_id: e for e in entries
            if e.event in events and e.counterpart == counterpart and e.message_id}


def _match_direction(sender: str, receiver: str, sent: list[Entry],
                     got: list[Entry]) -> tuple[int, list[str]]:
    published = _by(sent, {Event.PUBLISHED}, receiver)
    received = _by(got, {Event.RECEIVED, Event.STATUS_RECEIVED, Event.REFUSED}, sender)
    receipts_sent = _by(got, {Event.RECEIPT_SENT}, sender)
    receipts_got = _by(sent, {Event.RECEIPT_RECEIVED}, receiver)
    gaps, matched = [], 0
    for message, entry in sorted(published.items()):
        other = received.get(message)
        where = f"{sender} → {receiver} message {message} (dossier {entry.dossier}, step {entry.step})"
        if other is None:
            gaps.append(f"{where}: published by {sender}, never recorded by {receiver}")
            continue
        if other.envelope_sha256 != entry.envelope_sha256:
            gaps.append(f"{where}: {sender} published envelope {entry.envelope_sha256}, "
                        f"{receiver} recorded {other.envelope_sha256}")
        if message not in receipts_sent:
            gaps.append(f"{where}: {receiver} recorded no receipt sent")
        elif message not in receipts_got:
            gaps.append(f"{where}: {receiver} sent a receipt, {sender} recorded none received")
        else:
            matched += 1
    for message in sorted(set(received) - set(published)):
        gaps.append(f"{sender} → {receiver} message {message}: recorded by {receiver}, "
                    f"never published by {sender}")
    return matched, gaps
