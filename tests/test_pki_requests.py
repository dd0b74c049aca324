"""The CA's key stays with the CA: an agency makes its key and a request (``pki request``), the CA
issues from the request (``pki issue --csr``) after checking it, and ``node init --ca-cert`` sets a
node up from the CA certificate, the agency certificate and key, with no CA key at hand."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from exchange.audit.checkpoints import Verifier, check_attestation
from exchange.codes import AgencyCode
from exchange.demo import samples
from exchange.envelope import pki
from exchange.errors import PkiError
from exchange.node.config import NodeConfig
from exchange.node.workflow import submit
from exchange.store import audit as audit_rows
from exchange.store.node import Store
from exchange.store.states import OutboxState
from tests import in_process
from tests.agencies import BIRTH, COMMUNE, POLICE
from tests.in_process import settle
from tests.node_cluster import RULES, Cluster, cli

AGENCY = str(COMMUNE)


@pytest.fixture
def ca(tmp_path: Path) -> pki.CertificateAuthority:
    return pki.init_ca(tmp_path / "ca", "Test CA")


def csr_pem(csr: x509.CertificateSigningRequest) -> bytes:
    return csr.public_bytes(serialization.Encoding.PEM)


def request_for(subject: list[tuple[x509.ObjectIdentifier, str]],
                key: ec.EllipticCurvePrivateKey | None = None) -> x509.CertificateSigningRequest:
    return (x509.CertificateSigningRequestBuilder()
            .subject_name(x509.Name([x509.NameAttribute(oid, value) for oid, value in subject]))
            .sign(key or pki.new_key(), hashes.SHA256()))


def subject_of(code: str, cn: str | None = None) -> list[tuple[x509.ObjectIdentifier, str]]:
    return [(NameOID.COUNTRY_NAME, "VN"), (NameOID.ORGANIZATION_NAME, "Xã"),
            (NameOID.COMMON_NAME, cn or code), (NameOID.SERIAL_NUMBER, code)]


def test_request_then_issue_gives_the_certificate_issue_would_give(ca: pki.CertificateAuthority,
                                                                   tmp_path: Path) -> None:
    """``pki request`` writes a 0600 P-256 key and a CSR; ``pki issue --csr`` writes only cert.pem,
    with the subject, SAN and usage of ``pki issue --agency``, for the requested key, from the CA."""
    out = tmp_path / "agency"
    assert cli("pki", "request", "--agency", AGENCY, "--name", "UBND xã Đầm Hà", "--out", out) == 0
    assert stat.S_IMODE((out / "key.pem").stat().st_mode) == 0o600
    key = pki.load_key(out / "key.pem")
    assert x509.load_pem_x509_csr((out / "request.csr").read_bytes()).is_signature_valid
    assert cli("pki", "issue", "--ca", ca.directory, "--csr", out / "request.csr", "--out", out, "--days", "30") == 0
    cert = pki.load_cert(out / "cert.pem")
    assert pki.key_matches(cert, key)
    assert pki.agency_of(cert) == COMMUNE
    cert.verify_directly_issued_by(ca.cert)
    assert cert.subject == pki.agency_subject(COMMUNE, "UBND xã Đầm Hà")
    assert cert.extensions.get_extension_for_class(x509.KeyUsage).value.digital_signature
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert 29 < (cert.not_valid_after_utc - cert.not_valid_before_utc).days <= 30
    assert sorted(p.name for p in out.iterdir()) == ["cert.pem", "key.pem", "request.csr"]


def test_issue_by_agency_still_writes_key_and_certificate(ca: pki.CertificateAuthority, tmp_path: Path) -> None:
    """The old way stays: ``pki issue --ca --agency --out`` makes the key and the certificate."""
    assert cli("pki", "issue", "--ca", ca.directory, "--agency", AGENCY, "--out", tmp_path / "a") == 0
    assert pki.key_matches(pki.load_cert(tmp_path / "a" / "cert.pem"), pki.load_key(tmp_path / "a" / "key.pem"))


def test_a_request_on_another_curve_is_refused(ca: pki.CertificateAuthority) -> None:
    """A P-384 key is refused: agency keys are P-256 only."""
    csr = request_for(subject_of(AGENCY), ec.generate_private_key(ec.SECP384R1()))
    with pytest.raises(PkiError, match="P-256"):
        ca.issue_request(csr)


def test_a_tampered_request_is_refused(ca: pki.CertificateAuthority, tmp_path: Path) -> None:
    """A request whose subject was changed after signing (another agency's code) fails its signature."""
    csr = pki.create_request(COMMUNE, pki.new_key())
    der = csr.public_bytes(serialization.Encoding.DER)
    other = str(POLICE).encode()
    assert der.count(AGENCY.encode()) >= 2
    tampered = x509.load_der_x509_csr(der.replace(AGENCY.encode(), other))
    path = tmp_path / "tampered.csr"
    path.write_bytes(csr_pem(tampered))
    with pytest.raises(PkiError, match="signature does not verify"):
        pki.issue_from_request(ca, path, tmp_path / "out")
    assert not (tmp_path / "out" / "cert.pem").exists()
    assert cli("pki", "issue", "--ca", ca.directory, "--csr", path, "--out", tmp_path / "out") == 1


@pytest.mark.parametrize(("subject", "reason"), [
    (subject_of("not-a-code"), "malformed agency code"),
    (subject_of("000.01.10.H49", cn="000.30.10.H49"), "commonName is not its agency code"),
    (subject_of("000.01.10.H49")[1:], "exactly one countryName"),
    ([(NameOID.COUNTRY_NAME, "VN"), (NameOID.ORGANIZATION_NAME, "Xã"), (NameOID.COMMON_NAME, "000.01.10.H49")],
     "exactly one serialNumber"),
    ([*subject_of("000.01.10.H49"), (NameOID.ORGANIZATIONAL_UNIT_NAME, "x")], "more than C, O, CN"),
])
def test_a_request_whose_subject_is_not_as_issue_writes_it_is_refused(
        ca: pki.CertificateAuthority, subject: list[tuple[x509.ObjectIdentifier, str]], reason: str) -> None:
    with pytest.raises(PkiError, match=reason):
        ca.issue_request(request_for(subject))


def test_a_request_naming_another_agency_in_its_san_is_refused(ca: pki.CertificateAuthority) -> None:
    key = pki.new_key()
    csr = (x509.CertificateSigningRequestBuilder().subject_name(pki.agency_subject(COMMUNE))
           .add_extension(x509.SubjectAlternativeName(
               [x509.UniformResourceIdentifier(pki.AGENCY_URI_PREFIX + str(POLICE))]), critical=False)
           .sign(key, hashes.SHA256()))
    with pytest.raises(PkiError, match="subjectAltName"):
        ca.issue_request(csr)


# node init --ca-cert -------------------------------------------------------------------------

def requested(ca: pki.CertificateAuthority, root: Path, agency: AgencyCode = COMMUNE) -> Path:
    """An agency folder with key.pem and cert.pem made by request, and the CA's public files apart."""
    out = root / "requests" / str(agency)
    pki.request_agency(agency, out)
    pki.issue_from_request(ca, out / pki.AGENCY_CSR, out)
    public = root / "public"
    public.mkdir(exist_ok=True)
    (public / "ca.pem").write_bytes((ca.directory / "ca.pem").read_bytes())
    (public / "crl.pem").write_bytes(ca.crl().public_bytes(serialization.Encoding.PEM))
    return out


def init_argv(root: Path, out: Path, *, agency: str = AGENCY, cert: Path | None = None,
              key: Path | None = None, ca_cert: Path | None = None, crl: bool = True) -> list[str | Path]:
    agency_dir = root / "requests" / agency
    return ["node", "init", "--agency", agency, "--ca-cert", ca_cert or root / "public" / "ca.pem",
            "--cert", cert or agency_dir / "cert.pem", "--key", key or agency_dir / "key.pem",
            *(("--crl", root / "public" / "crl.pem") if crl else ()), "--rules", RULES, "--out", out]


def test_init_with_the_ca_certificate_only_makes_the_node_directory_init_ca_makes(
        ca: pki.CertificateAuthority, tmp_path: Path) -> None:
    """With no CA key anywhere near, ``--ca-cert`` writes the same files, modes and node.toml as
    ``--ca`` does, the given certificate and key copied in."""
    requested(ca, tmp_path)
    assert cli("node", "init", "--agency", AGENCY, "--ca", ca.directory, "--rules", RULES,
               "--out", tmp_path / "by-ca") == 0
    (ca.directory / "ca-key.pem").unlink()  # the CA key is gone: --ca can no longer work, --ca-cert does
    assert cli("node", "init", "--agency", AGENCY, "--ca", ca.directory, "--rules", RULES,
               "--out", tmp_path / "fails") == 1
    out = tmp_path / "by-cert"
    assert cli(*init_argv(tmp_path, out)) == 0

    def layout(directory: Path) -> dict[str, int]:
        return {p.name: stat.S_IMODE(p.stat().st_mode) for p in directory.iterdir() if p.is_file()}

    assert layout(out) == layout(tmp_path / "by-ca")
    assert layout(out)["key.pem"] == 0o600
    assert (out / "node.toml").read_text() == (tmp_path / "by-ca" / "node.toml").read_text()
    assert (out / "cert.pem").read_bytes() == (tmp_path / "requests" / AGENCY / "cert.pem").read_bytes()
    assert (out / "ca.pem").read_bytes() == ca.cert.public_bytes(serialization.Encoding.PEM)
    store = Store(NodeConfig.load(out / "node.toml").database)
    try:
        (record,) = audit_rows.key_records(store.conn)
    finally:
        store.close()
    assert check_attestation(Verifier.parse(record.verifier), record.attestation, pki.load_cert(out / "cert.pem"))


def test_init_refuses_a_certificate_of_another_ca(ca: pki.CertificateAuthority, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    requested(ca, tmp_path)
    rogue = pki.init_ca(tmp_path / "rogue", "Rogue CA")
    assert cli(*init_argv(tmp_path, tmp_path / "n", ca_cert=rogue.directory / "ca.pem", crl=False)) == 1
    assert "not a trusted CA" in capsys.readouterr().err
    assert not (tmp_path / "n" / "node.toml").exists()


def test_init_refuses_a_key_that_is_not_the_certificates(ca: pki.CertificateAuthority, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    requested(ca, tmp_path)
    other = requested(ca, tmp_path, POLICE)
    assert cli(*init_argv(tmp_path, tmp_path / "n", key=other / "key.pem")) == 1
    assert "is not the key of the certificate" in capsys.readouterr().err
    assert not (tmp_path / "n" / "node.toml").exists()
    assert not (tmp_path / "n" / "key.pem").exists()


def test_init_refuses_a_certificate_of_another_agency(ca: pki.CertificateAuthority, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    requested(ca, tmp_path)
    requested(ca, tmp_path, POLICE)
    assert cli(*init_argv(tmp_path, tmp_path / "n", agency=str(POLICE),
                          cert=tmp_path / "requests" / AGENCY / "cert.pem",
                          key=tmp_path / "requests" / AGENCY / "key.pem")) == 1
    assert f"is the certificate of {AGENCY}, not of {POLICE}" in capsys.readouterr().err
    assert not (tmp_path / "n" / "node.toml").exists()


def test_init_with_ca_certificate_needs_the_certificate_and_key(ca: pki.CertificateAuthority, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    requested(ca, tmp_path)
    argv = init_argv(tmp_path, tmp_path / "n")
    without_key = argv[:argv.index("--key")] + argv[argv.index("--key") + 2:]
    assert cli(*without_key) == 1
    assert "--ca-cert needs --key" in capsys.readouterr().err
    assert not (tmp_path / "n").exists()


def test_nodes_set_up_without_the_ca_key_exchange_a_dossier(tmp_path: Path) -> None:
    """The birth route's three nodes, each set up by request and ``--ca-cert``, in one process: the
    commune's dossier reaches the police and the insurance, and their receipts come back."""
    cluster = Cluster(tmp_path)
    cluster.init_from_requests(*(str(a) for a in in_process.BIRTH_ROUTE))
    assert NodeConfig.load(cluster.config(AGENCY)).crl is not None
    with in_process.trio(cluster) as (commune, police, insurance, transport):
        spec = samples.SampleSpec(COMMUNE, BIRTH, size_kb=2, sequence=1)
        code = submit(commune, samples.to_bytes(samples.sample_dossier(spec)))
        settle(transport, commune, police, insurance)
        for node in (police, insurance):
            assert any(str(code) in p.name for p in node.config.delivery_dir.glob("*.xml"))
        counts = commune.store.counts()
        assert counts.get(f"outbox_{OutboxState.PENDING.value}", 0) == 0
        assert counts.get(f"outbox_{OutboxState.PUBLISHED.value}", 0) == 0
        assert counts.get(f"outbox_{OutboxState.DEAD.value}", 0) == 0
