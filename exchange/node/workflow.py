"""What a node does with dossiers: submit, complete a step, hand off to the next steps, and take
in what peers send. Each function changes the node's state in one transaction, with the audit
entries that record it and the envelopes it must send (into the outbox, which the daemon's
dispatcher publishes). Nothing here touches the transport.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import structlog
from lxml import etree

from exchange.audit.checkpoints import Verifier, check_attestation, origin_for
from exchange.audit.entries import Event
from exchange.audit.witness import Witness
from exchange.codes import AgencyCode, DossierCode, ProcedureCode
from exchange.envelope import dossier as dossiers
from exchange.envelope.messages import (
    Ack,
    DossierStatus,
    ExchangeStatus,
    Outcome,
    StatusUpdate,
    Witnessed,
    read_acks,
    read_witnessed,
    receipt_element,
    status_element,
)
from exchange.envelope.model import DOSSIER_NS, Header, Hop, Kind, VerifiedEnvelope, q, utc
from exchange.errors import AuditError, InvalidDossier, InvalidEnvelope, InvalidInput, NotAuthorized, RoutingError
from exchange.node.config import NodeConfig
from exchange.node.context import NodeContext
from exchange.xml import safexml

log = structlog.get_logger(__name__)

MAX_CONTROL_ROWS = 200


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


# Submitting and completing steps --------------------------------------------------------

def submit(ctx: NodeContext, data: bytes, source: str = "dossier") -> DossierCode:
    """Take in a dossier the local desk received: the first step is done, hand off the next ones."""
    root, info = dossiers.load(data, source)
    if info.receiving_agency != ctx.agency or info.code.agency != ctx.agency:
        raise InvalidDossier(f"{source}: this node is {ctx.agency}; the dossier {info.code} was received "
                             f"by {info.receiving_agency}")
    rules = ctx.rules
    procedure = rules.procedure(info.procedure)
    route = rules.route(info.procedure, ctx.agency)
    first = procedure.steps[0]
    at = now()
    with ctx.store.transaction() as conn:
        if conn.execute("SELECT 1 FROM dossiers WHERE code = ?", (str(info.code),)).fetchone():
            raise InvalidInput(f"dossier {info.code} was already submitted")
        conn.execute("INSERT INTO dossiers (code, procedure, origin, received_at, state, payload, updated) "
                     "VALUES (?, ?, ?, ?, 'processing', ?, ?)",
                     (str(info.code), str(info.procedure), str(ctx.agency), utc(info.received_at),
                      etree.tostring(root), at.timestamp()))
        for step in procedure.steps:
            conn.execute("INSERT INTO steps (dossier, step, agency, state) VALUES (?, ?, ?, 'pending')",
                         (str(info.code), step.id, str(route[step.id])))
        ctx.record(ctx.entry(Event.SUBMITTED, dossier=str(info.code), procedure=str(info.procedure),
                                   step=first.id, time=at,
                                   detail={"due": rules.due_date(info.procedure, info.received_at).isoformat()}))
        # The first step (the desk receiving the dossier) was done when the desk received it: the
        # deadlines of the steps after it count from then, however late it is entered here.
        _finish_step(ctx, info.code, first.id, min(at, info.received_at), "accepted", root)
    return info.code


def complete(ctx: NodeContext, code: DossierCode, step_id: str, result: str = "accepted") -> list[str]:
    """The local agency finished ``step_id``; returns what the node sent or made ready."""
    with ctx.store.transaction() as conn:
        row = conn.execute("SELECT state, agency FROM steps WHERE dossier = ? AND step = ?",
                           (str(code), step_id)).fetchone()
        if row is None:
            raise InvalidInput(f"this node knows no step {step_id!r} of dossier {code}")
        state, agency = row
        if agency != str(ctx.agency):
            raise InvalidInput(f"step {step_id!r} of {code} is performed by {agency}, not by this node")
        if state != "ready":
            raise InvalidInput(f"step {step_id!r} of {code} is {state}, not ready: "
                               + _waiting_for(ctx, code, step_id))
        payload = _payload(ctx, code)
        return _finish_step(ctx, code, step_id, now(), result, payload)


def _waiting_for(ctx: NodeContext, code: DossierCode, step_id: str) -> str:
    procedure = ctx.rules.procedure(ProcedureCode(_procedure_of(ctx, code)))
    done = _done(ctx, code)
    missing = [p for p in procedure.step(step_id).after if p not in done]
    return f"waiting for {', '.join(missing)}" if missing else "already done"


def _finish_step(ctx: NodeContext, code: DossierCode, step_id: str, at: dt.datetime, result: str,
                 payload: etree._Element) -> list[str]:
    conn = ctx.store.conn
    due = conn.execute("SELECT due FROM steps WHERE dossier = ? AND step = ?", (str(code), step_id)).fetchone()
    late = bool(due and due[0] and at.astimezone(ctx.rules.calendar.timezone).date().isoformat() > due[0])
    conn.execute("UPDATE steps SET state = 'done', done_at = ?, result = ? WHERE dossier = ? AND step = ?",
                 (utc(at), result, str(code), step_id))
    procedure_code = _procedure_of(ctx, code)
    ctx.record(ctx.entry(Event.STEP_DONE, dossier=str(code), procedure=procedure_code, step=step_id,
                               time=at, detail={"result": result, **({"due": due[0]} if due and due[0] else {}),
                                                **({"late": "yes"} if late else {})}))
    origin = code.agency
    if result != "accepted":
        _set_state(ctx, code, "refused")
        if origin != ctx.agency:
            _send_status(ctx, code, step_id, ExchangeStatus.REFUSED, DossierStatus.NOT_ACCEPTED, at,
                         f"step {step_id} refused: {result}")
        return ["refused"]
    sent = _hand_off(ctx, code, step_id, at, payload)
    if not sent and not _dependents(ctx, code, step_id):
        _set_state(ctx, code, "completed")
    if origin != ctx.agency:
        _send_status(ctx, code, step_id, ExchangeStatus.DONE, DossierStatus.PROCESSING, at,
                     f"step {step_id} done", late_due=due[0] if late and due else None)
    return sent


def _dependents(ctx: NodeContext, code: DossierCode, step_id: str) -> list[str]:
    procedure = ctx.rules.procedure(ProcedureCode(_procedure_of(ctx, code)))
    return [s.id for s in procedure.steps if step_id in s.after]


def _hand_off(ctx: NodeContext, code: DossierCode, done_step: str, at: dt.datetime,
              payload: etree._Element) -> list[str]:
    """Send the dossier to the performer of every step that waits on ``done_step``; a step this
    node performs itself becomes ready here once all its prerequisites are done."""
    procedure_code = ProcedureCode(_procedure_of(ctx, code))
    route = ctx.rules.route(procedure_code, code.agency)
    sent = []
    for step_id in _dependents(ctx, code, done_step):
        agency = route[step_id]
        if agency == ctx.agency:
            _refresh_ready(ctx, code)
            sent.append(f"{step_id} (here)")
            continue
        sealed = now()  # the signature's time, which certificates are checked at; ``at`` may be long past
        body = _with_control_row(payload, at, ctx.agency, agency, f"{done_step} done; hand-off for {step_id}")
        header = Header(kind=Kind.TRANSFER, sender=ctx.agency, recipient=agency, dossier=code,
                        procedure=procedure_code, step=step_id, created=sealed,
                        trace=(Hop(ctx.agency, at),))  # when this agency finished: the next deadline counts from it
        _enqueue(ctx, header, body, Event.SEALED)
        sent.append(f"{step_id} → {agency}")
    return sent


def _with_control_row(payload: etree._Element, at: dt.datetime, sender: AgencyCode, receiver: AgencyCode,
                      result: str) -> etree._Element:
    """A copy of the dossier with one more row on its processing-control slip."""
    copy = safexml.parse(etree.tostring(payload))
    control = copy.find(q("ProcessingControl", DOSSIER_NS))
    if control is not None and len(control) < MAX_CONTROL_ROWS:
        row = etree.SubElement(control, q("Row", DOSSIER_NS))
        for name, text in (("Time", utc(at)), ("FromUnit", str(sender)), ("ToUnit", str(receiver)),
                           ("HandedOverBy", f"exchange node {sender}"), ("Result", result)):
            etree.SubElement(row, q(name, DOSSIER_NS)).text = text
    return copy


def _enqueue(ctx: NodeContext, header: Header, payload: etree._Element, event: Event | None) -> str:
    data = ctx.signer.seal(header, payload)
    digest = hashlib.sha256(data).hexdigest()
    ctx.store.enqueue(header.message_id, str(header.recipient), header.kind.value,
                      str(header.dossier) if header.dossier else None, header.step, data, digest)
    if event is None:
        return header.message_id
    ctx.record(ctx.entry(event, dossier=str(header.dossier) if header.dossier else None,
                               procedure=str(header.procedure) if header.procedure else None, step=header.step,
                               message_id=header.message_id, counterpart=str(header.recipient),
                               envelope_sha256=digest, time=header.created))
    return header.message_id


def _send_status(ctx: NodeContext, code: DossierCode, step_id: str, exchange_status: ExchangeStatus,
                 dossier_status: DossierStatus, at: dt.datetime, note: str, late_due: str | None = None) -> None:
    apology, new_date = None, None
    if late_due:
        apology = (f"Xin lỗi: bước {step_id} quá hạn {late_due}; hồ sơ đã được xử lý ngày "
                   f"{at.astimezone(ctx.rules.calendar.timezone):%d/%m/%Y}.")
        new_date = ctx.rules.calendar.add(at.astimezone(ctx.rules.calendar.timezone).date(), 1)
    update = StatusUpdate(code, ctx.agency, exchange_status, dossier_status, step=step_id, description=note,
                          timestamp=at, apology=apology, new_due_date=new_date)
    header = Header(kind=Kind.STATUS, sender=ctx.agency, recipient=code.agency, dossier=code,
                    procedure=ProcedureCode(_procedure_of(ctx, code)), step=step_id, created=now())
    _enqueue(ctx, header, status_element(update), Event.STATUS_SENT)


# What the daemon does with incoming envelopes -------------------------------------------

@dataclass(frozen=True)
class Handled:
    """What became of one delivery: ``accepted``, ``duplicate`` or ``refused`` (with its reason)."""

    outcome: str
    reason: str = ""


def receive_batch(ctx: NodeContext, bodies: list[tuple[str, bytes]]) -> list[Handled]:
    """Verify, authorize, de-duplicate and record a window of envelopes in one transaction; queue one
    receipt per sender covering all its envelopes of the window."""
    acks: dict[AgencyCode, list[tuple[Ack, str]]] = defaultdict(list)
    results = []
    with ctx.store.transaction():
        for message_id, body in bodies:
            results.append(_receive_one(ctx, message_id, body, acks))
        for sender, items in acks.items():
            _send_receipt(ctx, sender, items)
    return results


def _receive_one(ctx: NodeContext, message_id: str, body: bytes,
                 acks: dict[AgencyCode, list[tuple[Ack, str]]]) -> Handled:
    try:
        env = ctx.opener.open(body, source=f"message {message_id}")
        if env.header.recipient != ctx.agency:
            raise NotAuthorized(f"the envelope is addressed to {env.header.recipient}, not to this node")
    except InvalidEnvelope as exc:
        return _refuse_unverified(ctx, message_id, body, exc, acks)
    known = ctx.store.known(env.header.message_id)
    if known is not None:
        _resend_receipt(ctx, known[1])
        return Handled("duplicate")
    try:
        if env.header.kind is Kind.RECEIPT:
            _take_receipt(ctx, env)
            return Handled("accepted")
        _authorize(ctx, env)
    except InvalidEnvelope as exc:
        return _refuse(ctx, env, exc, acks)
    if env.header.kind is Kind.TRANSFER:
        _take_transfer(ctx, env)
    else:
        _take_status(ctx, env)
    acks[env.header.sender].append((Ack(env.header.message_id, env.envelope_digest, Outcome.ACCEPTED), ""))
    return Handled("accepted")


def _authorize(ctx: NodeContext, env: VerifiedEnvelope) -> None:
    header = env.header
    assert header.dossier is not None
    assert header.procedure is not None
    assert header.step is not None
    rules = ctx.rules
    if header.kind is Kind.TRANSFER:
        decision = rules.authorize(header.sender, ctx.agency, header.procedure, header.step, header.dossier.agency)
        if not decision:
            raise NotAuthorized(decision.reason)
        return
    try:
        route = rules.route(header.procedure, header.dossier.agency)
    except RoutingError as exc:
        raise NotAuthorized(str(exc)) from None
    if header.sender not in route.values() or header.dossier.agency != ctx.agency:
        raise NotAuthorized(f"{header.sender} is not on the route of dossier {header.dossier}, or this node "
                            "is not its origin")


def _take_transfer(ctx: NodeContext, env: VerifiedEnvelope) -> None:
    header = env.header
    assert header.dossier is not None
    assert header.procedure is not None
    assert header.step is not None
    code = header.dossier
    conn = ctx.store.conn
    payload = etree.tostring(env.payload)
    info = dossiers.DossierInfo.of(env.payload)
    route = ctx.rules.route(header.procedure, code.agency)
    if conn.execute("SELECT 1 FROM dossiers WHERE code = ?", (str(code),)).fetchone():
        conn.execute("UPDATE dossiers SET payload = ?, updated = ? WHERE code = ?",
                     (payload, now().timestamp(), str(code)))
    else:
        conn.execute("INSERT INTO dossiers (code, procedure, origin, received_at, state, payload, updated) "
                     "VALUES (?, ?, ?, ?, 'processing', ?, ?)",
                     (str(code), str(header.procedure), str(code.agency), utc(info.received_at), payload,
                      now().timestamp()))
    procedure = ctx.rules.procedure(header.procedure)
    finished = next((hop.at for hop in reversed(header.trace) if hop.agency == header.sender), header.created)
    for before in procedure.step(header.step).after:
        if route[before] == header.sender:
            conn.execute("INSERT INTO steps (dossier, step, agency, state, done_at) VALUES (?, ?, ?, 'done', ?) "
                         "ON CONFLICT (dossier, step) DO UPDATE SET state = 'done', done_at = excluded.done_at",
                         (str(code), before, str(header.sender), utc(min(finished, header.created))))
    conn.execute("INSERT OR IGNORE INTO steps (dossier, step, agency, state) VALUES (?, ?, ?, 'pending')",
                 (str(code), header.step, str(ctx.agency)))
    due = _refresh_ready(ctx, code)
    _record_inbox(ctx, env, "accepted", payload)
    ctx.record(ctx.entry(Event.RECEIVED, dossier=str(code), procedure=str(header.procedure),
                               step=header.step, message_id=header.message_id, counterpart=str(header.sender),
                               envelope_sha256=env.envelope_digest,
                               detail={"due": due[header.step]} if header.step in due else {}))


def _refresh_ready(ctx: NodeContext, code: DossierCode) -> dict[str, str]:
    """Mark this node's steps whose prerequisites are all done as ready, with their due dates."""
    conn = ctx.store.conn
    procedure, received = conn.execute("SELECT procedure, received_at FROM dossiers WHERE code = ?",
                                       (str(code),)).fetchone()
    done = _done(ctx, code)
    ready = ctx.rules.next_steps(ProcedureCode(procedure), code.agency,
                                 dt.datetime.fromisoformat(received.replace("Z", "+00:00")), done)
    dues = {}
    for item in ready:
        if item.agency != ctx.agency:
            continue
        due = item.due.isoformat() if item.due else None
        conn.execute("INSERT INTO steps (dossier, step, agency, state, due) VALUES (?, ?, ?, 'ready', ?) "
                     "ON CONFLICT (dossier, step) DO UPDATE SET state = 'ready', due = excluded.due "
                     "WHERE steps.state = 'pending'", (str(code), item.step.id, str(ctx.agency), due))
        if due:
            dues[item.step.id] = due
    return dues


