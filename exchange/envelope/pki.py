"""The provincial certificate authority and the agency certificates it issues.

A CA directory holds ``ca.pem``, ``ca-key.pem`` (0600) and ``revoked.json`` (the revocation
database from which CRLs are made). An agency certificate carries its agency code twice: as the
subject serialNumber and as a SAN URI ``urn:vn-exchange:agency:<code>``; both must agree.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from exchange import clock
from exchange.codes import AgencyCode
from exchange.errors import ConfigError, InvalidCode, PkiError
from exchange.files import write_atomic, write_private

CA_CERT = "ca.pem"
CA_KEY = "ca-key.pem"
REVOKED = "revoked.json"
AGENCY_CERT = "cert.pem"
AGENCY_KEY = "key.pem"
AGENCY_CSR = "request.csr"
AGENCY_URI_PREFIX = "urn:vn-exchange:agency:"

AGENCY_CURVE = "secp256r1"
"""The one curve of agency and CA keys (P-256): what xmlsec1 and every peer verify."""

CA_DAYS = 3650
AGENCY_DAYS = 730
CRL_DAYS = 7
CLOCK_SKEW = dt.timedelta(minutes=5)
"""Certificates start a little in the past so that a peer whose clock lags still accepts them."""


def _check_curve(key: ec.EllipticCurvePublicKey) -> None:
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != AGENCY_CURVE:
        curve = key.curve.name if isinstance(key, ec.EllipticCurvePublicKey) else type(key).__name__
        raise PkiError(f"agency keys are ECDSA P-256 ({AGENCY_CURVE}) only, not {curve}")


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def load_cert(path: Path) -> x509.Certificate:
    return load_certs(path)[0]


def load_certs(path: Path) -> list[x509.Certificate]:
    """Every certificate in a PEM file, or a ConfigError naming the file."""
    try:
        certs = x509.load_pem_x509_certificates(path.read_bytes())
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such certificate file") from None
    except ValueError as exc:
        raise ConfigError(f"{path}: not a PEM certificate ({exc})") from None
    return certs


def load_key(path: Path) -> ec.EllipticCurvePrivateKey:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such key file") from None
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{path}: not an unencrypted PEM private key ({exc})") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != AGENCY_CURVE:
        raise ConfigError(f"{path}: expected an ECDSA P-256 private key")
    return key


def agency_of(cert: x509.Certificate) -> AgencyCode:
    """The agency code a certificate was issued to; both places must name the same code."""
    serials = cert.subject.get_attributes_for_oid(NameOID.SERIAL_NUMBER)
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        uris = [u for u in san.get_values_for_type(x509.UniformResourceIdentifier)
                if u.startswith(AGENCY_URI_PREFIX)]
    except x509.ExtensionNotFound:
        uris = []
    codes = {str(s.value) for s in serials} | {u[len(AGENCY_URI_PREFIX):] for u in uris}
    if len(codes) != 1 or len(serials) != 1 or len(uris) != 1:
        raise InvalidCode(f"certificate {cert.subject.rfc4514_string()} names no single agency "
                          f"code in its serialNumber and SAN URI (found {sorted(codes)})")
    return AgencyCode(codes.pop())


@dataclass(frozen=True)
class CertificateAuthority:
    """A loaded CA: its certificate, its key and the directory its state lives in."""

    directory: Path
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @classmethod
    def load(cls, directory: Path) -> CertificateAuthority:
        return cls(directory, load_cert(directory / CA_CERT), load_key(directory / CA_KEY))

    def _ski(self) -> x509.SubjectKeyIdentifier:
        return self.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value

    def issue(
        self,
        agency: AgencyCode,
        public_key: ec.EllipticCurvePublicKey,
        *,
        name: str | None = None,
        not_before: dt.datetime | None = None,
        days: int = AGENCY_DAYS,
    ) -> x509.Certificate:
        """An agency signing certificate: digitalSignature only, code in serialNumber and SAN;
        for a P-256 key only."""
        _check_curve(public_key)
        start = not_before or clock.now() - CLOCK_SKEW
        builder = (
            x509.CertificateBuilder()
            .subject_name(agency_subject(agency, name))
            .issuer_name(self.cert.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(start + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_key_usage(digital_signature=True), critical=True)
            .add_extension(x509.SubjectAlternativeName(
                [x509.UniformResourceIdentifier(AGENCY_URI_PREFIX + str(agency))]), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(
                self._ski()), critical=False)
        )
        return builder.sign(self.key, hashes.SHA256())

    def issue_request(self, csr: x509.CertificateSigningRequest, *, days: int = AGENCY_DAYS) -> x509.Certificate:
        """An agency signing certificate for the key of a request (``exchange pki request``), once
        the request is checked (``check_request``); the certificate's extensions are the CA's own,
        whatever the request asked for."""
        agency, name = check_request(csr)
        public_key = csr.public_key()
        if not isinstance(public_key, ec.EllipticCurvePublicKey):  # check_request refused it already
            raise PkiError("agency keys are ECDSA P-256 only")
        return self.issue(agency, public_key, name=name, days=days)

    def revoked(self) -> list[dict[str, str]]:
        path = self.directory / REVOKED
        if not path.exists():
            return []
        try:
            entries: list[dict[str, str]] = json.loads(path.read_text("utf-8"))["revoked"]
        except (ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"{path}: not a revocation database ({exc})") from None
        return entries

    def revoke(self, cert: x509.Certificate, reason: str = "unspecified") -> bool:
        """Record ``cert`` as revoked; False when it already was. Refuses a foreign certificate."""
        if cert.issuer != self.cert.subject:
            raise PkiError(f"certificate {cert.subject.rfc4514_string()} was not issued by this CA")
        entries = self.revoked()
        serial = format(cert.serial_number, "x")
        if any(e["serial"] == serial for e in entries):
            return False
        entries.append({"serial": serial, "revoked_at": clock.now().isoformat(),
                        "subject": cert.subject.rfc4514_string(), "reason": reason})
        body = json.dumps({"revoked": entries}, indent=2, ensure_ascii=False) + "\n"
        write_atomic(self.directory / REVOKED, body.encode("utf-8"))
        return True

    def crl(self, *, days: int = CRL_DAYS) -> x509.CertificateRevocationList:
        """A CRL of every revoked certificate, signed by the CA, valid for ``days``."""
        issued = clock.now() - CLOCK_SKEW
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(self.cert.subject)
            .last_update(issued)
            .next_update(issued + dt.timedelta(days=days))
            .add_extension(x509.CRLNumber(int(issued.timestamp())), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(
                self._ski()), critical=False)
        )
        for entry in self.revoked():
            revoked = (
                x509.RevokedCertificateBuilder()
                .serial_number(int(entry["serial"], 16))
                .revocation_date(dt.datetime.fromisoformat(entry["revoked_at"]))
                .build()
            )
            builder = builder.add_revoked_certificate(revoked)
        return builder.sign(self.key, hashes.SHA256())


def agency_subject(agency: AgencyCode, name: str | None = None) -> x509.Name:
    """The subject of an agency certificate (and of its request): C=VN, O=name, CN=code,
    serialNumber=code."""
    return x509.Name([
        x509.NameAttribute(NameOID.COUNTRY_NAME, "VN"),
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, name or f"Agency {agency}"),
        x509.NameAttribute(NameOID.COMMON_NAME, str(agency)),
        x509.NameAttribute(NameOID.SERIAL_NUMBER, str(agency)),
    ])


def _key_usage(*, digital_signature: bool = False, ca: bool = False) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=digital_signature, content_commitment=False, key_encipherment=False,
        data_encipherment=False, key_agreement=False, key_cert_sign=ca, crl_sign=ca,
        encipher_only=False, decipher_only=False,
    )


def create_ca(name: str, *, days: int = CA_DAYS) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A self-signed provincial CA that may sign agency certificates and CRLs, nothing below."""
    key = new_key()
    subject = x509.Name([
        x509.NameAttribute(NameOID.COUNTRY_NAME, "VN"),
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, name),
        x509.NameAttribute(NameOID.COMMON_NAME, name),
    ])
    start = clock.now() - CLOCK_SKEW
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(ca=True), critical=True)
        .add_extension(ski, critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


CA_DIR_MODE = 0o700
"""The CA folder, whatever the umask."""


def init_ca(directory: Path, name: str, *, force: bool = False) -> CertificateAuthority:
    """Create a CA in ``directory``; refuses to overwrite an existing CA unless ``force``."""
    if (directory / CA_KEY).exists() and not force:
        raise PkiError(f"{directory / CA_KEY} exists: refusing to replace a CA (use --force)")
    cert, key = create_ca(name)
    directory.mkdir(mode=CA_DIR_MODE, parents=True, exist_ok=True)
    directory.chmod(CA_DIR_MODE)  # the CA's key and its revocation database: its operator's only
    write_private(directory / CA_KEY, key_pem(key))
    write_atomic(directory / CA_CERT, cert_pem(cert))
    return CertificateAuthority(directory, cert, key)


def issue_agency(
    ca: CertificateAuthority, agency: AgencyCode, out: Path, *,
    name: str | None = None, days: int = AGENCY_DAYS, force: bool = False,
) -> x509.Certificate:
    """Generate an agency key and certificate into ``out/key.pem`` (0600) and ``out/cert.pem``."""
    if (out / AGENCY_KEY).exists() and not force:
        raise PkiError(f"{out / AGENCY_KEY} exists: refusing to replace a key (use --force)")
    key = new_key()
    cert = ca.issue(agency, key.public_key(), name=name, days=days)
    write_private(out / AGENCY_KEY, key_pem(key))
    write_atomic(out / AGENCY_CERT, cert_pem(cert))
    return cert


# Requests: the agency makes its key, the CA signs its certificate; the CA's key never travels --

def create_request(agency: AgencyCode, key: ec.EllipticCurvePrivateKey, *,
                   name: str | None = None) -> x509.CertificateSigningRequest:
    """A PKCS#10 request for an agency certificate: the subject as the CA writes it, the agency's
    SAN URI, signed by the agency's own key."""
    return (
        x509.CertificateSigningRequestBuilder()
        .subject_name(agency_subject(agency, name))
        .add_extension(x509.SubjectAlternativeName(
            [x509.UniformResourceIdentifier(AGENCY_URI_PREFIX + str(agency))]), critical=False)
        .sign(key, hashes.SHA256())
    )


def request_agency(agency: AgencyCode, out: Path, *, name: str | None = None,
                   force: bool = False) -> x509.CertificateSigningRequest:
    """Generate an agency key into ``out/key.pem`` (0600) and its request into ``out/request.csr``."""
    if (out / AGENCY_KEY).exists() and not force:
        raise PkiError(f"{out / AGENCY_KEY} exists: refusing to replace a key (use --force)")
    key = new_key()
    csr = create_request(agency, key, name=name)
    write_private(out / AGENCY_KEY, key_pem(key))
    write_atomic(out / AGENCY_CSR, csr.public_bytes(serialization.Encoding.PEM))
    return csr


def load_request(path: Path) -> x509.CertificateSigningRequest:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise PkiError(f"{path}: no such request file") from None
    try:
        return x509.load_pem_x509_csr(data)
    except ValueError as exc:
        raise PkiError(f"{path}: not a PEM certificate request ({exc})") from None


def check_request(csr: x509.CertificateSigningRequest) -> tuple[AgencyCode, str | None]:
    """The agency code and name a request asks a certificate for, once its signature verifies,
    its key is P-256 and its subject is as ``issue`` writes it (C=VN, O, CN and serialNumber the
    same well-formed agency code, and a SAN URI, if any, naming that code); PkiError otherwise."""
    try:
        if not csr.is_signature_valid:
            raise PkiError("the request's signature does not verify: it was altered, or not signed "
                           "by the key it carries")
        public_key = csr.public_key()
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise PkiError(f"the request cannot be read: {exc}") from None
    if not isinstance(public_key, ec.EllipticCurvePublicKey):
        raise PkiError(f"agency keys are ECDSA P-256 ({AGENCY_CURVE}) only, not {type(public_key).__name__}")
    _check_curve(public_key)
    agency, name = _requested_subject(csr.subject)
    try:
        san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        uris = set(san.get_values_for_type(x509.UniformResourceIdentifier))
    except x509.ExtensionNotFound:
        uris = set()
    if uris - {AGENCY_URI_PREFIX + str(agency)}:
        raise PkiError(f"the request's subjectAltName names {sorted(uris)}, not only "
                       f"{AGENCY_URI_PREFIX + str(agency)}")
    return agency, name


def _requested_subject(subject: x509.Name) -> tuple[AgencyCode, str]:
    """The agency code and name of a request's subject, if it is as ``issue`` writes it."""

    def one(oid: x509.ObjectIdentifier, what: str) -> str:
        values = subject.get_attributes_for_oid(oid)
        if len(values) != 1:
            raise PkiError(f"the request's subject {subject.rfc4514_string()} must hold exactly one {what}")
        return str(values[0].value)

    code = one(NameOID.SERIAL_NUMBER, "serialNumber (the agency code)")
    try:
        agency = AgencyCode.parse(code)
    except InvalidCode as exc:
        raise PkiError(f"the request names a malformed agency code: {exc}") from None
    if str(agency) != code:
        raise PkiError(f"the request's agency code {code!r} is not written as {str(agency)!r}")
    if one(NameOID.COMMON_NAME, "commonName") != code:
        raise PkiError(f"the request's commonName is not its agency code {code}")
    if one(NameOID.COUNTRY_NAME, "countryName") != "VN":
        raise PkiError("the request's countryName is not VN")
    name = one(NameOID.ORGANIZATION_NAME, "organizationName (the agency's name)")
    if len(subject) != 4:
        raise PkiError(f"the request's subject {subject.rfc4514_string()} holds more than C, O, CN "
                       "and serialNumber")
    return agency, name


def issue_from_request(ca: CertificateAuthority, request: Path, out: Path, *,
                       days: int = AGENCY_DAYS) -> x509.Certificate:
    """Issue ``out/cert.pem`` for the checked request in ``request``: the key stays with the agency."""
    cert = ca.issue_request(load_request(request), days=days)
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / AGENCY_CERT, cert_pem(cert))
    return cert


def key_matches(cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> bool:
    """Whether ``key`` is the private half of ``cert``'s public key."""
    return cert.public_key() == key.public_key()
