"""What a node does with its dossiers: submit one the desk received, complete a step, hand the
dossier off to the next steps, and tell the origin how it goes. Each function changes the node's
state in one transaction, with the audit entries that record it and the envelopes it must send
(into the outbox, which the dispatcher publishes). Nothing here touches the transport; what
arrives from peers is ``intake``'s.
"""

from __future__ import annotations

import datetime as dt
import hashlib

from lxml import etree

from exchange import clock
from exchange.audit.entries import Event
from exchange.clock import utc
from exchange.codes import AgencyCode, DossierCode, ProcedureCode
from exchange.envelope import dossier as dossiers
from exchange.envelope.messages import DossierStatus, ExchangeStatus, StatusUpdate, status_element
from exchange.envelope.model import Header, Hop, Kind
from exchange.errors import AlreadySubmitted, InvalidDossier, StepNotReady, UnknownDossier
from exchange.node import slips
from exchange.node.context import NodeContext
from exchange.rules.model import Procedure
from exchange.store.node import DossierRow
from exchange.store.states import DossierState, Result, StepState
from exchange.xml import safexml
from exchange.xml.names import DOSSIER_NS, q

DECISIONS: tuple[Result, ...] = (Result.ACCEPTED, Result.REFUSED)
"""The results ``complete`` takes (``exchange done --result``, the HTTP API)."""
MAX_CONTROL_ROWS = 200
"""A dossier's processing-control slip stops growing here: a loop must not grow it forever."""


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
    at = clock.now()
    code = str(info.code)
    with ctx.store.transaction():
        if ctx.store.dossier(code) is not None:
            raise AlreadySubmitted(code)
        ctx.store.add_dossier(DossierRow(code, str(info.procedure), str(ctx.agency), utc(info.received_at),
                                         DossierState.PROCESSING), etree.tostring(root))
        ctx.store.add_steps(code, [(step.id, str(route[step.id])) for step in procedure.steps])
        ctx.record(ctx.entry(Event.SUBMITTED, dossier=code, procedure=str(info.procedure), step=first.id, time=at,
                             detail={"due": rules.due_date(info.procedure, info.received_at).isoformat()}))
        # The first step (the desk receiving the dossier) was done when the desk received it: the
        # deadlines of the steps after it count from then, however late it is entered here.
        finish_step(ctx, info.code, first.id, min(at, info.received_at), Result.ACCEPTED, root)
        slips.issue(ctx, slips.appointment(ctx, info.code, root, info.received_at))
    slips.publish(ctx)  # the appointment slip, once its delivery committed
    return info.code


def complete(ctx: NodeContext, code: DossierCode, step_id: str, result: str = Result.ACCEPTED,
             late: slips.Late | None = None) -> list[str]:
    """The local agency finished ``step_id``; returns what the node sent or made ready."""
    with ctx.store.transaction():
        step = ctx.store.step(str(code), step_id)
        if step is None:
            raise UnknownDossier(f"this node knows no step {step_id!r} of dossier {code}")
        if step.agency != str(ctx.agency):
            raise StepNotReady(f"step {step_id!r} of {code} is performed by {step.agency}, not by this node")
        if step.state is not StepState.READY:
            raise StepNotReady(f"step {step_id!r} of {code} is {step.state}, not ready: "
                               + _waiting_for(ctx, code, step_id))
        return finish_step(ctx, code, step_id, clock.now(), Result(result), _payload(ctx, code), late=late)


def _waiting_for(ctx: NodeContext, code: DossierCode, step_id: str) -> str:
    done = ctx.store.done_steps(str(code))
    missing = [p for p in procedure_of(ctx, code).step(step_id).after if p not in done]
    return f"waiting for {', '.join(missing)}" if missing else "already done"


def finish_step(ctx: NodeContext, code: DossierCode, step_id: str, at: dt.datetime, result: Result,
                payload: etree._Element, late: slips.Late | None = None) -> list[str]:
    """Record ``step_id`` done here, then hand off, finish the dossier, or tell the origin."""
    step = ctx.store.step(str(code), step_id)
    due = step.due if step else None
    is_late = bool(due and at.astimezone(ctx.rules.calendar.timezone).date().isoformat() > due)
    notice = slips.late_step(ctx, code, step_id, at, due, payload, clock.parse(_dossier(ctx, code).received_at),
                             late) if due and is_late else None
    ctx.store.finish_step(str(code), step_id, str(ctx.agency), utc(at), result)
    ctx.record(ctx.entry(Event.STEP_DONE, dossier=str(code), procedure=str(procedure_of(ctx, code).code),
                         step=step_id, time=at, detail={"result": result, **({"due": due} if due else {}),
                                                        **({"late": "yes"} if is_late else {})}))
    origin = code.agency
    if result is not Result.ACCEPTED:
        ctx.store.set_dossier_state(str(code), DossierState.REFUSED)
        if origin != ctx.agency:
            _send_status(ctx, code, step_id, ExchangeStatus.REFUSED, DossierStatus.NOT_ACCEPTED, at,
                         f"step {step_id} refused: {result}")
        return [DossierState.REFUSED.value]
    sent = _hand_off(ctx, code, step_id, at, payload)
    if not sent and not _dependents(ctx, code, step_id):
        ctx.store.set_dossier_state(str(code), DossierState.COMPLETED)
    if origin != ctx.agency:
        _send_status(ctx, code, step_id, ExchangeStatus.DONE, DossierStatus.PROCESSING, at,
                     f"step {step_id} done", late=notice)
    return sent


