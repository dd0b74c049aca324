"""Receipt and status payloads: the two kinds of envelope that answer a transfer."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from enum import IntEnum, StrEnum

from lxml import etree

from exchange import clock
from exchange.clock import utc
from exchange.codes import AgencyCode, DossierCode
from exchange.xml.datatypes import parse_datetime
from exchange.xml.names import RECEIPT_NS, STATUS_NS, q


class Outcome(StrEnum):
    """A receipt's verdict on one envelope: taken in, or refused with a reason code."""

    ACCEPTED = "accepted"
    REFUSED = "refused"


class ExchangeStatus(StrEnum):
    """QCVN 102:2016 document-exchange status codes a receiver sends back."""

    ARRIVED = "01"
    REFUSED = "02"
    ACCEPTED = "03"
    ASSIGNED = "04"
    PROCESSING = "05"
    DONE = "06"


class DossierStatus(IntEnum):
    """National public-service portal dossier status (TrangThaiHoSo)."""

    REGISTERED = 1
    ACCEPTED = 2
    NOT_ACCEPTED = 3
    PROCESSING = 4
    SUPPLEMENT_REQUESTED = 5
    FINANCIAL_OBLIGATION = 6
    WITHDRAWN = 7
    STOPPED = 8
    PROCESSED = 9
    RESULT_RETURNED = 10


@dataclass(frozen=True, slots=True)
class Ack:
    """One envelope accepted or refused, named by message id and the digest of its bytes."""

    message_id: str
    envelope_digest: str
    outcome: Outcome
    reason_code: str | None = None
    reason_text: str | None = None
    received_at: dt.datetime = field(default_factory=clock.now)


def _sub(parent: etree._Element, ns: str, name: str, text: str | None) -> None:
    if text is not None:
        etree.SubElement(parent, q(name, ns)).text = text


@dataclass(frozen=True, slots=True)
class Witnessed:
    """The receiver's checkpoint a receipt carries, with a proof from the one it sent before."""

    note: str
    from_size: int | None = None
    proof: tuple[bytes, ...] = ()
    key: str | None = None
    attestation: str | None = None


def receipt_element(acks: tuple[Ack, ...], witnessed: Witnessed | None = None,
                    config_version: int | None = None) -> etree._Element:
    root = etree.Element(q("Receipt", RECEIPT_NS), nsmap={None: RECEIPT_NS},  # type: ignore[dict-item]
                         version="1")
    for ack in acks:
        el = etree.SubElement(root, q("Ack", RECEIPT_NS))
        _sub(el, RECEIPT_NS, "MessageId", ack.message_id)
        _sub(el, RECEIPT_NS, "EnvelopeDigest", ack.envelope_digest)
        _sub(el, RECEIPT_NS, "Outcome", ack.outcome.value)
        _sub(el, RECEIPT_NS, "ReasonCode", ack.reason_code)
        _sub(el, RECEIPT_NS, "ReasonText", ack.reason_text)
        _sub(el, RECEIPT_NS, "ReceivedAt", utc(ack.received_at))
    if config_version:
        _sub(root, RECEIPT_NS, "ConfigVersion", str(config_version))
    if witnessed is not None:
        _sub(root, RECEIPT_NS, "Checkpoint", witnessed.note)
        _sub(root, RECEIPT_NS, "CheckpointKey", witnessed.key)
        _sub(root, RECEIPT_NS, "KeyAttestation", witnessed.attestation)
        if witnessed.from_size:
            proof = etree.SubElement(root, q("ConsistencyProof", RECEIPT_NS),
                                     fromSize=str(witnessed.from_size))
            for value in witnessed.proof:
                _sub(proof, RECEIPT_NS, "Hash", value.hex())
    return root


def read_witnessed(receipt: etree._Element) -> Witnessed | None:
    """The checkpoint and proof a verified ``Receipt`` carries, if any."""
    note = receipt.findtext(q("Checkpoint", RECEIPT_NS))
    if note is None:
        return None
    key = receipt.findtext(q("CheckpointKey", RECEIPT_NS))
    attestation = receipt.findtext(q("KeyAttestation", RECEIPT_NS))
    proof_el = receipt.find(q("ConsistencyProof", RECEIPT_NS))
    if proof_el is None:
        return Witnessed(note, key=key, attestation=attestation)
    hashes = tuple(bytes.fromhex(h.text or "") for h in proof_el.iterfind(q("Hash", RECEIPT_NS)))
    return Witnessed(note, int(proof_el.get("fromSize", "0")), hashes, key, attestation)


def read_acks(receipt: etree._Element) -> tuple[Ack, ...]:
    """The acknowledgements of a verified ``Receipt`` payload."""
    def text(el: etree._Element, name: str) -> str | None:
        return el.findtext(q(name, RECEIPT_NS))

    return tuple(
        Ack(
            message_id=text(el, "MessageId") or "",
            envelope_digest=text(el, "EnvelopeDigest") or "",
            outcome=Outcome(text(el, "Outcome") or ""),
            reason_code=text(el, "ReasonCode"),
            reason_text=text(el, "ReasonText"),
            received_at=parse_datetime(text(el, "ReceivedAt") or ""),
        )
        for el in receipt.iterfind(q("Ack", RECEIPT_NS))
    )


@dataclass(frozen=True, slots=True)
class StatusUpdate:
    """Where a dossier stands, told by the agency handling it to the agency that sent it."""

    dossier: DossierCode
    sender: AgencyCode
    exchange_status: ExchangeStatus
    dossier_status: DossierStatus
    step: str | None = None
    response_for: str | None = None
    description: str | None = None
    staff: str | None = None
    timestamp: dt.datetime = field(default_factory=clock.now)
    apology: str | None = None
    new_due_date: dt.date | None = None
    reason: str | None = None
    """Why the dossier was refused or withdrawn, as the agency or the applicant gave it."""
    final: str | None = None
    """How the dossier ended (``completed``, ``refused``, ``withdrawn``), when this update ends it."""


def status_element(update: StatusUpdate) -> etree._Element:
    ns = STATUS_NS
    root = etree.Element(q("Status", ns), nsmap={None: ns}, version="1")  # type: ignore[dict-item]
    _sub(root, ns, "DossierCode", str(update.dossier))
    _sub(root, ns, "ResponseFor", update.response_for)
    _sub(root, ns, "From", str(update.sender))
    _sub(root, ns, "Step", update.step)
    _sub(root, ns, "ExchangeStatus", update.exchange_status.value)
    _sub(root, ns, "DossierStatus", str(update.dossier_status.value))
    _sub(root, ns, "Description", update.description)
    _sub(root, ns, "Timestamp", utc(update.timestamp))
    _sub(root, ns, "StaffInfo", update.staff)
    if update.apology is not None and update.new_due_date is not None:
        late = etree.SubElement(root, q("Late", ns))
        _sub(late, ns, "Apology", update.apology)
        _sub(late, ns, "NewDueDate", update.new_due_date.isoformat())
    _sub(root, ns, "Reason", update.reason)
    _sub(root, ns, "FinalState", update.final)
    return root


def read_config_version(receipt: etree._Element) -> int | None:
    """The configuration bundle version the receiver runs, as its receipt states it."""
    text = receipt.findtext(q("ConfigVersion", RECEIPT_NS))
    return int(text) if text else None
