"""What arrives from peers: a window of envelopes verified, authorized by the rules,
de-duplicated and recorded in one transaction, with one receipt per sender queued in the same
transaction. The daemon acks the window only after this commits.

Checks, in order, each one a refusal with its reason code: the envelope opens (schema,
signature, trust, sender); it is addressed to this node; it is not known already (a known one
gets its receipt again and nothing else); the rules name its sender for its step.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import structlog
from cryptography.hazmat.primitives import serialization
from lxml import etree

from exchange import clock
from exchange.audit.checkpoints import Verifier, check_attestation, origin_for
from exchange.audit.entries import Event
from exchange.audit.witness import Witness
from exchange.clock import utc
from exchange.codes import AgencyCode, DossierCode, ProcedureCode
from exchange.envelope import dossier as dossiers
from exchange.envelope.messages import (
    Ack,
    DossierStatus,
    Witnessed,
    read_acks,
    read_config_version,
    read_witnessed,
    receipt_element,
)
from exchange.envelope.messages import Outcome as ReceiptOutcome
from exchange.envelope.model import Header, Kind, VerifiedEnvelope
from exchange.errors import (
    AgencyAbolished,
    BundleRefused,
    ConfigError,
    ConfigMismatch,
    InvalidEnvelope,
    NotAuthorized,
    RoutingError,
    StoreError,
    Unverifiable,
)
from exchange.node import configuration, slips
from exchange.node.config import active_bundle_version
from exchange.node.context import NodeContext
from exchange.node.verifiers import Verdict
from exchange.node.workflow import (
    end_dossier,
    enqueue,
    learn_end,
    procedure_of,
    received_at,
    refresh_ready,
    resume_after_supplement,
    supplement_requested,
)
from exchange.store import audit as audit_tables
from exchange.store.node import CONFIG_MISMATCH, DossierRow, InboxRecord, OutboxRow, StatusRow
from exchange.store.states import DossierState, OutboxState, Outcome, Result, StepState
from exchange.xml import safexml
from exchange.xml.names import STATUS_NS, q

log = structlog.get_logger(__name__)

Acks = dict[AgencyCode, list[Ack]]
"""The receipts a window owes, by the sender they go back to."""

CONFIG_RETRY_S = 300.0
"""A transfer refused for a configuration mismatch goes again this often until the bundles agree."""
INTERNAL_ERROR = "internal-error"
"""The reason code of a refusal for a fault of this node's own, not of the envelope."""


@dataclass(frozen=True)
class Handled:
    """What became of one delivery, and why when it was refused."""

    outcome: Outcome
    reason: str = ""


def document(element: etree._Element) -> bytes:
    """A payload as the agency system gets it: UTF-8 with an XML declaration, Vietnamese written
    as itself (lxml's default, ASCII, writes Nguyễn as Nguy&#7877;n)."""
    return bytes(etree.tostring(element, encoding="UTF-8", xml_declaration=True))


def receive_batch(ctx: NodeContext, bodies: list[tuple[str, bytes]],
                  verdicts: Sequence[Verdict] | None = None) -> list[Handled]:
    """Verify, authorize, de-duplicate and record a window of envelopes in one transaction; queue one
    receipt per sender covering all its envelopes of the window. ``verdicts``: what worker
    processes found of each envelope (``node.verifiers``), where they judged it."""
    acks: Acks = defaultdict(list)
    results = []
    with ctx.store.transaction():
        for (message_id, body), verdict in zip(bodies, verdicts or [None] * len(bodies), strict=True):
            results.append(_receive_one(ctx, message_id, body, acks, verdict))
        for sender, items in acks.items():
            _send_receipt(ctx, sender, items)
    return results


