"""The trust store: which certificates may sign envelopes, decided against the configured CA only.

Checks that depend only on the certificate (issuer signature, key usage, key type, agency code)
are cached under the certificate's bytes: a node sees the same few dozen agency certificates
all day, and re-verifying each chain per message is waste. Checks that depend on time
(validity, CRL freshness) and revocation run on every call, on values read once into the cache.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding

from exchange.clock import now
from exchange.codes import AgencyCode
from exchange.envelope.pki import AGENCY_CURVE, CA_CERT, agency_of, load_certs
from exchange.errors import BadSignature, ConfigError, Expired, InvalidCode, Revoked, UntrustedSigner

CACHE_SIZE = 4096
"""Bounded so that a flood of distinct certificates cannot grow memory without limit."""


@dataclass(frozen=True, slots=True)
class Validity:
    """A certificate's validity period, read once from the certificate."""

    not_before: dt.datetime
    not_after: dt.datetime

    @classmethod
    def of(cls, cert: x509.Certificate) -> Validity:
        return cls(cert.not_valid_before_utc, cert.not_valid_after_utc)

    def check(self, when: dt.datetime, what: str) -> None:
        if when < self.not_before:
            raise Expired(f"{what} is not valid before {self.not_before:%Y-%m-%d %H:%M}Z "
                          f"(checked at {when:%Y-%m-%d %H:%M}Z)")
        if when > self.not_after:
            raise Expired(f"{what} expired on {self.not_after:%Y-%m-%d %H:%M}Z "
                          f"(checked at {when:%Y-%m-%d %H:%M}Z)")


@dataclass(frozen=True, slots=True)
class TrustedSigner:
    """A certificate that passed the chain checks: who it names, who issued it, when it is valid."""

    cert: x509.Certificate
    agency: AgencyCode
    fingerprint: str
    issuer: x509.Name
    validity: Validity
    issuer_validity: Validity

    def check_signed_at(self, signed_at: dt.datetime) -> None:
        """Refuse a signature made outside the certificate's validity period."""
        self.validity.check(signed_at, f"the certificate of {self.agency} at signing time")


@dataclass(frozen=True, slots=True)
class Revocations:
    """One CA's CRL, reduced to what each check needs."""

    issuer: x509.Name
    next_update: dt.datetime | None
    revoked: dict[int, dt.datetime]