def _dependents(ctx: NodeContext, code: DossierCode, step_id: str) -> list[str]:
    return [s.id for s in procedure_of(ctx, code).steps if step_id in s.after]


def _hand_off(ctx: NodeContext, code: DossierCode, done_step: str, at: dt.datetime,
              payload: etree._Element) -> list[str]:
    """Send the dossier to the performer of every step that waits on ``done_step``; a step this
    node performs itself becomes ready here once all its prerequisites are done."""
    procedure = procedure_of(ctx, code)
    route = ctx.rules.route(procedure.code, code.agency)
    sent = []
    for step_id in _dependents(ctx, code, done_step):
        agency = route[step_id]
        if agency == ctx.agency:
            refresh_ready(ctx, code)
            sent.append(f"{step_id} (here)")
            continue
        sealed = clock.now()  # the signature's time, which certificates are checked at; ``at`` may be long past
        body = _with_control_row(payload, at, ctx.agency, agency, f"{done_step} done; hand-off for {step_id}")
        header = Header(kind=Kind.TRANSFER, sender=ctx.agency, recipient=agency, dossier=code,
                        procedure=procedure.code, step=step_id, created=sealed,
                        trace=(Hop(ctx.agency, at),))  # when this agency finished: the next deadline counts from it
        enqueue(ctx, header, body, Event.SEALED)
        ctx.store.hand_over(str(code), step_id, StepState.SENT)
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


def enqueue(ctx: NodeContext, header: Header, payload: etree._Element, event: Event | None) -> str:
    """Seal an envelope into the outbox, in the caller's transaction; audit it as ``event``."""
    data = ctx.signer.seal(header, payload)
    digest = hashlib.sha256(data).hexdigest()
    dossier = str(header.dossier) if header.dossier else None
    ctx.store.enqueue(header.message_id, str(header.recipient), header.kind.value, dossier, header.step, data,
                      digest)
    if event is not None:
        ctx.record(ctx.entry(event, dossier=dossier, procedure=str(header.procedure) if header.procedure else None,
                             step=header.step, message_id=header.message_id, counterpart=str(header.recipient),
                             envelope_sha256=digest, time=header.created))
    return header.message_id


def _send_status(ctx: NodeContext, code: DossierCode, step_id: str, exchange_status: ExchangeStatus,
                 dossier_status: DossierStatus, at: dt.datetime, note: str,
                 late: tuple[str, dt.date] | None = None) -> None:
    apology, new_date = late if late else (None, None)  # the late agency's apology slip says the same
    update = StatusUpdate(code, ctx.agency, exchange_status, dossier_status, step=step_id, description=note,
                          timestamp=at, apology=apology, new_due_date=new_date)
    header = Header(kind=Kind.STATUS, sender=ctx.agency, recipient=code.agency, dossier=code,
                    procedure=procedure_of(ctx, code).code, step=step_id, created=clock.now())
    enqueue(ctx, header, status_element(update), Event.STATUS_SENT)


# Steps becoming ready --------------------------------------------------------------------

def refresh_ready(ctx: NodeContext, code: DossierCode) -> dict[str, str]:
    """Mark this node's steps whose prerequisites are all done as ready, with their due dates."""
    row = _dossier(ctx, code)
    done = {step: clock.parse(at) for step, at in ctx.store.done_steps(str(code)).items()}
    ready = ctx.rules.next_steps(ProcedureCode(row.procedure), code.agency, clock.parse(row.received_at), done)
    dues = {}
    for item in ready:
        if item.agency != ctx.agency:
            continue
        due = item.due.isoformat() if item.due else None
        ctx.store.make_ready(str(code), item.step.id, str(ctx.agency), due)
        if due:
            dues[item.step.id] = due
    return dues


# Helpers ----------------------------------------------------------------------------------

def _dossier(ctx: NodeContext, code: DossierCode) -> DossierRow:
    row = ctx.store.dossier(str(code))
    if row is None:
        raise UnknownDossier(f"this node knows no dossier {code}")
    return row


def procedure_of(ctx: NodeContext, code: DossierCode) -> Procedure:
    """The procedure a dossier held here follows, as the rules in force define it."""
    return ctx.rules.procedure(ProcedureCode(_dossier(ctx, code).procedure))


def _payload(ctx: NodeContext, code: DossierCode) -> etree._Element:
    data = ctx.store.dossier_payload(str(code))
    if data is None:
        raise UnknownDossier(f"this node knows no dossier {code}")
    return safexml.parse(data, source=f"stored dossier {code}")