def _receive_one(ctx: NodeContext, message_id: str, body: bytes, acks: Acks, verdict: Verdict = None) -> Handled:
    # The very bytes recorded under this id were verified when first taken in: their receipt
    # again, without paying for verification. Other bytes under a known id are verified (and
    # refused, or taken in, on their own merits) below.
    recorded = ctx.store.recorded_copy(message_id)
    if recorded is not None and recorded[0] == hashlib.sha256(body).hexdigest():
        _resend_receipt(ctx, recorded[1])
        return Handled(Outcome.DUPLICATE)
    try:
        env = _open(ctx, message_id, body, verdict)
        if env.header.recipient != ctx.agency:
            raise NotAuthorized(f"the envelope is addressed to {env.header.recipient}, not to this node")
    except InvalidEnvelope as exc:
        return _refuse_unverified(ctx, message_id, body, exc, acks)
    known = ctx.store.known(env.header.message_id, digest=env.envelope_digest)
    if known is not None:
        _resend_receipt(ctx, known[1])
        return Handled(Outcome.DUPLICATE)
    _learn_certificate(ctx, env)
    try:
        if env.header.kind is Kind.RECEIPT:
            _take_receipt(ctx, env)
            return Handled(Outcome.ACCEPTED)
        at = None
        if env.header.kind is Kind.CONFIGURATION:
            _take_configuration(ctx, env)
        else:
            at = _received_at(ctx, env)
            _authorize(ctx, env, at)
    except InvalidEnvelope as exc:
        return _refuse(ctx, env, exc, acks)
    if env.header.kind is Kind.TRANSFER:
        _take_transfer(ctx, env, at)
    elif env.header.kind is Kind.STATUS:
        _take_status(ctx, env)
    acks[env.header.sender].append(Ack(env.header.message_id, env.envelope_digest, ReceiptOutcome.ACCEPTED))
    return Handled(Outcome.ACCEPTED)


def _open(ctx: NodeContext, message_id: str, body: bytes, verdict: Verdict) -> VerifiedEnvelope:
    """The envelope verified: by a worker (its verdict), or here."""
    source = f"message {message_id}"
    if isinstance(verdict, InvalidEnvelope):
        raise verdict
    if verdict is not None:
        return verdict.admit(ctx.opener, source)
    return ctx.opener.open(body, source=source)


def _learn_certificate(ctx: NodeContext, env: VerifiedEnvelope) -> None:
    """The sender's certificate, which the trust store just accepted: what this node encrypts the
    dossiers it sends that agency to (a renewed one replaces it)."""
    cert = env.signer_certificate
    sender = str(env.header.sender)
    if cert is not None and not ctx.store.learnt_certificate(sender, env.signer_fingerprint):
        ctx.store.learn_certificate(sender, cert.public_bytes(serialization.Encoding.DER),
                                    cert.not_valid_after_utc.timestamp(), env.signer_fingerprint)


def _routed(header: Header) -> tuple[DossierCode, ProcedureCode, str]:
    """The dossier, procedure and step of a transfer or status (the schema requires all three)."""
    assert header.dossier is not None
    assert header.procedure is not None
    assert header.step is not None
    return header.dossier, header.procedure, header.step


def _authorize(ctx: NodeContext, env: VerifiedEnvelope, at: dt.datetime | None) -> None:
    """``at``: when the dossier's desk received it (``_received_at``): the rules then route it."""
    header = env.header
    code, procedure, step = _routed(header)
    rules = ctx.rules
    if header.kind is Kind.TRANSFER:
        _check_in_force(ctx, code)
        if _is_supplement(ctx, header):
            return  # the origin's desk sends back the step that asked it for documents
        decision = rules.authorize(header.sender, ctx.agency, procedure, step, code.agency, at)
        if not decision:
            taken_over = rules.authorize_successor(header.sender, ctx.agency, procedure, step, code.agency, at,
                                                   clock.now())
            if not taken_over:
                raise _not_authorized(ctx, header, decision.reason)
        return
    try:
        route = rules.participants(procedure, code.agency, at, clock.now())
    except RoutingError as exc:
        raise NotAuthorized(str(exc)) from None
    if code.agency == ctx.agency:  # to the origin: from any agency on the route (or its successor)
        if header.sender not in route:
            raise NotAuthorized(f"{header.sender} is not on the route of dossier {code}")
    elif header.sender != code.agency or ctx.agency not in route:  # from the origin to a participant
        raise NotAuthorized(f"a status of dossier {code} comes from its origin {code.agency} to an agency on its "
                            f"route, or from the route to the origin; not from {header.sender} to {ctx.agency}")


# Taking in what was accepted -------------------------------------------------------------

def _not_authorized(ctx: NodeContext, header: Header, reason: str) -> NotAuthorized:
    """The refusal of a transfer the rules here do not name: a configuration mismatch when the
    sender runs another bundle than this node (it sends again once both run the same)."""
    mine = active_bundle_version(ctx.config)
    if header.config_version == mine:
        return NotAuthorized(reason)
    return ConfigMismatch(f"{reason}; the sender runs configuration version {header.config_version or 'none'}, "
                          f"this node version {mine or 'none'}")