def _done(ctx: NodeContext, code: DossierCode) -> dict[str, dt.datetime]:
    rows = ctx.store.conn.execute("SELECT step, done_at FROM steps WHERE dossier = ? AND state = 'done'",
                                  (str(code),))
    return {step: dt.datetime.fromisoformat(at.replace("Z", "+00:00")) for step, at in rows}


def _take_status(ctx: NodeContext, env: VerifiedEnvelope) -> None:
    payload = env.payload
    ns = "{urn:vn-exchange:status:1}"
    header = env.header
    values = (str(header.dossier), str(header.sender), payload.findtext(ns + "Step"),
              payload.findtext(ns + "ExchangeStatus") or "", int(payload.findtext(ns + "DossierStatus") or 0),
              payload.findtext(ns + "Timestamp") or "", payload.findtext(ns + "Description"))
    ctx.store.conn.execute("INSERT INTO statuses (dossier, sender, step, exchange_status, dossier_status, at, "
                           "note) VALUES (?, ?, ?, ?, ?, ?, ?)", values)
    _record_inbox(ctx, env, "accepted", etree.tostring(payload))
    ctx.record(ctx.entry(Event.STATUS_RECEIVED, dossier=str(header.dossier), procedure=str(header.procedure),
                               step=header.step, message_id=header.message_id, counterpart=str(header.sender),
                               envelope_sha256=env.envelope_digest,
                               detail={"status": payload.findtext(ns + "ExchangeStatus") or ""}))


