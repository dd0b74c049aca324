"""What a node does with its dossiers: submit one the desk received, complete a step, hand the
dossier off to the next steps, and tell the origin how it goes. Each function changes the node's
state in one transaction, with the audit entries that record it and the envelopes it must send
(into the outbox, which the dispatcher publishes). Nothing here touches the transport; what
arrives from peers is ``intake``'s.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
from collections.abc import Mapping
from dataclasses import replace

from cryptography import x509
from lxml import etree

from exchange import clock
from exchange.audit.entries import Entry, Event
from exchange.clock import utc
from exchange.codes import AgencyCode, DossierCode, ProcedureCode
from exchange.envelope import dossier as dossiers
from exchange.envelope.encryption import RecipientCertificate
from exchange.envelope.messages import DossierStatus, ExchangeStatus, StatusUpdate, status_element
from exchange.envelope.model import Header, Hop, Kind
from exchange.errors import (
    AlreadySubmitted,
    InvalidDossier,
    InvalidInput,
    RecipientUnknown,
    StepNotReady,
    UnknownDossier,
)
from exchange.node import slips
from exchange.node.config import active_bundle_version
from exchange.node.context import NodeContext
from exchange.node.status import NATIONAL_STATUS, dossier_due
from exchange.rules.model import NextStep, Procedure
from exchange.store.node import DossierRow
from exchange.store.states import DossierState, Result, StepState
from exchange.xml import safexml
from exchange.xml.names import DOSSIER_NS, q

DECISIONS: tuple[Result, ...] = (Result.ACCEPTED, Result.REFUSED, Result.SUPPLEMENT)
"""The results ``complete`` takes (``exchange done --result``, the HTTP API)."""
FINAL_EXCHANGE_STATUS: dict[DossierState, ExchangeStatus] = {
    DossierState.COMPLETED: ExchangeStatus.DONE,
    DossierState.REFUSED: ExchangeStatus.REFUSED,
    DossierState.WITHDRAWN: ExchangeStatus.DONE,  # QCVN 102 has no "withdrawn": the exchange is over (06)
}
"""The QCVN 102 status of the notice that tells a dossier's end; its national status says which end."""
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
    _check_in_force(ctx, clock.now(), source)
    procedure = rules.procedure(info.procedure, info.received_at)  # the version in force when the desk received it
    route = rules.route(info.procedure, ctx.agency, info.received_at)
    first = procedure.steps[0]
    at = clock.now()
    code = str(info.code)
    if ctx.store.dossier(code) is not None:
        raise AlreadySubmitted(code)
    # Written (and fsynced) before the write lock: a desk submitting 100 dossiers a second held
    # it 80 % of the time with the slip's writes inside, and the node's loop waited behind it.
    slip = slips.prepare(ctx, slips.appointment(ctx, info.code, root, info.received_at, info.procedure))
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
        slips.record(ctx, slip)
    slips.publish(ctx)  # the appointment slip, once its delivery committed
    return info.code


def _check_in_force(ctx: NodeContext, now: dt.datetime, source: str) -> None:
    """An agency abolished since takes no new dossier: its successor's desk does."""
    agency = ctx.rules.abolished(ctx.agency, now)
    if agency is None:
        return
    heirs = ", ".join(f"{s.agency} ({ctx.rules.agencies[s.agency].name})" for s in agency.successors
                      if s.agency in ctx.rules.agencies)
    raise InvalidDossier(f"{source}: this node's agency {ctx.agency} ({agency.name}) ended on {agency.end}: it "
                         f"takes no new dossier; submit it at {heirs or 'the agency that took its work over'}")