def _check_in_force(ctx: NodeContext, code: DossierCode) -> None:
    """An agency abolished since takes no new work: its successor does (``rules migrate``)."""
    now = clock.now()
    agency = ctx.rules.abolished(ctx.agency, now)
    if agency is None:
        return
    heir = ctx.rules.successor(ctx.agency, now, code.agency) if agency.successors else None
    raise AgencyAbolished(f"{ctx.agency} ({agency.name}) ended on {agency.end}"
                          + (f"; {heir} ({ctx.rules.agencies[heir].name}) does its work" if heir else ""))


def _received_at(ctx: NodeContext, env: VerifiedEnvelope) -> dt.datetime | None:
    """When the dossier's desk received it: the rules in force then route it. From the dossier
    held here, else from a transfer's payload; None (the rules as they stand) for a status about
    a dossier this node never held."""
    held = ctx.store.dossier(str(env.header.dossier))
    if held is not None and held.received_at:
        return clock.parse(held.received_at)
    if env.header.kind is Kind.TRANSFER:
        try:
            return dossiers.received_at(env.payload)
        except ValueError:
            return None
    return None


def _is_supplement(ctx: NodeContext, header: Header) -> bool:
    """A transfer from the dossier's origin of a step this node performs and that waits for the
    applicant's supplement: the route is the one the step was on, the state says it asked."""
    code, _, step = _routed(header)
    if header.sender != code.agency:
        return False
    held = ctx.store.dossier(str(code))
    waiting = ctx.store.step(str(code), step)
    return (held is not None and held.state is DossierState.SUPPLEMENT_REQUESTED and waiting is not None
            and waiting.state is StepState.WAITING and waiting.agency == str(ctx.agency))


def _take_transfer(ctx: NodeContext, env: VerifiedEnvelope, at: dt.datetime | None) -> None:
    header = env.header
    code, procedure, step = _routed(header)
    held = ctx.store.dossier(str(code))
    if held is not None and _is_supplement(ctx, header):
        _take_supplement(ctx, env)
        return
    stored = ctx.store.dossier_payload(str(code)) if held is not None else None
    merged = dossiers.merge(safexml.parse(stored), env.payload) if stored else env.payload  # branches meet here
    payload = document(merged)
    if held is not None:
        ctx.store.replace_payload(str(code), payload)
    else:  # ``at`` was read from this payload (``_received_at``): not read twice
        received = at if at is not None else dossiers.received_at(env.payload)
        ctx.store.add_dossier(DossierRow(str(code), str(procedure), str(code.agency), utc(received),
                                         DossierState.PROCESSING), payload)
    route = ctx.rules.route(procedure, code.agency, at)
    finished = next((hop.at for hop in reversed(header.trace) if hop.agency == header.sender), header.created)
    now = clock.now()
    handed_over = header.sender == route[step]  # its abolished performer hands the ready step over
    for before in ctx.rules.procedure(procedure, at).step(step).after:
        if handed_over or header.sender in (route[before], ctx.rules.successor(route[before], now, code.agency)):
            ctx.store.finish_step(str(code), before, str(header.sender), utc(min(finished, header.created)))
    ctx.store.add_steps(str(code), [(step, str(ctx.agency))])
    if held is not None and held.state.final:  # it ended before its transfer came: nothing to do here
        ctx.store.cancel_steps(str(code))
        due = {}
    else:
        due = refresh_ready(ctx, code)
    waiting = _still_waiting_for(ctx, code, step)
    # At a join the agency system gets the dossier once, merged, with the transfer that makes the
    # step ready; the transfers before it are recorded and receipted but hold nothing to deliver.
    _record_inbox(ctx, env, Outcome.ACCEPTED, None if waiting else payload, delivered=bool(waiting))
    detail = {**({"due": due[step]} if step in due else {}), **({"held": f"until {', '.join(waiting)}"}
                                                                  if waiting else {})}
    ctx.record(ctx.entry(Event.RECEIVED, dossier=str(code), procedure=str(procedure), step=step,
                         message_id=header.message_id, counterpart=str(header.sender),
                         envelope_sha256=env.envelope_digest, detail=detail))


