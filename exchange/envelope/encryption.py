"""Encryption of an envelope's payload to the recipient agency's certificate.

The construction is JWE (RFC 7516) in compact serialization, ``alg`` ECDH-ES+A256KW and ``enc``
A256GCM (RFC 7518) on the agencies' P-256 keys, as Debian's ``jose jwe dec`` and ``jwcrypto``
decrypt it (both are the tests' judges). The primitives are ``cryptography``'s (ECDH, Concat KDF,
AES key wrap, AES-GCM); this module only lays out the compact serialization, because a general
JOSE library costs three times the cryptography itself on every transfer (deep copies of keys
and headers: 630 against 230 us per 10 KiB seal and open, measured with benchmarks/envelope.py).
The plaintext is the exclusive canonical form of the payload element, so the header's
PayloadDigest is the SHA-256 of the plaintext.

The protected header binds the addressee: ``kid`` is the SHA-256 of the recipient certificate
(DER, hex), ``apu`` and ``apv`` the sender and recipient agency codes. ``apu``/``apv`` enter the
ECDH-ES key derivation (Concat KDF) and the whole protected header is the AES-GCM additional
data: changing any of them makes the ciphertext undecryptable, so a payload cannot be moved to
an envelope for another recipient, nor claimed by another sender, without the refusal below.
"""

from __future__ import annotations

import binascii
import hashlib
import json
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pybase64
from cryptography import x509
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.concatkdf import ConcatKDFHash
from cryptography.hazmat.primitives.keywrap import InvalidUnwrap, aes_key_unwrap, aes_key_wrap
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


_KEY_BITS = 256
_IV_BYTES = 12
_TAG_BYTES = 16
_COORDINATE_BYTES = 32


def _b64u(data: bytes) -> str:
    return pybase64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64u(text: str) -> bytes:
    """Strict base64url without padding (RFC 7515 section 2): any other character is an error."""
    return pybase64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_", validate=True)