def complete(ctx: NodeContext, code: DossierCode, step_id: str, result: str = Result.ACCEPTED,
             reason: str | None = None, late: slips.Late | None = None) -> list[str]:
    """The local agency finished ``step_id``; returns what the node sent or made ready. A refusal
    needs its ``reason``: it travels signed to the origin's desk, which hands it to the applicant."""
    decision = Result(result)
    if decision is not Result.ACCEPTED and not (reason and reason.strip()):
        what = "refusing" if decision is Result.REFUSED else "asking for more documents at"
        raise InvalidInput(f"{what} step {step_id!r} of {code} needs a reason (--reason TEXT): "
                           "the desk hands it to the applicant")
    with ctx.store.transaction():
        step = ctx.store.step(str(code), step_id)
        if step is None:
            raise UnknownDossier(f"this node knows no step {step_id!r} of dossier {code}")
        if step.agency != str(ctx.agency):
            raise StepNotReady(f"step {step_id!r} of {code} is performed by {step.agency}, not by this node")
        if step.state is StepState.CANCELLED:
            raise StepNotReady(f"step {step_id!r} of {code} was cancelled: the dossier is "
                               f"{_dossier(ctx, code).state}; nothing more is done on it")
        if step.state is StepState.WAITING:
            raise StepNotReady(f"step {step_id!r} of {code} waits for the applicant's supplement "
                               f"(asked {_paused_since(ctx, code)}); it is ready again when the desk sends it")
        if step.state is not StepState.READY:
            raise StepNotReady(f"step {step_id!r} of {code} is {step.state}, not ready: "
                               + _waiting_for(ctx, code, step_id))
        at = clock.now()
        _check_late(ctx, code, step_id, step.due, at, late)
        if decision is Result.SUPPLEMENT:
            return request_supplement(ctx, code, step_id, at, str(reason).strip())
        return finish_step(ctx, code, step_id, at, decision, payload_of(ctx, code),
                           reason=reason.strip() if reason else None, late=late)


def _check_late(ctx: NodeContext, code: DossierCode, step_id: str, due: str | None, at: dt.datetime,
                late: slips.Late | None) -> None:
    """What the late agency says is for a late step only: said of one on time, it would vanish."""
    if late is None or (late.reason is None and late.new_date is None):
        return
    if not (due and _local_day(ctx, at) > due):
        when = f"due {due}" if due else "without a due date (its clock is paused)"
        raise InvalidInput(f"step {step_id!r} of {code} is {when} and done on time: --late-reason and "
                           "--new-date are for a late step's apology slip")


def _local_day(ctx: NodeContext, at: dt.datetime) -> str:
    return at.astimezone(ctx.rules.calendar.timezone).date().isoformat()


def _paused_since(ctx: NodeContext, code: DossierCode) -> str:
    since = _dossier(ctx, code).paused_since
    return _local_day(ctx, clock.parse(since)) if since else "earlier"


def _waiting_for(ctx: NodeContext, code: DossierCode, step_id: str) -> str:
    done = ctx.store.done_steps(str(code))
    missing = [p for p in procedure_of(ctx, code).step(step_id).after if p not in done]
    return f"waiting for {', '.join(missing)}" if missing else "already done"


def finish_step(ctx: NodeContext, code: DossierCode, step_id: str, at: dt.datetime, result: Result,
                payload: etree._Element, reason: str | None = None, late: slips.Late | None = None) -> list[str]:
    """Record ``step_id`` done here, then hand off, finish the dossier, or tell the origin."""
    step = ctx.store.step(str(code), step_id)
    due = step.due if step else None
    is_late = bool(due and _local_day(ctx, at) > due)
    notice = slips.late_step(ctx, code, step_id, at, due, payload, clock.parse(_dossier(ctx, code).received_at),
                             late) if due and is_late else None
    ctx.store.finish_step(str(code), step_id, str(ctx.agency), utc(at), result)
    if procedure_of(ctx, code).step(step_id).paused:  # the applicant paid: the clock runs again
        resume_clock(ctx, code, at, "fee", step_id)
    ctx.record(ctx.entry(Event.STEP_DONE, dossier=str(code), procedure=str(procedure_of(ctx, code).code),
                         step=step_id, time=at, detail={"result": result, **({"due": due} if due else {}),
                                                        **({"late": "yes"} if is_late else {})}))
    origin = code.agency
    if result is not Result.ACCEPTED:
        end_dossier(ctx, code, DossierState.REFUSED, step_id, at, reason or f"step {step_id} refused: {result}")
        return [DossierState.REFUSED.value]
    sent = _hand_off(ctx, code, step_id, at, payload)
    finished = not sent and not _dependents(ctx, code, step_id)
    if finished and origin == ctx.agency:
        end_dossier(ctx, code, DossierState.COMPLETED, step_id, at, None)
    elif finished:
        ctx.store.set_dossier_state(str(code), DossierState.COMPLETED)
        _record_end(ctx, code, DossierState.COMPLETED, step_id, at, None)
    if origin != ctx.agency:
        final = DossierState.COMPLETED if finished else None
        _send_status(ctx, code, step_id, ExchangeStatus.DONE,
                     NATIONAL_STATUS[final] if final else DossierStatus.PROCESSING, at,
                     f"step {step_id} done", late=notice, final=final)
    return sent


