"""Envelope value objects and their XML form (building and reading the header).

Signing and verification live in ``sealing``; this module only knows the shape.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import uuid
from dataclasses import dataclass, field
from enum import StrEnum

from cryptography import x509
from lxml import etree

from exchange import clock
from exchange.clock import utc
from exchange.codes import AgencyCode, DossierCode, ProcedureCode
from exchange.xml.datatypes import parse_datetime
from exchange.xml.names import BUNDLE_NS, DOSSIER_NS, ENV_NS, RECEIPT_NS, SHA256_URI, STATUS_NS, q

VERSION = "1"

DEFAULT_TTL = dt.timedelta(days=30)
"""A transfer that has not been delivered within a month needs a person, not a retry."""


class Kind(StrEnum):
    TRANSFER = "transfer"
    RECEIPT = "receipt"
    STATUS = "status"
    CONFIGURATION = "configuration"  # a configuration bundle, broadcast by the authority's node


PAYLOAD_OF_KIND = {
    Kind.TRANSFER: q("Dossier", DOSSIER_NS),
    Kind.RECEIPT: q("Receipt", RECEIPT_NS),
    Kind.STATUS: q("Status", STATUS_NS),
    Kind.CONFIGURATION: q("ConfigurationBundle", BUNDLE_NS),
}


def new_message_id() -> str:
    return str(uuid.uuid4())


def payload_digest(payload: etree._Element) -> str:
    """SHA-256 of the exclusive canonical form of the payload element, in hex."""
    return hashlib.sha256(canonical(payload)).hexdigest()


def canonical(element: etree._Element) -> bytes:
    return etree.tostring(element, method="c14n", exclusive=True, with_comments=False)


@dataclass(frozen=True, slots=True)
class Hop:
    """One node the envelope passed through, and when."""

    agency: AgencyCode
    at: dt.datetime


@dataclass(frozen=True, slots=True)
class Header:
    """Everything a node needs to route, authorize and audit an envelope."""

    kind: Kind
    sender: AgencyCode
    recipient: AgencyCode
    dossier: DossierCode | None = None
    procedure: ProcedureCode | None = None
    step: str | None = None
    message_id: str = field(default_factory=new_message_id)
    created: dt.datetime = field(default_factory=clock.now)
    expires: dt.datetime | None = None
    trace: tuple[Hop, ...] = ()
    in_reply_to: str | None = None
    config_version: int | None = None
    """The configuration bundle the sender runs (None: none installed)."""

    @property
    def expiry(self) -> dt.datetime:
        return self.expires or self.created + DEFAULT_TTL


def _sub(parent: etree._Element, name: str, text: str | None) -> None:
    if text is not None:
        etree.SubElement(parent, q(name)).text = text


def header_element(header: Header, digest: str) -> etree._Element:
    """The ``Header`` element, in the order the schema fixes."""
    el = etree.Element(q("Header"))
    _sub(el, "MessageId", header.message_id)
    _sub(el, "Kind", header.kind.value)
    _sub(el, "From", str(header.sender))
    _sub(el, "To", str(header.recipient))
    _sub(el, "DossierCode", str(header.dossier) if header.dossier else None)
    _sub(el, "Procedure", str(header.procedure) if header.procedure else None)
    _sub(el, "Step", header.step)
    _sub(el, "Created", utc(header.created))
    _sub(el, "Expires", utc(header.expiry))
    trace = etree.SubElement(el, q("Trace"))
    for hop in header.trace:
        etree.SubElement(trace, q("Hop"), agency=str(hop.agency), at=utc(hop.at))
    _sub(el, "InReplyTo", header.in_reply_to)
    _sub(el, "ConfigVersion", str(header.config_version) if header.config_version else None)
    etree.SubElement(el, q("PayloadDigest"), algorithm=SHA256_URI).text = digest
    return el


def envelope_element(header: Header, payload: etree._Element, digest: str | None = None) -> etree._Element:
    """An unsigned envelope around ``payload``; ``sealing.Signer`` adds the signature.

    ``digest`` is the plaintext's PayloadDigest when ``payload`` is its ``EncryptedPayload``."""
    root = etree.Element(q("Envelope"), nsmap={None: ENV_NS},  # type: ignore[dict-item]
                         version=VERSION)
    root.append(header_element(header, digest or payload_digest(payload)))
    body = etree.SubElement(root, q("Body"))
    body.append(payload)
    return root


_PREFIX = len(ENV_NS) + 2


def read_header(el: etree._Element) -> tuple[Header, str]:
    """The header value and the declared payload digest, from a schema-valid ``Header``."""
    fields = {child.tag[_PREFIX:]: child for child in el}

    def opt(name: str) -> str | None:
        child = fields.get(name)
        return child.text if child is not None else None

    def req(name: str) -> str:
        value = opt(name)
        if value is None:  # the schema requires it; reaching here is a bug, not bad input
            raise AssertionError(f"schema-valid header without {name}")
        return value

    dossier, procedure = opt("DossierCode"), opt("Procedure")
    hops = tuple(Hop(AgencyCode(h.get("agency", "")), parse_datetime(h.get("at", "")))
                 for h in fields["Trace"])
    header = Header(
        kind=Kind(req("Kind")),
        sender=AgencyCode(req("From")),
        recipient=AgencyCode(req("To")),
        dossier=DossierCode(dossier) if dossier else None,
        procedure=ProcedureCode(procedure) if procedure else None,
        step=opt("Step"),
        message_id=req("MessageId"),
        created=parse_datetime(req("Created")),
        expires=parse_datetime(req("Expires")),
        trace=hops,
        in_reply_to=opt("InReplyTo"),
        config_version=int(version) if (version := opt("ConfigVersion")) else None,
    )
    return header, req("PayloadDigest")


@dataclass(frozen=True)
class VerifiedEnvelope:
    """An envelope whose signature, signer and payload digest were verified.

    Every field comes from the tree that signxml returned as signed. ``payload`` is that tree's
    body element: read it, never change it.
    """

    header: Header
    payload: etree._Element
    payload_digest: str
    signer: AgencyCode
    signer_fingerprint: str
    envelope_digest: str
    """SHA-256 of the envelope bytes as received; receipts and the audit log name it."""
    signer_certificate: x509.Certificate | None = None
    """The verified signing certificate (it attests the signer's audit checkpoint key)."""
    encrypted_for: str | None = None
    """The SHA-256 of the recipient certificate the payload travelled encrypted to, if it did."""
    payload_encrypted: bool = False
    """``payload`` is still the ``EncryptedPayload`` (opened without the key): its plaintext was
    neither read nor checked against ``payload_digest``."""