def _take_receipt(ctx: NodeContext, env: VerifiedEnvelope) -> None:
    conn = ctx.store.conn
    for ack in read_acks(env.payload):
        row = ctx.store.outbox_by_message(ack.message_id)
        if row is None or row.recipient != str(env.header.sender):
            log.warning("receipt.unknown", message=ack.message_id, sender=str(env.header.sender))
            continue
        if row.envelope_sha256 != ack.envelope_digest:
            log.warning("receipt.digest_mismatch", message=ack.message_id)
        state = "acknowledged" if ack.outcome is Outcome.ACCEPTED else "refused"
        if row.state == "pending":
            # The node died after the broker confirmed and before it marked the row: the receipt
            # proves the publication, which the audit log must still show.
            ctx.record(ctx.entry(Event.PUBLISHED, dossier=row.dossier, step=row.step,
                                       message_id=row.message_id, counterpart=row.recipient,
                                       envelope_sha256=row.envelope_sha256, detail={"attempt": "recovered"}))
        conn.execute("UPDATE outbox SET state = ? WHERE id = ? AND state IN ('pending', 'published')",
                     (state, row.id))
        detail = {"outcome": ack.outcome.value, **({"reason": ack.reason_code} if ack.reason_code else {})}
        ctx.record(ctx.entry(Event.RECEIPT_RECEIVED, dossier=row.dossier, step=row.step,
                                   message_id=ack.message_id, counterpart=str(env.header.sender),
                                   envelope_sha256=row.envelope_sha256, detail=detail))
        if ack.outcome is Outcome.REFUSED:
            log.error("transfer.refused_by_peer", message=ack.message_id, peer=str(env.header.sender),
                      reason=ack.reason_code, text=ack.reason_text)
    _observe(ctx, env)
    _record_inbox(ctx, env, "accepted", None, delivered=True)