# The end of a dossier ----------------------------------------------------------------------

def withdraw(ctx: NodeContext, code: DossierCode, reason: str) -> list[str]:
    """The applicant withdrew the dossier at the origin's desk: it ends here as ``withdrawn`` and
    every participant is told; returns the agencies told. Steps already done stay done."""
    if not reason.strip():
        raise InvalidInput(f"withdrawing {code} needs a reason (--reason TEXT)")
    with ctx.store.transaction():
        row = _dossier(ctx, code)
        if code.agency != ctx.agency:
            raise InvalidInput(f"dossier {code} was received at {code.agency}: the applicant withdraws it there")
        if row.state.final:
            raise InvalidInput(f"dossier {code} is already {row.state}: a finished dossier cannot be withdrawn")
        first = procedure_of(ctx, code).steps[0].id
        return end_dossier(ctx, code, DossierState.WITHDRAWN, first, clock.now(), reason.strip())


def end_dossier(ctx: NodeContext, code: DossierCode, final: DossierState, step_id: str, at: dt.datetime,
                reason: str | None, spare: AgencyCode | None = None) -> list[str]:
    """The dossier ends here as ``final``: the steps not done are cancelled, and a signed notice
    goes to the origin (from a participant) or to every participant but ``spare`` (from the
    origin, whose word every participant takes). Returns the agencies told."""
    told = _participants(ctx, code, spare) if code.agency == ctx.agency else [code.agency]
    ctx.store.set_dossier_state(str(code), final)
    ctx.store.cancel_steps(str(code))
    _record_end(ctx, code, final, step_id, at, reason)
    notes = {DossierState.COMPLETED: "dossier completed", DossierState.REFUSED: f"step {step_id} refused",
             DossierState.WITHDRAWN: "dossier withdrawn by the applicant"}
    for agency in told:
        _send_status(ctx, code, step_id, FINAL_EXCHANGE_STATUS[final], NATIONAL_STATUS[final], at, notes[final],
                     recipient=agency, reason=reason, final=final)
    return [str(agency) for agency in told]


def _record_end(ctx: NodeContext, code: DossierCode, final: DossierState, step_id: str | None,
                at: dt.datetime, reason: str | None) -> None:
    """The audit entry of a dossier's end here: what an auditor looks for first."""
    ctx.record(ctx.entry(Event.ENDED, dossier=str(code), procedure=str(procedure_of(ctx, code).code), step=step_id,
                         time=at, detail={"state": final.value, **({"reason": reason[:300]} if reason else {})}))


def learn_end(ctx: NodeContext, code: DossierCode, final: DossierState, step_id: str | None, at: dt.datetime,
              reason: str | None) -> None:
    """A participant learns from the origin how the dossier ended: its word is final here."""
    row = ctx.store.dossier(str(code))
    if row is not None and row.state is final:
        return
    ctx.store.set_dossier_state(str(code), final)
    ctx.store.cancel_steps(str(code))
    _record_end(ctx, code, final, step_id, at, reason)


# The clock standing still: fees and supplements -------------------------------------------