def _length_prefixed(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


def _key_encryption_key(shared: bytes, apu: bytes, apv: bytes) -> bytes:
    """RFC 7518 section 4.6.2: Concat KDF over Z with AlgorithmID, PartyUInfo, PartyVInfo, keydatalen."""
    other = (_length_prefixed(ALG.encode("ascii")) + _length_prefixed(apu) + _length_prefixed(apv)
             + struct.pack(">I", _KEY_BITS))
    return ConcatKDFHash(hashes.SHA256(), _KEY_BITS // 8, other).derive(shared)


def _epk(key: ec.EllipticCurvePublicKey) -> dict[str, str]:
    numbers = key.public_numbers()
    return {"kty": "EC", "crv": "P-256", "x": _b64u(numbers.x.to_bytes(_COORDINATE_BYTES, "big")),
            "y": _b64u(numbers.y.to_bytes(_COORDINATE_BYTES, "big"))}


def _epk_key(epk: Any) -> ec.EllipticCurvePublicKey:
    """The sender's ephemeral key; a point not on P-256 is refused by ``cryptography``."""
    if not isinstance(epk, dict) or epk.get("kty") != "EC" or epk.get("crv") != "P-256":
        raise ValueError("epk is not a P-256 key")
    x, y = (int.from_bytes(_unb64u(str(epk[c])), "big") for c in ("x", "y"))
    return ec.EllipticCurvePublicNumbers(x, y, ec.SECP256R1()).public_key()


@dataclass(frozen=True)
class RecipientCertificate:
    """The certificate of the agency a payload is encrypted to."""

    cert: x509.Certificate
    agency: AgencyCode
    fingerprint: str
    key: ec.EllipticCurvePublicKey = field(repr=False, compare=False)

    @classmethod
    def of(cls, cert: x509.Certificate) -> RecipientCertificate:
        key = cert.public_key()
        if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != AGENCY_CURVE:
            raise ConfigError("the recipient certificate has no P-256 key")
        try:
            agency = agency_of(cert)
        except InvalidCode as exc:
            raise ConfigError(f"the recipient certificate names no agency: {exc}") from None
        return cls(cert, agency, fingerprint(cert), key)

    @classmethod
    def load(cls, path: Path) -> RecipientCertificate:
        return cls.of(load_cert(path))

    def encrypt(self, kind: Kind, sender: AgencyCode, plaintext: bytes) -> etree._Element:
        """The ``EncryptedPayload`` carrying ``plaintext`` (the payload's exclusive c14n) for this recipient."""
        if kind not in PAYLOAD_NAME:
            raise ConfigError(f"a {kind} envelope is not encrypted")
        el = etree.Element(ENCRYPTED, algorithm=ALGORITHM, payload=PAYLOAD_NAME[kind])
        etree.SubElement(el, q("RecipientCertificate")).text = self.fingerprint
        etree.SubElement(el, q("JWE")).text = self._compact(str(sender).encode("ascii"), plaintext)
        return el

    def _compact(self, apu: bytes, plaintext: bytes) -> str:
        """A fresh ephemeral key and content key for every payload (ECDH-ES), the header as AAD."""
        apv = str(self.agency).encode("ascii")
        ephemeral = ec.generate_private_key(ec.SECP256R1())
        protected = _b64u(json.dumps(
            {"alg": ALG, "enc": ENC, "kid": self.fingerprint, "apu": _b64u(apu), "apv": _b64u(apv),
             "epk": _epk(ephemeral.public_key())}, separators=(",", ":")).encode("ascii"))
        content_key, iv = os.urandom(_KEY_BITS // 8), os.urandom(_IV_BYTES)
        wrapped = aes_key_wrap(_key_encryption_key(ephemeral.exchange(ec.ECDH(), self.key), apu, apv), content_key)
        sealed = AESGCM(content_key).encrypt(iv, plaintext, protected.encode("ascii"))
        return ".".join((protected, _b64u(wrapped), _b64u(iv), _b64u(sealed[:-_TAG_BYTES]),
                         _b64u(sealed[-_TAG_BYTES:])))


@dataclass(frozen=True)
class Recipient:
    """An agency's decryption identity: its private key and the certificate it was issued."""

    key: ec.EllipticCurvePrivateKey = field(repr=False)
    cert: x509.Certificate
    agency: AgencyCode
    fingerprint: str

    @classmethod
    def load(cls, cert_path: Path, key_path: Path) -> Recipient:
        cert, key = load_cert(cert_path), load_key(key_path)
        if not key_matches(cert, key):
            raise ConfigError(f"{key_path} is not the key of {cert_path}")
        return cls(key, cert, agency_of(cert), fingerprint(cert))


@dataclass(frozen=True)
class Sealed:
    """What anyone can read of an ``EncryptedPayload`` without the key."""

    payload_name: str
    recipient_certificate: str
    sender: str
    recipient: str
    compact: str
    epk: Any = field(repr=False, compare=False)


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
        epk = header["epk"]
    except (ValueError, KeyError, binascii.Error, UnicodeDecodeError) as exc:
        raise Undecryptable(f"the JWE protected header is not ours ({exc})") from None
    return Sealed(el.get("payload") or "", kid, sender, recipient, compact, epk)


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
    protected, wrapped, iv, ciphertext, tag = sealed.compact.split(".")
    if len(ciphertext) * 3 // 4 > max_bytes:
        raise Undecryptable(f"the encrypted payload is larger than {max_bytes} bytes")
    try:
        shared = recipient.key.exchange(ec.ECDH(), _epk_key(sealed.epk))
        kek = _key_encryption_key(shared, sealed.sender.encode("ascii"), sealed.recipient.encode("ascii"))
        content_key = aes_key_unwrap(kek, _unb64u(wrapped))
        if len(content_key) != _KEY_BITS // 8 or len(raw_iv := _unb64u(iv)) != _IV_BYTES:
            raise ValueError("content key or IV of the wrong length")
        plaintext = AESGCM(content_key).decrypt(raw_iv, _unb64u(ciphertext) + _unb64u(tag), protected.encode("ascii"))
    except (ValueError, KeyError, binascii.Error, InvalidUnwrap, InvalidTag) as exc:
        raise Undecryptable(f"the payload does not decrypt with {recipient.agency}'s key "
                            f"({type(exc).__name__})") from None
    if not plaintext:
        raise Undecryptable(f"the payload decrypted to nothing with {recipient.agency}'s key")
    return plaintext
