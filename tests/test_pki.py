"""The provincial CA: what its certificates carry, how keys are stored, revocation and CRLs."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID

from exchange.envelope import pki
from exchange.errors import ConfigError, PkiError
from tests.agencies import QUANG_AN

AGENCY = QUANG_AN


@pytest.fixture
def ca(tmp_path: Path) -> pki.CertificateAuthority:
    return pki.init_ca(tmp_path / "ca", "Test CA")


def test_ca_certificate_may_only_sign_certificates_and_crls(ca: pki.CertificateAuthority) -> None:
    """The CA is a CA with path length 0, key usage keyCertSign and cRLSign, and an SKI."""
    ext = ca.cert.extensions
    assert ext.get_extension_for_class(x509.BasicConstraints).value.ca
    assert ext.get_extension_for_class(x509.BasicConstraints).value.path_length == 0
    usage = ext.get_extension_for_class(x509.KeyUsage).value
    assert usage.key_cert_sign
    assert usage.crl_sign
    assert not usage.digital_signature
    ext.get_extension_for_class(x509.SubjectKeyIdentifier)


def test_agency_certificate_names_its_code_twice(ca: pki.CertificateAuthority, tmp_path: Path) -> None:
    """An agency certificate carries the code as serialNumber and SAN URI, for signing only."""
    cert = pki.issue_agency(ca, AGENCY, tmp_path / "a")
    assert cert.subject.get_attributes_for_oid(NameOID.SERIAL_NUMBER)[0].value == str(AGENCY)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [f"urn:vn-exchange:agency:{AGENCY}"]
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage)
    assert usage.critical
    assert usage.value.digital_signature
    assert not usage.value.key_cert_sign
    aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    ski = ca.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert aki.key_identifier == ski.digest
    assert pki.agency_of(cert) == AGENCY


def test_private_keys_are_0600(ca: pki.CertificateAuthority, tmp_path: Path) -> None:
    """The CA key and agency keys are readable by their owner only; certificates are public."""
    pki.issue_agency(ca, AGENCY, tmp_path / "a")
    for key in (tmp_path / "ca" / pki.CA_KEY, tmp_path / "a" / pki.AGENCY_KEY):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "a" / pki.AGENCY_CERT).stat().st_mode) == 0o644


def test_existing_ca_is_never_overwritten(ca: pki.CertificateAuthority, tmp_path: Path) -> None:
    """Creating a CA where one exists fails and leaves the old key in place."""
    before = (tmp_path / "ca" / pki.CA_KEY).read_bytes()
    with pytest.raises(PkiError, match="refusing to replace"):
        pki.init_ca(tmp_path / "ca", "Another")
    assert (tmp_path / "ca" / pki.CA_KEY).read_bytes() == before


def test_revocation_lands_in_a_signed_crl(ca: pki.CertificateAuthority, tmp_path: Path) -> None:
    """A revoked certificate appears in the next CRL, which the CA's key signed."""
    cert = pki.issue_agency(ca, AGENCY, tmp_path / "a")
    assert ca.revoke(cert, "key compromise")
    assert not ca.revoke(cert)
    crl = ca.crl()
    assert crl.get_revoked_certificate_by_serial_number(cert.serial_number) is not None
    assert crl.is_signature_valid(ca.cert.public_key())  # type: ignore[arg-type]


def test_foreign_certificate_cannot_be_revoked(ca: pki.CertificateAuthority, tmp_path: Path) -> None:
    """Revoking a certificate another CA issued is refused."""
    other = pki.init_ca(tmp_path / "other", "Other CA")
    cert = pki.issue_agency(other, AGENCY, tmp_path / "b")
    with pytest.raises(PkiError, match="not issued by this CA"):
        ca.revoke(cert)


def test_unreadable_key_names_the_file(tmp_path: Path) -> None:
    """A key file that is not a PEM key is reported with its path."""
    bad = tmp_path / "key.pem"
    bad.write_text("not a key")
    with pytest.raises(ConfigError, match=str(bad)):
        pki.load_key(bad)


def test_stale_crl_fails_closed(ca: pki.CertificateAuthority, tmp_path: Path) -> None:
    """When the CRL is past its next update, no signer of that CA is trusted."""
    import datetime as dt

    from cryptography.hazmat.primitives.serialization import Encoding

    from exchange.envelope.trust import TrustStore
    from exchange.errors import UntrustedSigner

    cert = pki.issue_agency(ca, AGENCY, tmp_path / "a")
    crl_path = tmp_path / "crl.pem"
    crl_path.write_bytes(ca.crl(days=1).public_bytes(Encoding.PEM))
    store = TrustStore.load(tmp_path / "ca", crl_path)
    store.check(cert)
    with pytest.raises(UntrustedSigner, match="out of date"):
        store.check(cert, at=dt.datetime.now(dt.UTC) + dt.timedelta(days=2))


def test_crl_from_another_ca_is_rejected(ca: pki.CertificateAuthority, tmp_path: Path) -> None:
    """A CRL not signed by a trusted CA is a configuration error, not silently ignored."""
    from cryptography.hazmat.primitives.serialization import Encoding

    from exchange.envelope.trust import TrustStore

    other = pki.init_ca(tmp_path / "other", "Other CA")
    crl_path = tmp_path / "crl.pem"
    crl_path.write_bytes(other.crl().public_bytes(Encoding.PEM))
    with pytest.raises(ConfigError, match="not signed by a trusted CA"):
        TrustStore.load(tmp_path / "ca", crl_path)