def request_supplement(ctx: NodeContext, code: DossierCode, step_id: str, at: dt.datetime, reason: str) -> list[str]:
    """The step's agency needs more documents: the step waits, the dossier's clock stops, and the
    origin's desk is told what is missing (signed), to ask the applicant."""
    ctx.store.wait(str(code), step_id)
    ctx.store.pause(str(code), DossierState.SUPPLEMENT_REQUESTED, utc(at))
    ctx.record(ctx.entry(Event.PAUSED, dossier=str(code), procedure=str(procedure_of(ctx, code).code), step=step_id,
                         time=at, detail={"why": "supplement", "reason": reason[:300]}))
    if code.agency == ctx.agency:
        _supplement_slip(ctx, code, step_id, reason, ctx.agency)
        return ["supplement requested at this desk"]
    _send_status(ctx, code, step_id, ExchangeStatus.PROCESSING, DossierStatus.SUPPLEMENT_REQUESTED, at,
                 f"step {step_id} asks for more documents", reason=reason)
    return [f"supplement requested → {code.agency}"]


def supplement_requested(ctx: NodeContext, code: DossierCode, step_id: str, asking: AgencyCode, at: dt.datetime,
                         reason: str | None) -> None:
    """At the origin: a step asked for more documents. The desk's copy of the step waits, the
    clock stops, and the desk gets the slip to hand to the applicant."""
    row = ctx.store.dossier(str(code))
    if row is None or row.state.final:
        return
    ctx.store.wait(str(code), step_id)
    ctx.store.pause(str(code), DossierState.SUPPLEMENT_REQUESTED, utc(at))
    ctx.record(ctx.entry(Event.PAUSED, dossier=str(code), procedure=row.procedure, step=step_id, time=at,
                         counterpart=str(asking), detail={"why": "supplement", "reason": (reason or "")[:300]}))
    _supplement_slip(ctx, code, step_id, reason or "", asking)


def _supplement_slip(ctx: NodeContext, code: DossierCode, step_id: str, reason: str, asking: AgencyCode) -> None:
    row = _dossier(ctx, code)
    due = dt.date.fromisoformat(dossier_due(ctx, row) or _local_day(ctx, clock.now()))
    rounds = sum(1 for _, data in ctx.audit.dossier_entries(str(code))
                 if (e := Entry.decode(data)[1]).event is Event.PAUSED and e.step == step_id
                 and e.detail.get("why") == "supplement")
    slips.issue(ctx, slips.supplement_request(ctx, code, payload_of(ctx, code), clock.parse(row.received_at),
                                              step_id, reason, asking, due, max(1, rounds)))


def supplement(ctx: NodeContext, code: DossierCode, files: list[dossiers.Supplement]) -> list[str]:
    """The applicant brought what a step asked for: the documents join the dossier, the clock runs
    again, and each waiting step resumes with them (sent again to its performer); the deadlines
    move by the working days the dossier waited. Returns where the dossier went."""
    if not files:
        raise InvalidInput(f"a supplement of {code} brings at least one file")
    with ctx.store.transaction():
        row = _dossier(ctx, code)
        if code.agency != ctx.agency:
            raise InvalidInput(f"dossier {code} was received at {code.agency}: the applicant supplements it there")
        if row.state is not DossierState.SUPPLEMENT_REQUESTED:
            raise InvalidInput(f"dossier {code} is {row.state}: no step asked for more documents")
        at = clock.now()
        payload = dossiers.add_documents(payload_of(ctx, code), files)
        dossiers.load(etree.tostring(payload), f"dossier {code} with the supplement")  # still a valid dossier
        waiting = [s for s in ctx.store.steps(str(code)) if s.state is StepState.WAITING]
        upcoming = {item.step.id: item.due for item in _next(ctx, row)}
        days = resume_clock(ctx, code, at, "supplement", waiting[0].step if waiting else None,
                            {"documents": str(len(files))})
        ctx.store.replace_payload(str(code), etree.tostring(payload))
        dues = {step.step: _later(ctx, step.due or _iso(upcoming.get(step.step)), days) for step in waiting}
        return [_resume_waiting(ctx, code, step.step, step.agency, dues[step.step], payload, at, len(files))
                for step in waiting]