def _record_inbox(ctx: NodeContext, env: VerifiedEnvelope, outcome: str, payload: bytes | None,
                  reason: str | None = None, delivered: bool = False) -> None:
    header = env.header
    ctx.store.conn.execute(
        "INSERT INTO inbox (message_id, sender, kind, dossier, step, envelope_sha256, received_at, outcome, reason, "
        "payload, delivered) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (header.message_id, str(header.sender), header.kind.value, str(header.dossier) if header.dossier else None,
         header.step, env.envelope_digest, now().timestamp(), outcome, reason, payload,
         int(delivered or outcome != "accepted")))


def _refuse(ctx: NodeContext, env: VerifiedEnvelope, exc: InvalidEnvelope,
            acks: dict[AgencyCode, list[tuple[Ack, str]]]) -> Handled:
    header = env.header
    _record_inbox(ctx, env, "refused", None, reason=exc.reason_code)
    ctx.record(ctx.entry(Event.REFUSED, dossier=str(header.dossier) if header.dossier else None,
                               step=header.step, message_id=header.message_id, counterpart=str(header.sender),
                               envelope_sha256=env.envelope_digest,
                               detail={"reason": exc.reason_code, "text": exc.message[:300]}))
    acks[header.sender].append((Ack(header.message_id, env.envelope_digest, Outcome.REFUSED,
                                    exc.reason_code, exc.message[:1000]), ""))
    log.warning("envelope.refused", message=header.message_id, sender=str(header.sender), reason=exc.reason_code,
                text=exc.message)
    return Handled("refused", f"{exc.reason_code}: {exc.message}")


