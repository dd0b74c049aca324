"""Dead letters, both ways: transfers this node gave up sending (its outbox) and envelopes the
transport refused to this node (the transport's dead-letter store). An operator lists, shows and
replays them; every replay is audited with the operator's name.
"""

from __future__ import annotations

from dataclasses import dataclass

from exchange.audit.entries import Entry, Event
from exchange.envelope.encryption import ENCRYPTED
from exchange.errors import ConfigError, ExchangeError
from exchange.node.context import NodeContext
from exchange.node.transport import DeadLetter, Transport
from exchange.store.node import OutboxRow
from exchange.xml import safexml
from exchange.xml.names import q

_HEADER_FIELDS = ("MessageId", "Kind", "From", "To", "DossierCode", "Procedure", "Step", "Created", "Expires",
                  "InReplyTo", "ConfigVersion")


@dataclass(frozen=True)
class DeadLetters:
    outgoing: tuple[OutboxRow, ...]
    incoming: tuple[DeadLetter, ...]

    @classmethod
    def of(cls, ctx: NodeContext, transport: Transport) -> DeadLetters:
        return cls(tuple(ctx.store.dead_outbox()), tuple(transport.dead_letters(ctx.agency)))

    def find(self, key: str) -> OutboxRow | DeadLetter:
        """The dead letter with this id (an outgoing message id or an incoming key)."""
        for row in self.outgoing:
            if row.message_id == key:
                return row
        for letter in self.incoming:
            if letter.key == key:
                return letter
        raise ConfigError(f"no dead letter {key} (see `exchange dead list`)")


def replay(ctx: NodeContext, transport: Transport, letter: OutboxRow | DeadLetter, operator: str) -> None:
    """Send an outgoing dead letter again with a fresh retry budget, or put an incoming one back on
    this node's queue; audited first, so that a replay never happens unrecorded."""
    if isinstance(letter, OutboxRow):
        with ctx.store.transaction():
            ctx.store.republish(letter.message_id)
            ctx.record(_replayed(ctx, letter.message_id, letter.dossier, operator, "out"))
        return
    with ctx.store.transaction():
        ctx.record(_replayed(ctx, letter.message.message_id, None, operator, "in"))
    transport.replay(ctx.agency, letter.key)


def _replayed(ctx: NodeContext, message_id: str, dossier: str | None, operator: str, direction: str) -> Entry:
    return ctx.entry(Event.REPLAYED, message_id=message_id, dossier=dossier,
                     detail={"operator": operator, "direction": direction})


def describe(letter: OutboxRow | DeadLetter) -> dict[str, object]:
    """What an operator needs to decide on a dead letter, read from its envelope's header, and
    whether its payload is encrypted; never the payload itself (a dossier's personal data stays
    off the terminal unless ``dead show --decrypt`` is asked for). A dead letter may be any bytes
    a peer sent: what does not parse is described as such."""
    if isinstance(letter, OutboxRow):
        found: dict[str, object] = {"direction": "out", "key": letter.message_id, "error": letter.last_error}
        body = letter.body
    else:
        found = {"direction": "in", "key": letter.key, "error": letter.reason}
        body = letter.message.body
    found["envelope_bytes"] = len(body)
    try:
        root = safexml.parse(body, source="dead letter")
    except ExchangeError as exc:
        return {**found, "unreadable": str(exc)}
    header = root.find(q("Header"))
    if header is not None:
        found.update({name: text for name in _HEADER_FIELDS if (text := header.findtext(q(name)))})
    sealed = root.find(f"{q('Body')}/{ENCRYPTED}")
    if sealed is not None:
        found["payload"] = f"encrypted to certificate {sealed.findtext(q('RecipientCertificate'))}"
    else:
        body_el = root.find(q("Body"))
        found["payload"] = "in clear" if body_el is not None and len(body_el) else "none"
    return found
