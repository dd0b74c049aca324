"""A configuration bundle: what every node of the province runs, signed once by the provincial
configuration authority (X-Road's global configuration, with an audit trail).

One XML document (``urn:vn-exchange:bundle:1``): its version (a whole number that only grows),
when it takes effect and when it expires, the digest of the rule set it carries, each rule file
(name, SHA-256, base64 content), the CA certificates and the current CRL, and an enveloped
XMLDSig signature (ECDSA P-256, SHA-256) by the authority's key, with its certificate. A node
verifies the signature against its anchor (the authority's certificate, pinned at ``node init``)
before it reads anything else, and refuses with a reason code:

- ``config-bad-signature``: not signed by the anchor, or altered after signing;
- ``config-malformed``: not a bundle (shape, a file whose content does not hash to its digest,
  rules that do not load);
- ``config-rollback`` and ``config-expired``, by the node that installs it (``node.configuration``).
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from lxml import etree
from signxml import SignatureConfiguration, XMLSigner, XMLVerifier, methods  # type: ignore[attr-defined]
from signxml.algorithms import DigestAlgorithm, SignatureMethod

from exchange import clock
from exchange.errors import BundleBadSignature, BundleRefused, InvalidEnvelope, RuleError
from exchange.rules.load import load as load_rules
from exchange.xml import safexml
from exchange.xml.names import BUNDLE_NS

MAX_BUNDLE_BYTES = 16 * 1024 * 1024


def b(name: str) -> str:
    return f"{{{BUNDLE_NS}}}{name}"


@dataclass(frozen=True)
class Bundle:
    """What a verified bundle holds."""

    version: int
    effective: dt.datetime
    expires: dt.datetime
    rules_digest: str
    files: dict[str, bytes]
    """Rule files by name."""
    ca_pem: bytes
    crl_pem: bytes | None
    sha256: str
    agency_certs_pem: bytes | None = None
    """The agencies' certificates: what nodes encrypt each other's dossiers to."""
    """Of the signed document: what ``config status`` and the audit log name it by."""

    def write_rules(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        for name, data in self.files.items():
            (directory / name).write_bytes(data)


def build(rules_dir: Path, ca_pem: bytes, crl_pem: bytes | None, version: int, effective: dt.datetime,
          expires: dt.datetime, agency_certs_pem: bytes | None = None) -> etree._Element:
    """The unsigned document; the rules must load (``rules check``) or nothing is built."""
    if version < 1:
        raise BundleRefused(f"version {version}: a bundle's version is a whole number from 1")
    if expires <= effective:
        raise BundleRefused(f"the bundle would expire ({clock.utc(expires)}) before it takes effect "
                          f"({clock.utc(effective)})")
    rules = load_rules(rules_dir)  # RuleError with every problem: a bundle never carries broken rules
    _certificates(ca_pem)
    root = etree.Element(b("Bundle"), nsmap={None: BUNDLE_NS}, version="1")  # type: ignore[dict-item]
    for name, text in (("Version", str(version)), ("Effective", clock.utc(effective)),
                       ("Expires", clock.utc(expires)), ("RulesDigest", rules.digest)):
        etree.SubElement(root, b(name)).text = text
    rules_el = etree.SubElement(root, b("Rules"))
    for path in sorted(p for p in rules_dir.rglob("*.xml") if p.is_file()):
        data = path.read_bytes()
        etree.SubElement(rules_el, b("File"), name=str(path.relative_to(rules_dir)),
                         sha256=hashlib.sha256(data).hexdigest()).text = base64.b64encode(data).decode("ascii")
    etree.SubElement(root, b("CaCertificates")).text = ca_pem.decode("ascii")
    if crl_pem is not None:
        x509.load_pem_x509_crl(crl_pem)
        etree.SubElement(root, b("Crl")).text = crl_pem.decode("ascii")
    if agency_certs_pem:
        _certificates(agency_certs_pem)
        etree.SubElement(root, b("AgencyCertificates")).text = agency_certs_pem.decode("ascii")
    return root


def sign(root: etree._Element, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate) -> bytes:
    """The document signed by the authority (enveloped XMLDSig, ECDSA-SHA256)."""
    signer = XMLSigner(method=methods.enveloped, signature_algorithm=SignatureMethod.ECDSA_SHA256,
                       digest_algorithm=DigestAlgorithm.SHA256)
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    signed = signer.sign(root, key=key_pem, cert=cert.public_bytes(serialization.Encoding.PEM).decode("ascii"))
    return bytes(etree.tostring(signed, xml_declaration=True, encoding="UTF-8"))


def verify(data: bytes, anchor: x509.Certificate, *, source: str = "bundle") -> Bundle:
    """The bundle, once its signature verifies against ``anchor`` and its content is whole."""
    try:
        root = safexml.parse(data, max_bytes=MAX_BUNDLE_BYTES, source=source)
    except InvalidEnvelope as exc:
        raise BundleRefused(f"{source}: {exc.message}") from None
    if root.tag != b("Bundle"):
        raise BundleRefused(f"{source}: the root is {etree.QName(root).localname}, not a configuration Bundle")
    anchor_pem = anchor.public_bytes(serialization.Encoding.PEM).decode("ascii")
    config = SignatureConfiguration(signature_methods=frozenset({SignatureMethod.ECDSA_SHA256}),
                                    digest_algorithms=frozenset({DigestAlgorithm.SHA256}))
    try:
        verified = XMLVerifier().verify(root, x509_cert=anchor_pem, expect_config=config)
    except Exception as exc:  # noqa: BLE001 - signxml raises several types; each is a refusal
        raise BundleBadSignature(f"{source}: not signed by the configuration authority this node trusts "
                           f"({type(exc).__name__}: {exc})") from None
    signed = verified.signed_xml if not isinstance(verified, list) else None
    if signed is None or signed.tag != b("Bundle"):
        raise BundleBadSignature(f"{source}: the signature does not cover the bundle")
    return _read(signed, hashlib.sha256(data).hexdigest(), source)


def _read(root: etree._Element, sha256: str, source: str) -> Bundle:
    def text(name: str) -> str:
        value = root.findtext(b(name))
        if value is None or not value.strip():
            raise BundleRefused(f"{source}: {name} is missing")
        return value.strip()

    try:
        version = int(text("Version"))
        effective, expires = clock.parse(text("Effective")), clock.parse(text("Expires"))
    except ValueError as exc:
        raise BundleRefused(f"{source}: {exc}") from None
    files = {}
    for el in root.iterfind(f"{b('Rules')}/{b('File')}"):
        name = el.get("name", "")
        if not name or "/" in name or name.startswith(".") or not name.endswith(".xml"):
            raise BundleRefused(f"{source}: rule file name {name!r} (expected NAME.xml, no folders)")
        data = base64.b64decode("".join((el.text or "").split()))
        if hashlib.sha256(data).hexdigest() != el.get("sha256"):
            raise BundleRefused(f"{source}: rule file {name} does not hash to its sha256")
        files[name] = data
    ca_pem = text("CaCertificates").encode("ascii")
    _certificates(ca_pem)
    crl = root.findtext(b("Crl"))
    agencies = root.findtext(b("AgencyCertificates"))
    if agencies:
        _certificates(agencies.encode("ascii"))
    bundle = Bundle(version, effective, expires, text("RulesDigest"), files, ca_pem,
                    crl.strip().encode("ascii") + b"\n" if crl else None, sha256,
                    agencies.strip().encode("ascii") + b"\n" if agencies else None)
    _check_rules(bundle, source)
    return bundle


def _check_rules(bundle: Bundle, source: str) -> None:
    """The rules it carries load, and are the rules its digest names."""
    with tempfile.TemporaryDirectory() as folder:
        bundle.write_rules(Path(folder))
        try:
            rules = load_rules(Path(folder))
        except RuleError as exc:
            raise BundleRefused(f"{source}: its rules do not load: {exc.problems[0]}") from None
    if rules.digest != bundle.rules_digest:
        raise BundleRefused(f"{source}: its rules have digest {rules.digest}, not the {bundle.rules_digest} it states")


def _certificates(pem: bytes) -> list[x509.Certificate]:
    try:
        certs = x509.load_pem_x509_certificates(pem)
    except ValueError as exc:
        raise BundleRefused(f"CA certificates: {exc}") from None
    return certs


def read_unverified(path: Path) -> Bundle:
    """A bundle this node verified when it installed it, read back from its own state folder."""
    data = path.read_bytes()
    root = safexml.parse(data, max_bytes=MAX_BUNDLE_BYTES, source=str(path))
    version = int(root.findtext(b("Version")) or "0")
    effective = clock.parse(root.findtext(b("Effective")) or "")
    expires = clock.parse(root.findtext(b("Expires")) or "")
    crl = root.findtext(b("Crl"))
    return Bundle(version, effective, expires, root.findtext(b("RulesDigest")) or "", {},
                  (root.findtext(b("CaCertificates")) or "").encode("ascii"),
                  crl.encode("ascii") if crl else None, hashlib.sha256(data).hexdigest())