def _still_waiting_for(ctx: NodeContext, code: DossierCode, step: str) -> list[str]:
    """The other branches a join step still waits for when one branch's transfer comes. None, or a
    branch this node works itself (its agency system needs the dossier now): deliver now."""
    row = ctx.store.step(str(code), step)
    if row is None or row.state is not StepState.PENDING:
        return []
    done = ctx.store.done_steps(str(code))
    procedure = procedure_of(ctx, code)
    route = ctx.rules.route(procedure.code, code.agency, received_at(ctx, code))
    missing = [before for before in procedure.step(step).after if before not in done]
    now = clock.now()
    mine = [b for b in missing if ctx.rules.successor(route[b], now, code.agency) == ctx.agency]
    return [] if mine else missing


def _take_supplement(ctx: NodeContext, env: VerifiedEnvelope) -> None:
    """The applicant's supplement for the step here that asked: merged into the dossier held, the
    step ready again (its deadline moved by the days the dossier waited), delivered once."""
    header = env.header
    code, procedure, step = _routed(header)
    stored = ctx.store.dossier_payload(str(code))
    payload = document(dossiers.merge(safexml.parse(stored), env.payload) if stored else env.payload)
    ctx.store.replace_payload(str(code), payload)
    due = resume_after_supplement(ctx, code, step, header.created)
    _record_inbox(ctx, env, Outcome.ACCEPTED, payload)
    ctx.record(ctx.entry(Event.RECEIVED, dossier=str(code), procedure=str(procedure), step=step,
                         message_id=header.message_id, counterpart=str(header.sender),
                         envelope_sha256=env.envelope_digest,
                         detail={"supplement": "yes", **({"due": due} if due else {})}))


def _take_status(ctx: NodeContext, env: VerifiedEnvelope) -> None:
    payload, header = env.payload, env.header
    exchange_status = payload.findtext(q("ExchangeStatus", STATUS_NS)) or ""
    ctx.store.add_status(StatusRow(str(header.dossier), str(header.sender), payload.findtext(q("Step", STATUS_NS)),
                                   exchange_status, int(payload.findtext(q("DossierStatus", STATUS_NS)) or 0),
                                   payload.findtext(q("Timestamp", STATUS_NS)) or "",
                                   payload.findtext(q("Description", STATUS_NS))))
    _record_inbox(ctx, env, Outcome.ACCEPTED, document(payload))
    slips.on_status(ctx, header.dossier, header.sender, payload)  # an apology becomes the desk's slip
    final = payload.findtext(q("FinalState", STATUS_NS))
    ctx.record(ctx.entry(Event.STATUS_RECEIVED, dossier=str(header.dossier), procedure=str(header.procedure),
                         step=header.step, message_id=header.message_id, counterpart=str(header.sender),
                         envelope_sha256=env.envelope_digest,
                         detail={"status": exchange_status, **({"final": final} if final else {})}))
    at = payload.findtext(q("Timestamp", STATUS_NS)) or utc(header.created)
    reason = payload.findtext(q("Reason", STATUS_NS))
    if final:
        _take_final(ctx, env, DossierState(final), reason, at)
    elif header.dossier is not None and header.dossier.agency == ctx.agency and \
            payload.findtext(q("DossierStatus", STATUS_NS)) == str(int(DossierStatus.SUPPLEMENT_REQUESTED)):
        supplement_requested(ctx, header.dossier, header.step or "?", header.sender, clock.parse(at), reason)


def _take_configuration(ctx: NodeContext, env: VerifiedEnvelope) -> None:
    """A bundle broadcast by the authority's node: whoever carried it, only the authority's own
    signature (checked against this node's anchor) makes it installable. Kept and audited here;
    the housekeeping applies it at its time. A refused bundle is refused with its reason code."""
    header = env.header
    try:
        data = base64.b64decode("".join((env.payload.text or "").split()), validate=True)
        configuration.take(ctx, data, f"bundle from {header.sender} (message {header.message_id})")
    except (binascii.Error, BundleRefused, ConfigError) as exc:
        refusal = InvalidEnvelope(str(exc))
        refusal.reason_code = getattr(exc, "reason_code", "config-malformed")
        raise refusal from None
    _record_inbox(ctx, env, Outcome.ACCEPTED, None, delivered=True)
    ctx.record(ctx.entry(Event.RECEIVED, message_id=header.message_id, counterpart=str(header.sender),
                         envelope_sha256=env.envelope_digest, detail={"bundle": env.payload.get("version", "")}))


