"""Encryption of an envelope's payload to the recipient agency's certificate.

The construction is JWE (RFC 7516) in compact serialization, ``alg`` ECDH-ES+A256KW and ``enc``
A256GCM (RFC 7518) on the agencies' P-256 keys, as ``jwcrypto`` implements it and Debian's
``jose jwe dec`` decrypts it. The plaintext is the exclusive canonical form of the payload
element, so the header's PayloadDigest is the SHA-256 of the plaintext.

The protected header binds the addressee: ``kid`` is the SHA-256 of the recipient certificate
(DER, hex), ``apu`` and ``apv`` the sender and recipient agency codes. ``apu``/``apv`` enter the
ECDH-ES key derivation (Concat KDF) and the whole protected header is the AES-GCM additional
data: changing any of them makes the ciphertext undecryptable, so a payload cannot be moved to
an envelope for another recipient, nor claimed by another sender, without the refusal below.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from jwcrypto import jwe, jwk
from lxml import etree

from exchange.codes import AgencyCode
from exchange.envelope.model import Kind
from exchange.envelope.pki import AGENCY_CURVE, agency_of, key_matches, load_cert, load_key
from exchange.errors import ConfigError, InvalidCode, NotForThisRecipient, Undecryptable
from exchange.xml.names import q

ALG = "ECDH-ES+A256KW"
ENC = "A256GCM"
ALGORITHM = "urn:ietf:rfc:7518#ECDH-ES+A256KW+A256GCM"
"""The ``algorithm`` attribute of ``EncryptedPayload``."""

PAYLOAD_NAME = {Kind.TRANSFER: "dossier", Kind.RECEIPT: "receipt", Kind.STATUS: "status"}
"""The ``payload`` attribute for each kind that may travel encrypted (not configuration)."""

ENCRYPTED = q("EncryptedPayload")
_MAX_PROTECTED = 4096
_B64URL = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
_PROTECTED_KEYS = frozenset({"alg", "enc", "kid", "apu", "apv", "epk", "cty"})


def fingerprint(cert: x509.Certificate) -> str:
    """SHA-256 of the certificate's DER, in hex: how the envelope names the recipient certificate."""
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def _b64u(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode("ascii")).rstrip(b"=").decode("ascii")