def _refuse_unverified(ctx: NodeContext, message_id: str, body: bytes, exc: InvalidEnvelope,
                       acks: dict[AgencyCode, list[tuple[Ack, str]]]) -> Handled:
    """A refusal of an envelope that did not verify: audited; a refusal receipt goes to the
    sender the envelope claims, when it names one, so an honest sender learns of its fault."""
    digest = hashlib.sha256(body).hexdigest()
    claimed = _claimed(body)
    ctx.record(ctx.entry(Event.REFUSED, message_id=message_id, envelope_sha256=digest,
                               counterpart=str(claimed[0]) if claimed else None,
                               detail={"reason": exc.reason_code, "text": exc.message[:300]}))
    if claimed is not None and claimed[0] != ctx.agency:
        acks[claimed[0]].append((Ack(claimed[1], digest, Outcome.REFUSED, exc.reason_code, exc.message[:1000]), ""))
    log.warning("envelope.refused", message=message_id, reason=exc.reason_code, text=exc.message)
    return Handled("refused", f"{exc.reason_code}: {exc.message}")


def _claimed(body: bytes) -> tuple[AgencyCode, str] | None:
    try:
        root = safexml.parse(body)
        sender = root.findtext(f"{q('Header')}/{q('From')}")
        message_id = root.findtext(f"{q('Header')}/{q('MessageId')}")
        if sender and message_id and len(message_id) == 36:
            return AgencyCode(sender), message_id
    except (InvalidEnvelope, ValueError):
        return None
    return None


