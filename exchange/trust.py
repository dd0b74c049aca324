"""The trust store: which certificates may sign envelopes, decided against the configured CA only.

Checks that depend only on the certificate (issuer signature, key usage, key type, agency code)
are cached by the certificate's SHA-256 fingerprint: a node sees the same few dozen agency
certificates all day, and re-verifying each chain per message is waste. Checks that depend on
time (validity, CRL freshness) and revocation run on every call; they cost a comparison.
"""

from __future__ import annotations

import datetime as dt
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from exchange.codes import AgencyCode
from exchange.errors import ConfigError, Expired, InvalidCode, Revoked, UntrustedSigner
from exchange.pki import CA_CERT, agency_of, load_certs, now

CACHE_SIZE = 4096
"""Bounded so that a flood of distinct certificates cannot grow memory without limit."""


@dataclass(frozen=True, slots=True)
class TrustedSigner:
    """A certificate that passed the chain checks: who it names and who issued it."""

    agency: AgencyCode
    fingerprint: str
    issuer: x509.Certificate


@dataclass
class TrustStore:
    """Trusted CA certificates, an optional CRL per CA, and the chain-check cache."""

    anchors: tuple[x509.Certificate, ...]
    crls: tuple[x509.CertificateRevocationList, ...] = ()
    _cache: OrderedDict[bytes, TrustedSigner | UntrustedSigner] = field(
        default_factory=OrderedDict, repr=False)
    chain_checks: int = 0
    """How many certificate chains were verified rather than found in the cache."""

    @classmethod
    def load(cls, trust: Path, crl: Path | None = None) -> TrustStore:
        """From a PEM file of CA certificates (or a CA directory) and an optional CRL file."""
        anchors = tuple(load_certs(trust / CA_CERT if trust.is_dir() else trust))
        store = cls(anchors)
        if crl is not None:
            store = cls(anchors, (_load_crl(crl, anchors),))
        return store

    def check(self, cert: x509.Certificate, at: dt.datetime | None = None) -> TrustedSigner:
        """The signer named by ``cert`` at time ``at``, or the refusal that says why not."""
        when = at or now()
        signer = self._chain(cert)
        _check_validity(signer.issuer, when, "the issuing CA certificate")
        _check_validity(cert, when, f"the certificate of {signer.agency}")
        self._check_revocation(cert, signer, when)
        return signer

    @staticmethod
    def check_signed_at(cert: x509.Certificate, signer: TrustedSigner,
                        signed_at: dt.datetime) -> None:
        """Refuse a signature made outside the certificate's validity period."""
        _check_validity(cert, signed_at, f"the certificate of {signer.agency} at signing time")

    def _chain(self, cert: x509.Certificate) -> TrustedSigner:
        fingerprint = cert.fingerprint(hashes.SHA256())
        cached = self._cache.get(fingerprint)
        if cached is None:
            self.chain_checks += 1
            cached = self._verify_chain(cert, fingerprint.hex())
            self._cache[fingerprint] = cached
            if len(self._cache) > CACHE_SIZE:
                self._cache.popitem(last=False)
        if isinstance(cached, UntrustedSigner):
            raise UntrustedSigner(cached.message)
        return cached

    def _verify_chain(self, cert: x509.Certificate, fingerprint: str) -> TrustedSigner | UntrustedSigner:
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
        return TrustedSigner(agency, fingerprint, issuer)

    def _check_revocation(self, cert: x509.Certificate, signer: TrustedSigner,
                          when: dt.datetime) -> None:
        for crl in self.crls:
            if crl.issuer != signer.issuer.subject:
                continue
            if crl.next_update_utc is not None and crl.next_update_utc < when:
                raise UntrustedSigner(f"the CRL of {crl.issuer.rfc4514_string()} is out of date "
                                      f"since {crl.next_update_utc:%Y-%m-%d %H:%M}Z: cannot tell "
                                      "whether the signer is revoked")
            entry = crl.get_revoked_certificate_by_serial_number(cert.serial_number)
            if entry is not None:
                raise Revoked(f"the certificate of {signer.agency} (serial "
                              f"{cert.serial_number:x}) was revoked on "
                              f"{entry.revocation_date_utc:%Y-%m-%d %H:%M}Z")


def _usage_problem(cert: x509.Certificate) -> str | None:
    if not isinstance(cert.public_key(), ec.EllipticCurvePublicKey):
        return "not an ECDSA key"
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


def _check_validity(cert: x509.Certificate, when: dt.datetime, what: str) -> None:
    if when < cert.not_valid_before_utc:
        raise Expired(f"{what} is not valid before {cert.not_valid_before_utc:%Y-%m-%d %H:%M}Z "
                      f"(checked at {when:%Y-%m-%d %H:%M}Z)")
    if when > cert.not_valid_after_utc:
        raise Expired(f"{what} expired on {cert.not_valid_after_utc:%Y-%m-%d %H:%M}Z "
                      f"(checked at {when:%Y-%m-%d %H:%M}Z)")


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
