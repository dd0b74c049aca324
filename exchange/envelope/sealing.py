"""seal and open: signing envelopes and verifying them against the trust store.

``Signer.seal`` signs enveloped (``URI=""``), exclusive c14n, ECDSA P-256 with SHA-256, the
agency certificate in KeyInfo: what ``xmlsec1 --verify`` accepts (``xmldsig.py``). ``Opener.open``
refuses anything that is not exactly that shape, and builds the result only from what the
signature covers.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from lxml import etree

from exchange.clock import now
from exchange.codes import AgencyCode
from exchange.envelope import xmldsig
from exchange.envelope.dossier import attachment_problems, d
from exchange.envelope.encryption import (
    ENCRYPTED,
    PAYLOAD_NAME,
    Recipient,
    RecipientCertificate,
    check_addressing,
    decrypt,
    read_sealed,
)
from exchange.envelope.messages import read_acks
from exchange.envelope.model import (
    PAYLOAD_OF_KIND,
    Header,
    Kind,
    VerifiedEnvelope,
    canonical,
    envelope_element,
    read_header,
)
from exchange.envelope.pki import agency_of, cert_pem, load_cert, load_key
from exchange.envelope.trust import TrustStore
from exchange.errors import (
    BadSignature,
    ConfigError,
    DigestMismatch,
    EnvelopeExpired,
    InvalidEnvelope,
    SchemaViolation,
    SenderMismatch,
    Undecryptable,
)
from exchange.xml import safexml, schemas, shape
from exchange.xml.datatypes import parse_date, parse_datetime
from exchange.xml.names import DS_NS, q

_BODY_OPEN = b"<Body>"
_BODY_CLOSE = b"</Body>"

_SCHEMA_OF_KIND = {Kind.TRANSFER: schemas.DOSSIER, Kind.RECEIPT: schemas.RECEIPT, Kind.STATUS: schemas.STATUS}


def _ds(path: str) -> str:
    return "/".join(f"{{{DS_NS}}}{part}" for part in path.split("/"))


@dataclass(frozen=True)
class Signer:
    """An agency's signing identity: its key, its certificate and the code the certificate names."""

    key: ec.EllipticCurvePrivateKey = field(repr=False)
    cert: x509.Certificate
    agency: AgencyCode

    @classmethod
    def load(cls, cert_path: Path, key_path: Path) -> Signer:
        cert = load_cert(cert_path)
        return cls(load_key(key_path), cert, agency_of(cert))

    def seal(self, header: Header, payload: etree._Element,
             encrypt_for: RecipientCertificate | None = None) -> bytes:
        """The signed envelope bytes for ``payload``, sent by this agency.

        With ``encrypt_for`` the body carries the payload encrypted to that certificate, which
        must be the header's recipient's; the signature covers the encrypted body, and
        PayloadDigest the plaintext."""
        if header.sender != self.agency:
            raise SenderMismatch(f"the certificate is {self.agency}'s, the header says {header.sender}")
        if encrypt_for is None:
            root = envelope_element(header, payload)
        else:
            if encrypt_for.agency != header.recipient:
                raise ConfigError(f"the recipient certificate is {encrypt_for.agency}'s, "
                                  f"the envelope is addressed to {header.recipient}")
            plaintext = canonical(payload)
            root = envelope_element(header, encrypt_for.encrypt(header.kind, header.sender, plaintext),
                                    hashlib.sha256(plaintext).hexdigest())
        signed = xmldsig.sign(root, self.key, self._certificate_text)
        return bytes(etree.tostring(signed, xml_declaration=True, encoding="UTF-8"))

    @functools.cached_property
    def _certificate_text(self) -> str:
        """The certificate as KeyInfo carries it: its PEM body."""
        return "".join(cert_pem(self.cert).decode("ascii").splitlines(keepends=True)[1:-1])


