"""The provincial configuration authority: a key and a certificate for that role only, issued by
the CA, that signs bundles. Its certificate names no agency (no agency code in its subject or
SAN), so no node takes an envelope signed with it; nodes pin it as their anchor."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from exchange import clock
from exchange.envelope import pki
from exchange.errors import ConfigError
from exchange.files import write_atomic, write_private

CERT = "authority.pem"
KEY = "authority-key.pem"
ROLE = "configuration-authority"
DAYS = 3 * 365


@dataclass(frozen=True)
class Authority:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @classmethod
    def load(cls, directory: Path) -> Authority:
        return cls(pki.load_cert(directory / CERT), pki.load_key(directory / KEY))


def init_authority(ca_dir: Path, out: Path, *, name: str = "Quảng Ninh configuration authority",
                   force: bool = False) -> Path:
    """A new authority key (0600) and its certificate from the CA; returns the certificate's path,
    the anchor every node is set up with."""
    if (out / KEY).exists() and not force:
        raise ConfigError(f"{out / KEY} exists: an authority has its key already (--force replaces it, "
                          "and every node must then be given the new anchor)")
    ca = pki.CertificateAuthority.load(ca_dir)
    key = pki.new_key()
    start = clock.now() - pki.CLOCK_SKEW
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COUNTRY_NAME, "VN"),
                                     x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, ROLE),
                                     x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(ca.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(start + dt.timedelta(days=DAYS))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=False,
                                         crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
            .sign(ca.key, hashes.SHA256()))
    out.mkdir(parents=True, exist_ok=True)
    write_private(out / KEY, pki.key_pem(key))
    write_atomic(out / CERT, pki.cert_pem(cert))
    return out / CERT
