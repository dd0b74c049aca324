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
from cryptography.hazmat.primitives.asymmetric import ec
from lxml import etree
from signxml import exceptions as sx
from signxml.algorithms import CanonicalizationMethod, DigestAlgorithm, SignatureMethod
from signxml.signer import XMLSigner
from signxml.verifier import SignatureConfiguration, VerifyResult, XMLVerifier

from exchange import safexml, schemas
from exchange.codes import AgencyCode
from exchange.envelope import (
    DS_NS,
    PAYLOAD_OF_KIND,
    Header,
    Kind,
    VerifiedEnvelope,
    canonical,
    envelope_element,
    q,
    read_header,
)
from exchange.errors import (
    BadSignature,
    DigestMismatch,
    EnvelopeExpired,
    InvalidEnvelope,
    SchemaViolation,
    SenderMismatch,
)
from exchange.pki import agency_of, cert_pem, load_cert, load_key, now
from exchange.trust import TrustStore

EXC_C14N = CanonicalizationMethod.EXCLUSIVE_XML_CANONICALIZATION_1_0
ENVELOPED = "http://www.w3.org/2000/09/xmldsig#enveloped-signature"
ALLOWED_TRANSFORMS = frozenset({ENVELOPED, EXC_C14N.value})

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

    def seal(self, header: Header, payload: etree._Element) -> bytes:
        """The signed envelope bytes for ``payload``, sent by this agency."""
        if header.sender != self.agency:
            raise SenderMismatch(f"the certificate is {self.agency}'s, the header says {header.sender}")
        root = envelope_element(header, payload)
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

    def open(self, data: bytes, source: str = "envelope") -> VerifiedEnvelope:
        root = safexml.parse(data, max_bytes=self.max_bytes, source=source)
        _check_schema(root, source)
        signature = root[-1]
        _pin_reference(signature)
        cert = _signing_cert(signature)
        at = self.clock()
        signer = self.trust.check(cert, at=at)
        signed = _verify(root, cert, at)
        header, digest = read_header(signed[0])
        self.trust.check_signed_at(cert, signer, header.created)
        if header.sender != signer.agency:
            raise SenderMismatch(f"the envelope says it is from {header.sender}, "
                                 f"its certificate is {signer.agency}'s")
        if header.expiry < at:
            raise EnvelopeExpired(f"message {header.message_id} expired at {header.expiry:%Y-%m-%d %H:%M}Z")
        payload = _check_payload(header, signed[1], digest)
        return VerifiedEnvelope(
            header=header,
            payload=payload,
            payload_digest=digest,
            signer=signer.agency,
            signer_fingerprint=signer.fingerprint,
            envelope_digest=hashlib.sha256(data).hexdigest(),
        )


def _check_schema(root: etree._Element, source: str) -> None:
    if root.tag != q("Envelope"):
        raise SchemaViolation(f"{source}: the root is {root.tag}, expected {q('Envelope')}")
    problems = schemas.problems(schemas.ENVELOPE, root, source)
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


def _signing_cert(signature: etree._Element) -> x509.Certificate:
    certs = signature.findall(_ds("KeyInfo/X509Data/X509Certificate"))
    if len(certs) != 1:
        raise BadSignature(f"expected exactly one X509Certificate in KeyInfo, found {len(certs)}")
    try:
        return x509.load_der_x509_certificate(base64.b64decode("".join((certs[0].text or "").split())))
    except ValueError as exc:
        raise BadSignature(f"the KeyInfo certificate cannot be read: {exc}") from None


class _Verifier(XMLVerifier):
    """signxml's verifier, minus one serialize-and-reparse of a tree we already parsed safely.

    signxml copies its input so it may modify the copy; it copies again before applying the
    enveloped transform, and never modifies the root it is given, so the first copy is waste.
    Its certificate-validity check formats the subject name on every call even when the
    certificate is valid; the trust store has already decided validity, at two instants.
    """

    def get_root(self, data: object) -> object:
        if isinstance(data, etree._Element):
            return data
        return super().get_root(data)  # type: ignore[no-untyped-call]

    def _check_cert_validity(self, cert: object, source: object) -> None:
        """Validity is the trust store's job (now and at signing time), checked before and after."""


def _verify(root: etree._Element, cert: x509.Certificate, at: dt.datetime) -> etree._Element:
    """The signed tree, as signxml reconstructs it from the canonical bytes that were digested."""
    config = dataclasses.replace(_EXPECT, verification_time=at)
    try:
        result = _Verifier().verify(root, x509_cert=cert, expect_config=config)
    except sx.InvalidCertificate as exc:
        raise BadSignature(f"certificate refused by the verifier: {exc}") from None
    except (sx.InvalidSignature, sx.InvalidDigest, sx.InvalidInput) as exc:
        raise BadSignature(str(exc) or type(exc).__name__) from None
    signed = result.signed_xml if isinstance(result, VerifyResult) else None
    if signed is None or signed.tag != q("Envelope") or len(signed) != 2:
        raise BadSignature("the signed content is not a whole envelope")
    return signed


def _check_payload(header: Header, body: etree._Element, digest: str) -> etree._Element:
    if body.tag != q("Body") or len(body) != 1:
        raise BadSignature("the signed envelope has no single body")
    payload = body[0]
    if hashlib.sha256(canonical(payload)).hexdigest() != digest:
        raise DigestMismatch(f"message {header.message_id}: the body does not match PayloadDigest")
    expected = PAYLOAD_OF_KIND[header.kind]
    if payload.tag not in (expected, q("EncryptedPayload")):
        raise DigestMismatch(f"a {header.kind} envelope carries {payload.tag}, expected {expected}")
    _check_routing_fields(header, payload)
    return payload


def _check_routing_fields(header: Header, payload: etree._Element) -> None:
    if header.kind is Kind.RECEIPT:
        return
    missing = [n for n, v in (("DossierCode", header.dossier), ("Procedure", header.procedure),
                              ("Step", header.step)) if v is None]
    if missing:
        raise SchemaViolation(f"a {header.kind} envelope needs {', '.join(missing)} in its header")
    if header.kind is Kind.TRANSFER and payload.tag != q("EncryptedPayload"):
        _same(header.message_id, "dossier code", str(header.dossier), payload, "Code")
        _same(header.message_id, "procedure", str(header.procedure), payload, "Procedure")


def _same(message_id: str, what: str, value: str, payload: etree._Element, name: str) -> None:
    found = payload.findtext(q(name, payload.tag[1:].split("}")[0]))
    if found != value:
        raise DigestMismatch(f"message {message_id}: header {what} {value} but the dossier says {found}")


__all__ = ["InvalidEnvelope", "Opener", "Signer"]