def _take_final(ctx: NodeContext, env: VerifiedEnvelope, final: DossierState, reason: str | None, at: str) -> None:
    """A status that ends the dossier. At the origin, from the step that ended it (a refusal, or the
    last step done elsewhere): the first end wins, and the origin tells every other participant.
    At a participant, from the origin: its word is final, whatever this node thought."""
    header = env.header
    code, procedure, step = _routed(header)
    row = ctx.store.dossier(str(code))
    if code.agency == ctx.agency:
        if row is None or row.state.final or final is DossierState.WITHDRAWN:
            return
        result = Result.REFUSED if final is DossierState.REFUSED else Result.ACCEPTED
        ctx.store.finish_step(str(code), step, str(header.sender), at, result)
        end_dossier(ctx, code, final, step, clock.parse(at), reason, spare=header.sender)
        return
    if row is None:  # the notice overtook the transfer: the dossier is known here as ended
        ctx.store.add_dossier(DossierRow(str(code), str(procedure), str(code.agency), at, DossierState.PROCESSING),
                              b"")
    learn_end(ctx, code, final, step, clock.parse(at), reason)


def _take_receipt(ctx: NodeContext, env: VerifiedEnvelope) -> None:
    for ack in read_acks(env.payload):
        row = ctx.store.outbox_by_message(ack.message_id)
        if row is None or row.recipient != str(env.header.sender):
            log.warning("receipt.unknown", message=ack.message_id, sender=str(env.header.sender))
            continue
        if _binds(ctx, env, row, ack):
            _settle(ctx, env, row, ack)
    _observe(ctx, env)
    _record_inbox(ctx, env, Outcome.ACCEPTED, None, delivered=True)


def _binds(ctx: NodeContext, env: VerifiedEnvelope, row: OutboxRow, ack: Ack) -> bool:
    """Whether a receipt settles the transfer it names. A receipt binds to the bytes it judged: a
    refusal of other bytes than this node sent (a copy altered in transit) is not final, and the
    row stays due for the genuine copy. An acceptance of other bytes is final: only an envelope
    this node signed, under this message id, can verify and be accepted, so what the peer took in
    is what this node signed; the bytes differed only outside the signature (a comment). It is
    logged and audited all the same."""
    if row.envelope_sha256 == ack.envelope_digest:
        return True
    log.warning("receipt.digest_mismatch", message=ack.message_id, peer=str(env.header.sender),
                outcome=ack.outcome.value, sent=row.envelope_sha256, judged=ack.envelope_digest)
    if ack.outcome is ReceiptOutcome.ACCEPTED:
        return True
    ctx.record(ctx.entry(Event.RECEIPT_RECEIVED, dossier=row.dossier, step=row.step, message_id=ack.message_id,
                         counterpart=str(env.header.sender), envelope_sha256=ack.envelope_digest,
                         detail={"outcome": ack.outcome.value, "reason": ack.reason_code or "",
                                 "final": "no: the receipt judged other bytes than were sent"}))
    return False


def _settle(ctx: NodeContext, env: VerifiedEnvelope, row: OutboxRow, ack: Ack) -> None:
    if row.state is OutboxState.PENDING:
        # The node died after the broker confirmed and before it marked the row: the receipt
        # proves the publication, which the audit log must still show.
        ctx.record(ctx.entry(Event.PUBLISHED, dossier=row.dossier, step=row.step, message_id=row.message_id,
                             counterpart=row.recipient, envelope_sha256=row.envelope_sha256,
                             detail={"attempt": "recovered"}))
    accepted = ack.outcome is ReceiptOutcome.ACCEPTED
    if ack.reason_code == CONFIG_MISMATCH:
        _wait_for_configuration(ctx, env, row, ack)
        return
    ctx.store.settle(row.id, OutboxState.ACKNOWLEDGED if accepted else OutboxState.REFUSED)
    if accepted and row.kind == Kind.TRANSFER and row.dossier and row.step:
        ctx.store.hand_over(row.dossier, row.step, StepState.RECEIVED)
    detail = {"outcome": ack.outcome.value, **({"reason": ack.reason_code} if ack.reason_code else {})}
    if row.envelope_sha256 != ack.envelope_digest:
        detail["judged"] = ack.envelope_digest
    ctx.record(ctx.entry(Event.RECEIPT_RECEIVED, dossier=row.dossier, step=row.step, message_id=ack.message_id,
                         counterpart=str(env.header.sender), envelope_sha256=row.envelope_sha256, detail=detail))
    if not accepted:
        log.error("transfer.refused_by_peer", message=ack.message_id, peer=str(env.header.sender),
                  reason=ack.reason_code, text=ack.reason_text)