@dataclass(frozen=True)
class Opener:
    """Verifies envelopes against a trust store; every refusal is an ``InvalidEnvelope``."""

    trust: TrustStore
    max_bytes: int = safexml.DEFAULT_MAX_BYTES
    clock: Callable[[], dt.datetime] = now
    recipient: Recipient | None = None
    """The key that decrypts payloads encrypted to this agency (``open`` refuses others')."""
    keyless: bool = False
    """Without ``recipient``, return an encrypted payload as it is (``payload_encrypted``) instead
    of refusing it as ``undecryptable``: for verifying signature, header and routing only."""

    def open(self, data: bytes, source: str = "envelope") -> VerifiedEnvelope:
        """Verify ``data`` and return what was signed, or raise the refusal with its reason code."""
        root = safexml.parse(data, max_bytes=self.max_bytes, source=source)
        shape.check(root, shape.ENVELOPE, source)
        _check_schema(root, source)
        signature = xmldsig.pinned(root)
        at = self.clock()
        signer = self.trust.check_encoded(signature.certificate, at)
        key = signer.cert.public_key()
        if not isinstance(key, ec.EllipticCurvePublicKey):
            raise BadSignature("the signing certificate has no ECDSA key")
        verified = xmldsig.verify(root, signature, key)
        signed_data, signed = verified.data, verified.root
        if signed.tag != q("Envelope") or len(signed) != 2:
            raise BadSignature("the signed content is not a whole envelope")
        header, digest = _read_header(signed[0])
        signer.check_signed_at(header.created)
        if header.sender != signer.agency:
            raise SenderMismatch(f"the envelope says it is from {header.sender}, "
                                 f"its certificate is {signer.agency}'s")
        if header.expiry < at:
            raise EnvelopeExpired(f"message {header.message_id} expired at {header.expiry:%Y-%m-%d %H:%M}Z")
        body = signed[1]
        if body.tag != q("Body") or len(body) != 1:
            raise BadSignature("the signed envelope has no single body")
        encrypted_for = None
        if body[0].tag == ENCRYPTED:
            payload, encrypted_for = self._encrypted(header, body[0], digest, source)
        else:
            payload = _check_payload(header, body[0], digest, signed_data)
        return VerifiedEnvelope(
            header=header,
            payload=payload,
            payload_digest=digest,
            signer=signer.agency,
            signer_fingerprint=signer.fingerprint,
            envelope_digest=hashlib.sha256(data).hexdigest(),
            signer_certificate=signer.cert,
            encrypted_for=encrypted_for,
            payload_encrypted=payload is body[0] and encrypted_for is not None,
        )

    def _encrypted(self, header: Header, el: etree._Element, digest: str,
                   source: str) -> tuple[etree._Element, str]:
        """The decrypted payload (checked as a plain one would be), or ``el`` when ``keyless``."""
        sealed = read_sealed(el)
        if PAYLOAD_NAME.get(header.kind) != sealed.payload_name:
            raise DigestMismatch(f"a {header.kind} envelope carries an encrypted {sealed.payload_name}")
        check_addressing(sealed, el.findtext(q("RecipientCertificate")) or "", header.sender, header.recipient)
        _check_routing_fields(header, el)
        if self.recipient is None:
            if not self.keyless:
                raise Undecryptable(f"message {header.message_id} is encrypted for {header.recipient}, "
                                    "and this node has no key to open it")
            return el, sealed.recipient_certificate
        plaintext = decrypt(sealed, self.recipient, self.max_bytes)
        if hashlib.sha256(plaintext).hexdigest() != digest:
            raise DigestMismatch(f"message {header.message_id}: the decrypted payload does not match PayloadDigest")
        where = f"{source}: decrypted payload"
        payload = safexml.parse(plaintext, max_bytes=self.max_bytes, source=where)
        expected = PAYLOAD_OF_KIND[header.kind]
        if payload.tag != expected:
            raise DigestMismatch(f"a {header.kind} envelope carries {payload.tag}, expected {expected}")
        shape.check(payload, shape.Profile(root=expected), where)
        problems = schemas.problems(_SCHEMA_OF_KIND[header.kind], payload, where, base64_checked_by_caller=True)
        if problems:
            raise SchemaViolation("; ".join(problems))
        _check_routing_fields(header, payload)
        _check_dates(header, payload)
        return payload, sealed.recipient_certificate