def _resume_waiting(ctx: NodeContext, code: DossierCode, step_id: str, agency: str, due: str | None,
                    payload: etree._Element, at: dt.datetime, count: int) -> str:
    if agency == str(ctx.agency):
        ctx.store.resume_step(str(code), step_id, due)
        return f"{step_id} (here)"
    body = with_control_row(payload, at, ctx.agency, AgencyCode(agency),
                             f"supplement for {step_id}: {count} document(s) added")
    header = Header(kind=Kind.TRANSFER, sender=ctx.agency, recipient=AgencyCode(agency), dossier=code,
                    procedure=procedure_of(ctx, code).code, step=step_id, created=at, trace=(Hop(ctx.agency, at),))
    enqueue(ctx, header, body, Event.SEALED, {"supplement": str(count)})
    ctx.store.hand_over(str(code), step_id, StepState.SENT)
    ctx.store.set_due(str(code), step_id, due)
    return f"{step_id} → {agency}"


def resume_after_supplement(ctx: NodeContext, code: DossierCode, step_id: str, at: dt.datetime) -> str | None:
    """At the step that asked: the supplement came; the step is ready again, due later by the
    working days the dossier waited. Returns its new due date."""
    step = ctx.store.step(str(code), step_id)
    days = resume_clock(ctx, code, at, "supplement", step_id)
    due = _later(ctx, step.due if step else None, days)
    ctx.store.resume_step(str(code), step_id, due)
    return due


def resume_clock(ctx: NodeContext, code: DossierCode, at: dt.datetime, why: str, step_id: str | None,
                 detail: dict[str, str] | None = None) -> int:
    """The dossier's clock runs again; returns the working days it stood still (0 if it ran)."""
    row = _dossier(ctx, code)
    if row.paused_since is None:
        return 0
    calendar = ctx.rules.calendar
    since = clock.parse(row.paused_since)
    days = max(0, calendar.working_days_between(calendar.local(since).date(), calendar.local(at).date()))
    ctx.store.resume(str(code), days)
    ctx.record(ctx.entry(Event.RESUMED, dossier=str(code), procedure=row.procedure, step=step_id, time=at,
                         detail={"why": why, "paused_days": str(days), **(detail or {})}))
    return days


def _later(ctx: NodeContext, due: str | None, days: int) -> str | None:
    if due is None or days == 0:
        return due
    return ctx.rules.calendar.add(dt.date.fromisoformat(due), days).isoformat()


def _iso(day: dt.date | None) -> str | None:
    return day.isoformat() if day else None


def _next(ctx: NodeContext, row: DossierRow) -> list[NextStep]:
    done = {step: clock.parse(at) for step, at in ctx.store.done_steps(row.code).items()}
    return ctx.rules.next_steps(ProcedureCode(row.procedure), AgencyCode(row.origin), clock.parse(row.received_at),
                                done)


def _participants(ctx: NodeContext, code: DossierCode, spare: AgencyCode | None) -> list[AgencyCode]:
    """Every other agency that took part in the dossier or holds it, as the origin knows: those its
    steps were handed to, and those that sent it a status."""
    taken = {s.agency for s in ctx.store.steps(str(code))
             if s.state in (StepState.SENT, StepState.RECEIVED, StepState.DONE)}
    taken |= {s.sender for s in ctx.store.statuses(str(code))}
    taken -= {str(ctx.agency), str(spare)}
    return [AgencyCode(agency) for agency in sorted(taken)]


def _dependents(ctx: NodeContext, code: DossierCode, step_id: str) -> list[str]:
    return [s.id for s in procedure_of(ctx, code).steps if step_id in s.after]