def _unb64u(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass(frozen=True)
class RecipientCertificate:
    """The certificate of the agency a payload is encrypted to."""

    cert: x509.Certificate
    agency: AgencyCode
    fingerprint: str
    jwk: jwk.JWK = field(repr=False, compare=False)

    @classmethod
    def of(cls, cert: x509.Certificate) -> RecipientCertificate:
        key = cert.public_key()
        if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != AGENCY_CURVE:
            raise ConfigError("the recipient certificate has no P-256 key")
        try:
            agency = agency_of(cert)
        except InvalidCode as exc:
            raise ConfigError(f"the recipient certificate names no agency: {exc}") from None
        return cls(cert, agency, fingerprint(cert), jwk.JWK.from_pyca(key))

    @classmethod
    def load(cls, path: Path) -> RecipientCertificate:
        return cls.of(load_cert(path))

    def encrypt(self, kind: Kind, sender: AgencyCode, plaintext: bytes) -> etree._Element:
        """The ``EncryptedPayload`` carrying ``plaintext`` (the payload's exclusive c14n) for this recipient."""
        if kind not in PAYLOAD_NAME:
            raise ConfigError(f"a {kind} envelope is not encrypted")
        protected = {"alg": ALG, "enc": ENC, "kid": self.fingerprint,
                     "apu": _b64u(str(sender)), "apv": _b64u(str(self.agency))}
        token = jwe.JWE(plaintext, protected=json.dumps(protected, separators=(",", ":")))
        token.add_recipient(self.jwk)
        el = etree.Element(ENCRYPTED, algorithm=ALGORITHM, payload=PAYLOAD_NAME[kind])
        etree.SubElement(el, q("RecipientCertificate")).text = self.fingerprint
        etree.SubElement(el, q("JWE")).text = token.serialize(compact=True)
        return el


@dataclass(frozen=True)
class Recipient:
    """An agency's decryption identity: its private key and the certificate it was issued."""

    key: ec.EllipticCurvePrivateKey = field(repr=False)
    cert: x509.Certificate
    agency: AgencyCode
    fingerprint: str
    jwk: jwk.JWK = field(repr=False, compare=False)

    @classmethod
    def load(cls, cert_path: Path, key_path: Path) -> Recipient:
        cert, key = load_cert(cert_path), load_key(key_path)
        if not key_matches(cert, key):
            raise ConfigError(f"{key_path} is not the key of {cert_path}")
        return cls(key, cert, agency_of(cert), fingerprint(cert), jwk.JWK.from_pyca(key))


@dataclass(frozen=True)
class Sealed:
    """What anyone can read of an ``EncryptedPayload`` without the key."""

    payload_name: str
    recipient_certificate: str
    sender: str
    recipient: str
    compact: str


def read_sealed(el: etree._Element) -> Sealed:
    """The addressing of a schema-valid ``EncryptedPayload``; refuses a JWE this node did not make."""
    if el.get("algorithm") != ALGORITHM:
        raise Undecryptable(f"unknown encryption algorithm {el.get('algorithm')!r}")
    compact = el.findtext(q("JWE")) or ""
    if not compact.isascii() or compact.encode("ascii").translate(None, _B64URL) != b"....":
        raise Undecryptable("the JWE is not five base64url parts joined by dots (compact serialization)")
    first = compact.split(".", 1)[0]
    if len(first) > _MAX_PROTECTED:
        raise Undecryptable("the JWE protected header is too long")
    try:
        header: Any = json.loads(_unb64u(first))
        if not isinstance(header, dict) or not set(header) <= _PROTECTED_KEYS:
            raise ValueError("unexpected members")
        if header.get("alg") != ALG or header.get("enc") != ENC:
            raise ValueError(f"alg {header.get('alg')!r} enc {header.get('enc')!r}")
        sender = _unb64u(str(header["apu"])).decode("ascii")
        recipient = _unb64u(str(header["apv"])).decode("ascii")
        kid = str(header["kid"])
    except (ValueError, KeyError, binascii.Error, UnicodeDecodeError) as exc:
        raise Undecryptable(f"the JWE protected header is not ours ({exc})") from None
    return Sealed(el.get("payload") or "", kid, sender, recipient, compact)


def check_addressing(sealed: Sealed, declared_certificate: str, sender: AgencyCode,
                     recipient: AgencyCode) -> None:
    """The JWE is addressed as the envelope header says: same recipient, certificate and sender."""
    if sealed.recipient_certificate != declared_certificate:
        raise NotForThisRecipient(f"the payload is encrypted to certificate {sealed.recipient_certificate[:16]}…, "
                                  f"the envelope names {declared_certificate[:16]}…")
    if sealed.recipient != str(recipient):
        raise NotForThisRecipient(f"the payload is encrypted for {sealed.recipient}, "
                                  f"the envelope is addressed to {recipient}")
    if sealed.sender != str(sender):
        raise NotForThisRecipient(f"the payload was encrypted by {sealed.sender}, "
                                  f"the envelope is from {sender}")


def decrypt(sealed: Sealed, recipient: Recipient, max_bytes: int) -> bytes:
    """The plaintext, with ``recipient``'s key; the addressee must be ``recipient``."""
    if sealed.recipient != str(recipient.agency) or sealed.recipient_certificate != recipient.fingerprint:
        raise NotForThisRecipient(f"the payload is encrypted for {sealed.recipient} "
                                  f"(certificate {sealed.recipient_certificate[:16]}…), this key is "
                                  f"{recipient.agency}'s (certificate {recipient.fingerprint[:16]}…)")
    token = jwe.JWE()
    token.allowed_algs = [ALG, ENC]
    try:
        token.deserialize(sealed.compact)
        token.decrypt(recipient.jwk, max_plaintext=max_bytes)
    except Exception as exc:  # noqa: BLE001 - whatever jwcrypto trips on, it does not decrypt
        raise Undecryptable(f"the payload does not decrypt with {recipient.agency}'s key "
                            f"({type(exc).__name__})") from None
    if token.plaintext is None:
        raise Undecryptable(f"the payload decrypted to nothing with {recipient.agency}'s key")
    return token.plaintext