def _wait_for_configuration(ctx: NodeContext, env: VerifiedEnvelope, row: OutboxRow, ack: Ack) -> None:
    """Refused by a peer that runs another configuration bundle: not final. The transfer goes
    again at once when this node applies a new bundle, and every ``CONFIG_RETRY_S`` meanwhile
    (the peer may get the newer one first)."""
    ctx.store.wait_for_configuration(row.id, time.time() + CONFIG_RETRY_S, ack.reason_text or "")
    theirs = read_config_version(env.payload)
    ctx.record(ctx.entry(Event.RECEIPT_RECEIVED, dossier=row.dossier, step=row.step, message_id=ack.message_id,
                         counterpart=str(env.header.sender), envelope_sha256=row.envelope_sha256,
                         detail={"outcome": ack.outcome.value, "reason": CONFIG_MISMATCH,
                                 "peer_config": str(theirs or "none"),
                                 "config": str(active_bundle_version(ctx.config) or "none"),
                                 "final": "no: sent again once both run the same configuration"}))
    log.warning("transfer.config_mismatch", message=ack.message_id, peer=str(env.header.sender),
                peer_config=theirs, config=active_bundle_version(ctx.config), text=ack.reason_text)


def _record_inbox(ctx: NodeContext, env: VerifiedEnvelope, outcome: Outcome, payload: bytes | None,
                  reason: str | None = None, delivered: bool = False) -> None:
    header = env.header
    ctx.store.record_inbox(InboxRecord(header.message_id, str(header.sender), header.kind.value,
                                       str(header.dossier) if header.dossier else None, header.step,
                                       env.envelope_digest, outcome, payload, reason, delivered), time.time())


# Refusals ----------------------------------------------------------------------------------

def _refuse(ctx: NodeContext, env: VerifiedEnvelope, exc: InvalidEnvelope, acks: Acks) -> Handled:
    header = env.header
    if not isinstance(exc, ConfigMismatch):  # that refusal is not final: the same envelope is judged again
        _record_inbox(ctx, env, Outcome.REFUSED, None, reason=exc.reason_code)
    ctx.record(ctx.entry(Event.REFUSED, dossier=str(header.dossier) if header.dossier else None, step=header.step,
                         message_id=header.message_id, counterpart=str(header.sender),
                         envelope_sha256=env.envelope_digest,
                         detail={"reason": exc.reason_code, "text": exc.message[:300]}))
    acks[header.sender].append(Ack(header.message_id, env.envelope_digest, ReceiptOutcome.REFUSED,
                                   exc.reason_code, exc.message[:1000]))
    log.warning("envelope.refused", message=header.message_id, sender=str(header.sender), reason=exc.reason_code,
                text=exc.message)
    return Handled(Outcome.REFUSED, f"{exc.reason_code}: {exc.message}")


def _refuse_unverified(ctx: NodeContext, message_id: str, body: bytes, exc: InvalidEnvelope, acks: Acks) -> Handled:
    """A refusal of an envelope that did not verify: audited; a refusal receipt goes to the
    sender the envelope claims, when it names one, so an honest sender learns of its fault."""
    digest = hashlib.sha256(body).hexdigest()
    claimed = _claimed(body)
    ctx.record(ctx.entry(Event.REFUSED, message_id=message_id, envelope_sha256=digest,
                         counterpart=str(claimed[0]) if claimed else None,
                         detail={"reason": exc.reason_code, "text": exc.message[:300]}))
    if claimed is not None and claimed[0] != ctx.agency:
        acks[claimed[0]].append(Ack(claimed[1], digest, ReceiptOutcome.REFUSED, exc.reason_code, exc.message[:1000]))
    log.warning("envelope.refused", message=message_id, reason=exc.reason_code, text=exc.message)
    return Handled(Outcome.REFUSED, f"{exc.reason_code}: {exc.message}")