def _hand_off(ctx: NodeContext, code: DossierCode, done_step: str, at: dt.datetime,
              payload: etree._Element) -> list[str]:
    """Send the dossier to the performer of every step that waits on ``done_step``; a step this
    node performs itself becomes ready here once all its prerequisites are done."""
    procedure = procedure_of(ctx, code)
    route = ctx.rules.route(procedure.code, code.agency, received_at(ctx, code))
    sent = []
    for step_id in _dependents(ctx, code, done_step):
        agency = performer(ctx, code, step_id, route)
        if agency == ctx.agency:
            refresh_ready(ctx, code)
            sent.append(f"{step_id} (here)")
            continue
        sealed = clock.now()  # the signature's time, which certificates are checked at; ``at`` may be long past
        body = with_control_row(payload, at, ctx.agency, agency, f"{done_step} done; hand-off for {step_id}")
        header = Header(kind=Kind.TRANSFER, sender=ctx.agency, recipient=agency, dossier=code,
                        procedure=procedure.code, step=step_id, created=sealed,
                        trace=(Hop(ctx.agency, at),))  # when this agency finished: the next deadline counts from it
        enqueue(ctx, header, body, Event.SEALED)
        ctx.store.hand_over(str(code), step_id, StepState.SENT)
        sent.append(f"{step_id} → {agency}")
    return sent


def performer(ctx: NodeContext, code: DossierCode, step_id: str, route: Mapping[str, AgencyCode]) -> AgencyCode:
    """Who performs a step now: the agency the dossier's route names, or, once that agency is
    abolished, its successor for the dossier's origin (audited as a re-route, the step reassigned)."""
    planned = route[step_id]
    now = clock.now()
    actual = ctx.rules.successor(planned, now, code.agency)
    if actual != planned:
        step = ctx.store.step(str(code), step_id)
        if step is None or step.agency != str(actual):
            ctx.store.reassign(str(code), step_id, str(actual))
            why = f"{planned} ended on {ctx.rules.agencies[planned].end}"
            ctx.record(ctx.entry(Event.REROUTED, dossier=str(code), procedure=str(procedure_of(ctx, code).code),
                                 step=step_id, counterpart=str(actual), time=now,
                                 detail={"from": str(planned), "to": str(actual), "why": why}))
    return actual


