"""seal and open: signing envelopes with signxml and verifying them against the trust store.

``Signer.seal`` signs enveloped (``URI=""``), exclusive c14n, ECDSA P-256 with SHA-256, the
agency certificate in KeyInfo: what ``xmlsec1 --verify`` accepts. ``Opener.open`` refuses
anything that is not exactly that shape, and builds the result only from the tree signxml
returns as signed.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from lxml import etree
from signxml import exceptions as sx
from signxml.algorithms import CanonicalizationMethod, DigestAlgorithm, SignatureMethod
from signxml.signer import XMLSigner
from signxml.verifier import SignatureConfiguration, VerifyResult, XMLVerifier

from exchange.clock import now
from exchange.codes import AgencyCode
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

EXC_C14N = CanonicalizationMethod.EXCLUSIVE_XML_CANONICALIZATION_1_0
ENVELOPED = "http://www.w3.org/2000/09/xmldsig#enveloped-signature"
ALLOWED_TRANSFORMS = frozenset({ENVELOPED, EXC_C14N.value})
_BODY_OPEN = b"<Body>"
_BODY_CLOSE = b"</Body>"

_SCHEMA_OF_KIND = {Kind.TRANSFER: schemas.DOSSIER, Kind.RECEIPT: schemas.RECEIPT, Kind.STATUS: schemas.STATUS}

_EXPECT = SignatureConfiguration(
    location="./",
    expect_references=1,
    signature_methods=frozenset({SignatureMethod.ECDSA_SHA256}),
    digest_algorithms=frozenset({DigestAlgorithm.SHA256}),
)


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
        signer = XMLSigner(
            signature_algorithm=SignatureMethod.ECDSA_SHA256,
            digest_algorithm=DigestAlgorithm.SHA256,
            c14n_algorithm=EXC_C14N,
        )
        signed = signer.sign(root, key=self.key, cert=[cert_pem(self.cert).decode("ascii")])
        return bytes(etree.tostring(signed, xml_declaration=True, encoding="UTF-8"))


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
        signature = root[-1]
        _pin_reference(signature)
        at = self.clock()
        signer = self.trust.check_encoded(_signing_cert(signature), at)
        signed_data, signed = _verify(root, signer.cert, at)
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


def _pin_reference(signature: etree._Element) -> None:
    """Exactly one reference, to the whole document, with only the two expected transforms."""
    references = signature.findall(_ds("SignedInfo/Reference"))
    if len(references) != 1:
        raise BadSignature(f"expected exactly one signed reference, found {len(references)}")
    if references[0].get("URI") != "":
        raise BadSignature(f"the reference must be URI=\"\", found URI={references[0].get('URI')!r}")
    transforms = {t.get("Algorithm") for t in references[0].iterfind(_ds("Transforms/Transform"))}
    if ENVELOPED not in transforms or not transforms <= ALLOWED_TRANSFORMS:
        raise BadSignature(f"unexpected transforms {sorted(t or '' for t in transforms)}")


def _signing_cert(signature: etree._Element) -> str:
    """The one certificate in KeyInfo, as its base64 text (the trust store's cache key)."""
    certs = signature.findall(_ds("KeyInfo/X509Data/X509Certificate"))
    if len(certs) != 1:
        raise BadSignature(f"expected exactly one X509Certificate in KeyInfo, found {len(certs)}")
    return certs[0].text or ""


class _Verifier(XMLVerifier):
    """signxml's verifier, without the copies that cost more than the cryptography.

    Stock signxml serializes and re-parses the whole document three times per reference to get
    private copies; for a 100 KiB envelope that is two thirds of the time. Our envelopes have
    exactly one reference, ``URI=""`` with the enveloped and exclusive-c14n transforms (pinned
    here again, on the SignedInfo that signxml has verified), so one in-memory copy suffices.
    The result is still built only from the canonical bytes whose digest matched, re-parsed;
    a differential test holds it equal to stock signxml's.
    """

    def get_root(self, data: object) -> object:
        # The caller parsed ``data`` with the hardened parser; signxml never modifies it.
        if isinstance(data, etree._Element):
            return data
        return super().get_root(data)  # type: ignore[no-untyped-call]

    def _check_cert_validity(self, cert: object, source: object) -> None:
        """Validity is the trust store's job (now and at signing time), checked before and after."""

    def _verify_reference(self, reference: etree._Element, index: int, root: etree._Element,
                          uri_resolver: object, c14n_algorithm: object, signature: etree._Element,
                          signature_key_used: object) -> VerifyResult:
        transforms = reference.findall(_ds("Transforms/Transform"))
        algorithms = [t.get("Algorithm") for t in transforms]
        if reference.get("URI") != "" or algorithms != [ENVELOPED, EXC_C14N.value]:
            raise sx.InvalidInput(f"reference {index}: expected URI=\"\" with the enveloped and "
                                  f"exc-c14n transforms, found {reference.get('URI')!r} {algorithms}")
        prefixes = self._get_inclusive_ns_prefixes(transforms[1])  # type: ignore[no-untyped-call]
        # The enveloped transform: the document without its Signature. ``root`` is this call's own
        # parse, so the Signature (its last child, pinned by the shape check) is taken out for the
        # canonicalization and put back, instead of deep-copying the whole document.
        enveloped = self._get_signature(root)  # type: ignore[no-untyped-call]
        root.remove(enveloped)
        try:
            signed_data: bytes = self._c14n(root, algorithm=EXC_C14N, inclusive_ns_prefixes=prefixes)
        finally:
            root.append(enveloped)
        method = reference.find(_ds("DigestMethod"))
        digest_alg = DigestAlgorithm(method.get("Algorithm") if method is not None else None)
        self.check_digest_alg_expected(digest_alg)  # type: ignore[no-untyped-call]
        expected = base64.b64decode(reference.findtext(_ds("DigestValue")) or "")
        if expected != self._get_digest(signed_data, digest_alg):
            raise sx.InvalidDigest(f"Digest mismatch for reference {index}")
        return VerifyResult(signed_data, self._fromstring(signed_data), signature,  # type: ignore[no-untyped-call]
                            signature_key=_pem(signature_key_used))


def _pem(key: object) -> bytes:
    if isinstance(key, bytes):
        return key
    assert isinstance(key, ec.EllipticCurvePublicKey)
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def _verify(root: etree._Element, cert: x509.Certificate,
            at: dt.datetime) -> tuple[bytes, etree._Element]:
    """The signed bytes and tree, as signxml rebuilds them from the canonical bytes digested."""
    config = dataclasses.replace(_EXPECT, verification_time=at)
    try:
        # validate_schema=False: envelope.xsd already validated this Signature against the
        # xmldsig core schema, in the same pass as the rest of the envelope.
        result = _Verifier().verify(root, x509_cert=cert, expect_config=config, validate_schema=False)
    except sx.InvalidCertificate as exc:
        raise BadSignature(f"certificate refused by the verifier: {exc}") from None
    except (sx.InvalidSignature, sx.InvalidDigest, sx.InvalidInput) as exc:
        raise BadSignature(str(exc) or type(exc).__name__) from None
    except Exception as exc:  # noqa: BLE001 - whatever signxml trips on, the signature is bad
        raise BadSignature(f"the signature cannot be verified ({type(exc).__name__}: {exc})") from None
    if not isinstance(result, VerifyResult):
        raise BadSignature("expected exactly one signed reference")
    signed = result.signed_xml
    if signed is None or signed.tag != q("Envelope") or len(signed) != 2:
        raise BadSignature("the signed content is not a whole envelope")
    return result.signed_data, signed


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