def _check_schema(root: etree._Element, source: str) -> None:
    problems = schemas.problems(schemas.ENVELOPE, root, source, base64_checked_by_caller=True)
    if problems:
        raise SchemaViolation("; ".join(problems))


def _check_payload(header: Header, payload: etree._Element, digest: str,
                   signed_data: bytes) -> etree._Element:
    if not _payload_matches(signed_data, payload, digest):
        raise DigestMismatch(f"message {header.message_id}: the body does not match PayloadDigest")
    expected = PAYLOAD_OF_KIND[header.kind]
    if payload.tag != expected:
        raise DigestMismatch(f"a {header.kind} envelope carries {payload.tag}, expected {expected}")
    _check_routing_fields(header, payload)
    _check_dates(header, payload)
    return payload


def _payload_matches(signed_data: bytes, payload: etree._Element, digest: str) -> bool:
    """Whether SHA-256 of the payload's exclusive c14n is ``digest``, cut from the signed bytes.

    Exclusive c14n renders a subtree the same inside its document as alone, except when an
    ancestor already rendered a namespace the subtree uses; our root declares only its own
    default namespace. The cut is the ``<Body>`` element's content; if that does not match,
    canonicalize the payload element itself before concluding.
    """
    start = signed_data.find(_BODY_OPEN)
    end = signed_data.rfind(_BODY_CLOSE)
    if 0 <= start < end and hashlib.sha256(signed_data[start + len(_BODY_OPEN):end]).hexdigest() == digest:
        return True
    return hashlib.sha256(canonical(payload)).hexdigest() == digest


def _check_routing_fields(header: Header, payload: etree._Element) -> None:
    if header.kind in (Kind.RECEIPT, Kind.CONFIGURATION):
        return
    missing = [n for n, v in (("DossierCode", header.dossier), ("Procedure", header.procedure),
                              ("Step", header.step)) if v is None]
    if missing:
        raise SchemaViolation(f"a {header.kind} envelope needs {', '.join(missing)} in its header")
    if header.kind is Kind.TRANSFER and payload.tag != ENCRYPTED:
        _same(header.message_id, "dossier code", str(header.dossier), payload, "Code")
        _same(header.message_id, "procedure", str(header.procedure), payload, "Procedure")
        _check_attachments(header.message_id, payload)


def _read_header(el: etree._Element) -> tuple[Header, str]:
    try:
        return read_header(el)
    except ValueError as exc:  # a schema-valid value this node cannot hold (a year past 9999)
        raise SchemaViolation(f"header: {exc}") from None


def _check_dates(header: Header, payload: etree._Element) -> None:
    """Every date the node will read from the payload reads (``datatypes`` refuses what Python
    cannot hold), so that nothing after ``open`` trips on one."""
    try:
        if payload.tag == PAYLOAD_OF_KIND[Kind.TRANSFER]:
            parse_datetime(payload.findtext(d("ReceivedAt")) or "")
            parse_date(payload.findtext(d("DueDate")) or "")
        elif payload.tag == PAYLOAD_OF_KIND[Kind.RECEIPT]:
            read_acks(payload)
    except ValueError as exc:
        raise SchemaViolation(f"message {header.message_id}: {exc}") from None


def _check_attachments(message_id: str, payload: etree._Element) -> None:
    """Strict base64 (the schema check the hot path leaves to this decoder) and each SHA-256."""
    for problem in attachment_problems(payload, f"message {message_id}"):
        if problem.undecodable:
            raise SchemaViolation(str(problem))
        raise DigestMismatch(str(problem))


def _same(message_id: str, what: str, value: str, payload: etree._Element, name: str) -> None:
    found = payload.findtext(q(name, payload.tag[1:].split("}")[0]))
    if found != value:
        raise DigestMismatch(f"message {message_id}: header {what} {value} but the dossier says {found}")


__all__ = ["InvalidEnvelope", "Opener", "Recipient", "RecipientCertificate", "Signer"]