def with_control_row(payload: etree._Element, at: dt.datetime, sender: AgencyCode, receiver: AgencyCode,
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


def enqueue(ctx: NodeContext, header: Header, payload: etree._Element, event: Event | None,
            detail: dict[str, str] | None = None) -> str:
    """Seal an envelope into the outbox, in the caller's transaction; audit it as ``event``."""
    if header.config_version is None:
        header = replace(header, config_version=active_bundle_version(ctx.config))
    data = ctx.signer.seal(header, payload, encrypt_for=_encrypt_for(ctx, header))
    digest = hashlib.sha256(data).hexdigest()
    dossier = str(header.dossier) if header.dossier else None
    ctx.store.enqueue(header.message_id, str(header.recipient), header.kind.value, dossier, header.step, data,
                      digest)
    ctx.wake_after_commit()
    if event is not None:
        ctx.record(ctx.entry(event, dossier=dossier, procedure=str(header.procedure) if header.procedure else None,
                             step=header.step, message_id=header.message_id, counterpart=str(header.recipient),
                             envelope_sha256=digest, time=header.created, **({"detail": detail} if detail else {})))
    return header.message_id


def _encrypt_for(ctx: NodeContext, header: Header) -> RecipientCertificate | None:
    """The recipient's certificate a transfer's dossier is encrypted to (personal data: names,
    identity numbers, addresses), when this node has one still valid; receipts, statuses and
    bundles carry none and travel in clear."""
    if header.kind is not Kind.TRANSFER or ctx.config.encrypt == "never":
        return None
    der = ctx.store.peer_certificate(str(header.recipient), clock.now().timestamp())
    if der is None and ctx.config.encrypt == "always":
        raise RecipientUnknown(f"no certificate of {header.recipient} to encrypt the dossier to, and "
                               "[privacy] encrypt is \"always\": install a configuration bundle carrying it "
                               "(`exchange config publish --certs`)")
    return _recipient(der) if der else None


@functools.lru_cache(maxsize=1024)
def _recipient(der: bytes) -> RecipientCertificate:
    """A peer's certificate read once, not once per transfer (the same few peers again and again)."""
    return RecipientCertificate.of(x509.load_der_x509_certificate(der))


def _send_status(ctx: NodeContext, code: DossierCode, step_id: str, exchange_status: ExchangeStatus,
                 dossier_status: DossierStatus, at: dt.datetime, note: str, late: tuple[str, dt.date] | None = None, *,
                 recipient: AgencyCode | None = None, reason: str | None = None,
                 final: DossierState | None = None) -> None:
    apology, new_date = late if late else (None, None)  # the late agency's apology slip says the same
    update = StatusUpdate(code, ctx.agency, exchange_status, dossier_status, step=step_id, description=note,
                          timestamp=at, apology=apology, new_due_date=new_date, reason=reason,
                          final=final.value if final else None)
    header = Header(kind=Kind.STATUS, sender=ctx.agency, recipient=recipient or code.agency, dossier=code,
                    procedure=procedure_of(ctx, code).code, step=step_id, created=clock.now())
    detail = {**({"final": final.value} if final else {}), **({"reason": reason[:300]} if reason else {})}
    enqueue(ctx, header, status_element(update), Event.STATUS_SENT, detail)


# Steps becoming ready --------------------------------------------------------------------

def refresh_ready(ctx: NodeContext, code: DossierCode) -> dict[str, str]:
    """Mark this node's steps whose prerequisites are all done as ready, with their due dates."""
    row = _dossier(ctx, code)
    dues = {}
    now = clock.now()
    for item in _next(ctx, row):
        if not item.step.after:
            continue  # the desk's receipt: done when the dossier was submitted, wherever that was
        if ctx.rules.successor(item.agency, now, code.agency) != ctx.agency:
            continue
        if item.agency != ctx.agency:  # this node took the step over from an abolished agency
            performer(ctx, code, item.step.id, {item.step.id: item.agency})
        before = ctx.store.step(str(code), item.step.id)
        due = item.due.isoformat() if item.due else None
        ctx.store.make_ready(str(code), item.step.id, str(ctx.agency), due)
        if due:
            dues[item.step.id] = due
        if item.step.paused and row.state is DossierState.PROCESSING and (before is None or
                                                                          before.state is StepState.PENDING):
            _pause_for_fee(ctx, code, item.step.id)
    return dues


def _pause_for_fee(ctx: NodeContext, code: DossierCode, step_id: str) -> None:
    """A step that waits on the applicant (a fee, a financial obligation) became ready: the clock stops."""
    at = clock.now()
    ctx.store.pause(str(code), DossierState.PAUSED, utc(at))
    ctx.record(ctx.entry(Event.PAUSED, dossier=str(code), procedure=str(procedure_of(ctx, code).code), step=step_id,
                         time=at, detail={"why": "fee"}))


# Helpers ----------------------------------------------------------------------------------

def _dossier(ctx: NodeContext, code: DossierCode) -> DossierRow:
    row = ctx.store.dossier(str(code))
    if row is None:
        raise UnknownDossier(f"this node knows no dossier {code}")
    return row


def procedure_of(ctx: NodeContext, code: DossierCode) -> Procedure:
    """The procedure a dossier held here follows: the version in force when its desk received it
    (a dossier keeps its procedure and deadlines across a reorganisation)."""
    row = _dossier(ctx, code)
    return ctx.rules.procedure(ProcedureCode(row.procedure), clock.parse(row.received_at))


def received_at(ctx: NodeContext, code: DossierCode) -> dt.datetime:
    return clock.parse(_dossier(ctx, code).received_at)


def payload_of(ctx: NodeContext, code: DossierCode) -> etree._Element:
    data = ctx.store.dossier_payload(str(code))
    if data is None:
        raise UnknownDossier(f"this node knows no dossier {code}")
    return safexml.parse(data, source=f"stored dossier {code}")