def _send_receipt(ctx: NodeContext, sender: AgencyCode, items: list[tuple[Ack, str]]) -> None:
    acks = tuple(ack for ack, _ in items)
    header = Header(kind=Kind.RECEIPT, sender=ctx.agency, recipient=sender,
                    in_reply_to=acks[0].message_id if len(acks) == 1 else None)
    receipt_id = _enqueue(ctx, header, receipt_element(acks, _witnessed(ctx, sender)), None)
    for ack in acks:
        ctx.store.conn.execute("UPDATE inbox SET receipt_id = ? WHERE message_id = ?", (receipt_id, ack.message_id))
        # One entry per acknowledged envelope, named by its id: what reconciliation matches.
        ctx.record(ctx.entry(Event.RECEIPT_SENT, message_id=ack.message_id, counterpart=str(sender),
                                   envelope_sha256=ack.envelope_digest,
                                   detail={"outcome": ack.outcome.value, "receipt": receipt_id,
                                           **({"reason": ack.reason_code} if ack.reason_code else {})}))


def _witnessed(ctx: NodeContext, peer: AgencyCode) -> Witnessed | None:
    """This node's latest checkpoint for a receipt, proven from the one last sent to ``peer``, with
    the checkpoint key and the agency key's attestation of it: every peer keeps our tree heads."""
    attachment = Witness(ctx.audit).attachment_for(str(peer), ctx.checkpointer.latest())
    if attachment is None:
        return None
    key = ctx.store.conn.execute("SELECT verifier, attestation FROM audit_keys ORDER BY from_size DESC "
                                 "LIMIT 1").fetchone()
    return Witnessed(attachment.note, attachment.from_size, attachment.proof,
                     key[0] if key else None, key[1] if key else None)


def _observe(ctx: NodeContext, env: VerifiedEnvelope) -> None:
    """Keep the checkpoint a peer's receipt carries, checked against the last one it sent."""
    witnessed = read_witnessed(env.payload)
    if witnessed is None or not witnessed.key or not witnessed.attestation or env.signer_certificate is None:
        return
    try:
        verifier = Verifier.parse(witnessed.key)
        if verifier.name != origin_for(str(env.header.sender)) or not check_attestation(
                verifier, witnessed.attestation, env.signer_certificate):
            log.warning("witness.key_not_attested", peer=str(env.header.sender))
            return
        Witness(ctx.audit).observe(witnessed.note, verifier, witnessed.from_size,
                                                        witnessed.proof)
    except AuditError as exc:
        log.warning("witness.checkpoint_refused", peer=str(env.header.sender), error=str(exc))


def _resend_receipt(ctx: NodeContext, receipt_id: str | None) -> None:
    """A redelivered known message: send the same receipt again, deliver nothing."""
    if receipt_id:
        ctx.store.conn.execute("UPDATE outbox SET state = 'pending', next_attempt = 0 WHERE message_id = ? AND "
                               "kind = 'receipt'", (receipt_id,))


# Helpers ----------------------------------------------------------------------------------

def _procedure_of(ctx: NodeContext, code: DossierCode) -> str:
    row = ctx.store.conn.execute("SELECT procedure FROM dossiers WHERE code = ?", (str(code),)).fetchone()
    if row is None:
        raise InvalidInput(f"this node knows no dossier {code}")
    return str(row[0])


def _payload(ctx: NodeContext, code: DossierCode) -> etree._Element:
    row = ctx.store.conn.execute("SELECT payload FROM dossiers WHERE code = ?", (str(code),)).fetchone()
    return safexml.parse(bytes(row[0]), source=f"stored dossier {code}")


def _set_state(ctx: NodeContext, code: DossierCode, state: str) -> None:
    ctx.store.conn.execute("UPDATE dossiers SET state = ?, updated = ? WHERE code = ?",
                           (state, now().timestamp(), str(code)))


def delivery_dir(config: NodeConfig) -> Path:
    return config.delivery_dir