def refuse_internal(ctx: NodeContext, message_id: str, exc: Exception, body: bytes | None = None) -> Handled:
    """A delivery that broke the node's own code: refused as an internal error and audited, in its
    own transaction, so that the node goes on with the others. When the envelope names its sender
    and message id, a refusal receipt (``internal-error``) bound to its bytes goes back, so the
    sender stops retransmitting what would break this node again."""
    reason = f"{INTERNAL_ERROR}: {type(exc).__name__}: {exc}"[:500]
    digest = hashlib.sha256(body).hexdigest() if body is not None else None
    claimed = _claimed(body) if body is not None else None
    answer = claimed is not None and claimed[0] != ctx.agency
    try:
        _record_internal(ctx, message_id, digest, claimed if answer else None, reason)
    except StoreError:
        raise
    except Exception:  # noqa: BLE001 - the receipt is a courtesy: the refusal itself must be recorded
        log.exception("inbound.refusal_receipt_failed", message=message_id)
        _record_internal(ctx, message_id, digest, None, reason)
    return Handled(Outcome.REFUSED, reason)


def _record_internal(ctx: NodeContext, message_id: str, digest: str | None,
                     claimed: tuple[AgencyCode, str] | None, reason: str) -> None:
    with ctx.store.transaction():
        ctx.record(ctx.entry(Event.REFUSED, message_id=message_id, envelope_sha256=digest,
                             counterpart=str(claimed[0]) if claimed else None,
                             detail={"reason": INTERNAL_ERROR, "text": reason[:300]}))
        if claimed is not None and digest is not None:
            _send_receipt(ctx, claimed[0], [Ack(claimed[1], digest, ReceiptOutcome.REFUSED, INTERNAL_ERROR,
                                                "the recipient failed to process this envelope; "
                                                "its operator has it in the dead-letter queue")])


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


# Receipts and witnessing -----------------------------------------------------------------

def _send_receipt(ctx: NodeContext, sender: AgencyCode, acks: list[Ack]) -> None:
    header = Header(kind=Kind.RECEIPT, sender=ctx.agency, recipient=sender,
                    in_reply_to=acks[0].message_id if len(acks) == 1 else None)
    receipt = receipt_element(tuple(acks), _witnessed(ctx, sender), active_bundle_version(ctx.config))
    receipt_id = enqueue(ctx, header, receipt, None)
    ctx.store.set_receipt([ack.message_id for ack in acks], receipt_id)
    # One entry per acknowledged envelope, named by its id: what reconciliation matches; appended
    # together (one read of the tree's edge for the window, not one per envelope).
    ctx.record(*(ctx.entry(Event.RECEIPT_SENT, message_id=ack.message_id, counterpart=str(sender),
                           envelope_sha256=ack.envelope_digest,
                           detail={"outcome": ack.outcome.value, "receipt": receipt_id,
                                   **({"reason": ack.reason_code} if ack.reason_code else {})})
                 for ack in acks))


def _witnessed(ctx: NodeContext, peer: AgencyCode) -> Witnessed | None:
    """This node's latest checkpoint for a receipt, proven from the one last sent to ``peer``, with
    the checkpoint key and the agency key's attestation of it: every peer keeps our tree heads."""
    attachment = Witness(ctx.audit).attachment_for(str(peer), ctx.checkpointer.latest())
    if attachment is None:
        return None
    keys = audit_tables.key_records(ctx.store.conn)
    key = keys[-1] if keys else None
    return Witnessed(attachment.note, attachment.from_size, attachment.proof,
                     key.verifier if key else None, key.attestation if key else None)


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
        Witness(ctx.audit).observe(witnessed.note, verifier, witnessed.from_size, witnessed.proof)
    except Unverifiable as exc:  # a peer's bad checkpoint; damage to our own log is not swallowed here
        log.warning("witness.checkpoint_refused", peer=str(env.header.sender), error=str(exc))


def _resend_receipt(ctx: NodeContext, receipt_id: str | None) -> None:
    """A redelivered known message: send the same receipt again, deliver nothing."""
    if receipt_id and not ctx.store.resend_receipt(receipt_id):
        log.warning("receipt.not_resent", receipt=receipt_id, reason="dead-lettered; an operator may replay it")