@dataclass
class TrustStore:
    """Trusted CA certificates, their CRLs, and the chain-check cache."""

    anchors: tuple[x509.Certificate, ...]
    crls: tuple[x509.CertificateRevocationList, ...] = ()
    chain_checks: int = 0
    """How many certificate chains were verified rather than found in the cache."""
    _cache: OrderedDict[str, TrustedSigner | UntrustedSigner] = field(
        default_factory=OrderedDict, repr=False)
    _revocations: dict[x509.Name, Revocations] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        for crl in self.crls:
            self._revocations[crl.issuer] = Revocations(
                crl.issuer, crl.next_update_utc,
                {r.serial_number: r.revocation_date_utc for r in crl})

    @classmethod
    def load(cls, trust: Path, crl: Path | None = None) -> TrustStore:
        """From a PEM file of CA certificates (or a CA directory) and an optional CRL file."""
        anchors = tuple(load_certs(trust / CA_CERT if trust.is_dir() else trust))
        crls = (_load_crl(crl, anchors),) if crl is not None else ()
        return cls(anchors, crls)

    def check(self, cert: x509.Certificate, at: dt.datetime | None = None) -> TrustedSigner:
        """The signer named by ``cert`` at time ``at``, or the refusal that says why not."""
        key = base64.b64encode(cert.public_bytes(Encoding.DER)).decode("ascii")
        return self._check(self._signer(key, lambda: cert), at or now())

    def check_encoded(self, der_base64: str, at: dt.datetime | None = None) -> TrustedSigner:
        """Like ``check``, for a base64 DER certificate as KeyInfo carries it; cached on the text."""
        return self._check(self._signer("".join(der_base64.split()), lambda: _decode(der_base64)),
                           at or now())

    def _check(self, signer: TrustedSigner, when: dt.datetime) -> TrustedSigner:
        signer.issuer_validity.check(when, "the issuing CA certificate")
        signer.validity.check(when, f"the certificate of {signer.agency}")
        self._check_revocation(signer, when)
        return signer

    def _signer(self, key: str, load: Callable[[], x509.Certificate]) -> TrustedSigner:
        cached = self._cache.get(key)
        if cached is None:
            self.chain_checks += 1
            try:
                cached = self._verify_chain(load())
            except (ValueError, UnsupportedAlgorithm) as exc:  # read lazily: names, extensions, keys
                cached = UntrustedSigner(f"the certificate cannot be read: {exc}")
            self._cache[key] = cached
            if len(self._cache) > CACHE_SIZE:
                self._cache.popitem(last=False)
        if isinstance(cached, UntrustedSigner):
            raise UntrustedSigner(cached.message)
        return cached

    def _verify_chain(self, cert: x509.Certificate) -> TrustedSigner | UntrustedSigner:
        subject = cert.subject.rfc4514_string()
        issuer = next((a for a in self.anchors if a.subject == cert.issuer), None)
        if issuer is None:
            return UntrustedSigner(f"{subject} was issued by {cert.issuer.rfc4514_string()}, "
                                   "which is not a trusted CA")
        try:
            cert.verify_directly_issued_by(issuer)
        except (ValueError, TypeError, InvalidSignature) as exc:
            return UntrustedSigner(f"{subject} does not verify against its CA: {exc or 'bad signature'}")
        problem = _usage_problem(cert)
        if problem:
            return UntrustedSigner(f"{subject}: {problem}")
        try:
            agency = agency_of(cert)
        except InvalidCode as exc:
            return UntrustedSigner(str(exc))
        return TrustedSigner(cert, agency, cert.fingerprint(hashes.SHA256()).hex(), issuer.subject,
                             Validity.of(cert), Validity.of(issuer))

    def _check_revocation(self, signer: TrustedSigner, when: dt.datetime) -> None:
        crl = self._revocations.get(signer.issuer)
        if crl is None:
            return
        if crl.next_update is not None and crl.next_update < when:
            raise UntrustedSigner(f"the CRL of {crl.issuer.rfc4514_string()} is out of date "
                                  f"since {crl.next_update:%Y-%m-%d %H:%M}Z: cannot tell "
                                  "whether the signer is revoked")
        revoked_at = crl.revoked.get(signer.cert.serial_number)
        if revoked_at is not None:
            raise Revoked(f"the certificate of {signer.agency} (serial "
                          f"{signer.cert.serial_number:x}) was revoked on {revoked_at:%Y-%m-%d %H:%M}Z")


def _decode(der_base64: str) -> x509.Certificate:
    try:
        return x509.load_der_x509_certificate(base64.b64decode("".join(der_base64.split())))
    except (ValueError, binascii.Error) as exc:
        raise BadSignature(f"the KeyInfo certificate cannot be read: {exc}") from None


def _usage_problem(cert: x509.Certificate) -> str | None:
    key = cert.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey):
        return "not an ECDSA key"
    if key.curve.name != AGENCY_CURVE:
        return f"an ECDSA key on {key.curve.name}; agency keys are P-256 ({AGENCY_CURVE}) only"
    try:
        if not cert.extensions.get_extension_for_class(x509.KeyUsage).value.digital_signature:
            return "KeyUsage lacks digitalSignature"
    except x509.ExtensionNotFound:
        return "no KeyUsage extension"
    try:
        if cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca:
            return "a CA certificate may not sign envelopes"
    except x509.ExtensionNotFound:
        pass
    return None


def _load_crl(path: Path, anchors: tuple[x509.Certificate, ...]) -> x509.CertificateRevocationList:
    try:
        crl = x509.load_pem_x509_crl(path.read_bytes())
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such CRL file") from None
    except ValueError as exc:
        raise ConfigError(f"{path}: not a PEM CRL ({exc})") from None
    issuer = next((a for a in anchors if a.subject == crl.issuer), None)
    key = issuer.public_key() if issuer else None
    if not isinstance(key, ec.EllipticCurvePublicKey) or not crl.is_signature_valid(key):
        raise ConfigError(f"{path}: the CRL is not signed by a trusted CA")
    return crl
