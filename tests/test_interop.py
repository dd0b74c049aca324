"""Independent judges: xmlsec1 verifies and signs, xmllint validates against our XSDs offline."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from lxml import etree

from exchange.cli import main
from exchange.demo import samples
from exchange.envelope import pki
from exchange.envelope.messages import Ack, Outcome, receipt_element
from exchange.envelope.model import envelope_element
from exchange.xml import schemas
from exchange.xml.names import DS_NS
from tests.agencies import COMMUNE, POLICE
from tests.conftest import Pki, make_dossier, require_tool, transfer_header

SIGNATURE_TEMPLATE = f"""
<ds:Signature xmlns:ds="{DS_NS}">
  <ds:SignedInfo>
    <ds:CanonicalizationMethod Algorithm="http://www.w3.org/2001/10/xml-exc-c14n#"/>
    <ds:SignatureMethod Algorithm="http://www.w3.org/2001/04/xmldsig-more#ecdsa-sha256"/>
    <ds:Reference URI="">
      <ds:Transforms>
        <ds:Transform Algorithm="http://www.w3.org/2000/09/xmldsig#enveloped-signature"/>
        <ds:Transform Algorithm="http://www.w3.org/2001/10/xml-exc-c14n#"/>
      </ds:Transforms>
      <ds:DigestMethod Algorithm="http://www.w3.org/2001/04/xmlenc#sha256"/>
      <ds:DigestValue/>
    </ds:Reference>
  </ds:SignedInfo>
  <ds:SignatureValue/>
  <ds:KeyInfo><ds:X509Data><ds:X509Certificate/></ds:X509Data></ds:KeyInfo>
</ds:Signature>"""


def _xmlsec_verify(ca_pem: Path, document: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([require_tool("xmlsec1"), "--verify", "--trusted-pem", str(ca_pem),
                           str(document)], capture_output=True, text=True, timeout=60)


def test_xmlsec1_accepts_our_envelope(pki_env: Pki, sealed: bytes, tmp_path: Path) -> None:
    """xmlsec1, trusting only the provincial CA, verifies an envelope we sealed."""
    path = tmp_path / "envelope.xml"
    path.write_bytes(sealed)
    result = _xmlsec_verify(pki_env.root / "ca" / pki.CA_CERT, path)
    assert result.returncode == 0, result.stderr
    assert "OK" in result.stdout + result.stderr


def test_xmlsec1_refuses_tampered_envelope(pki_env: Pki, sealed: bytes, tmp_path: Path) -> None:
    """xmlsec1 refuses the same envelope once one header field is changed."""
    path = tmp_path / "envelope.xml"
    path.write_bytes(sealed.replace(b"<Step>police</Step>", b"<Step>insurance</Step>"))
    result = _xmlsec_verify(pki_env.root / "ca" / pki.CA_CERT, path)
    assert result.returncode != 0


def test_xmlsec1_refuses_envelope_from_untrusted_ca(other_pki: Pki, pki_env: Pki, tmp_path: Path) -> None:
    """xmlsec1 refuses an envelope whose signer chains to a CA it was not told to trust."""
    dossier = make_dossier()
    path = tmp_path / "envelope.xml"
    path.write_bytes(other_pki.signer(COMMUNE).seal(transfer_header(dossier), dossier))
    result = _xmlsec_verify(pki_env.root / "ca" / pki.CA_CERT, path)
    assert result.returncode != 0


def _xmlsec_signed(pki_env: Pki, tmp_path: Path) -> Path:
    """An envelope built by us, but signed by xmlsec1 with the commune's key and certificate."""
    pki_env.signer(COMMUNE)
    agency_dir = pki_env.agency_dir(COMMUNE)
    dossier = make_dossier()
    root = envelope_element(transfer_header(dossier), dossier)
    root.append(etree.fromstring(SIGNATURE_TEMPLATE))
    template = tmp_path / "template.xml"
    template.write_bytes(etree.tostring(root, xml_declaration=True, encoding="UTF-8"))
    out = tmp_path / "xmlsec-signed.xml"
    subprocess.run([require_tool("xmlsec1"), "--sign", "--privkey-pem",
                    f"{agency_dir / pki.AGENCY_KEY},{agency_dir / pki.AGENCY_CERT}",
                    "--output", str(out), str(template)], check=True, capture_output=True, timeout=60)
    return out


def test_envelope_signed_by_xmlsec1_is_accepted(pki_env: Pki, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """`exchange envelope verify` accepts an envelope that xmlsec1 signed with an agency key."""
    path = _xmlsec_signed(pki_env, tmp_path)
    code = main(["envelope", "verify", "--trust", str(pki_env.root / "ca" / pki.CA_CERT), str(path)])
    assert code == 0, capsys.readouterr().err
    assert f"from      {COMMUNE}" in capsys.readouterr().out


def test_tampered_xmlsec1_envelope_is_refused(pki_env: Pki, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    """An xmlsec1-signed envelope with a changed recipient is refused with bad-signature."""
    path = _xmlsec_signed(pki_env, tmp_path)
    path.write_bytes(path.read_bytes().replace(f"<To>{POLICE}</To>".encode(), b"<To>000.31.10.H49</To>"))
    code = main(["envelope", "verify", "--trust", str(pki_env.root / "ca"), str(path)])
    assert code == 1
    assert "bad-signature" in capsys.readouterr().err


def _xmllint(schema: str, document: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([require_tool("xmllint"), "--nonet", "--noout", "--schema",
                           str(schemas.schema_dir() / schema), str(document)],
                          capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("size_kb", [1, 10, 100])
def test_xmllint_validates_our_envelopes(pki_env: Pki, tmp_path: Path, size_kb: int) -> None:
    """xmllint, offline, finds our sealed transfers valid against envelope.xsd."""
    dossier = make_dossier(size_kb=size_kb)
    path = tmp_path / "envelope.xml"
    path.write_bytes(pki_env.signer(COMMUNE).seal(transfer_header(dossier), dossier))
    result = _xmllint(schemas.ENVELOPE, path)
    assert result.returncode == 0, result.stderr


def test_xmllint_validates_receipt_envelope(pki_env: Pki, tmp_path: Path) -> None:
    """xmllint finds a sealed receipt valid against envelope.xsd and its receipt valid alone."""
    from exchange.envelope.model import Header, Kind

    receipt = receipt_element((Ack("00000000-0000-4000-8000-000000000001", "a" * 64, Outcome.REFUSED,
                                   "bad-signature", "Chữ ký không hợp lệ"),))
    (tmp_path / "receipt.xml").write_bytes(etree.tostring(receipt, encoding="UTF-8"))
    assert _xmllint(schemas.RECEIPT, tmp_path / "receipt.xml").returncode == 0
    sealed = pki_env.signer(POLICE).seal(Header(kind=Kind.RECEIPT, sender=POLICE, recipient=COMMUNE),
                                         receipt)
    (tmp_path / "envelope.xml").write_bytes(sealed)
    result = _xmllint(schemas.ENVELOPE, tmp_path / "envelope.xml")
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("procedure", ["2.000986", "2.002622", "1.012784", "1.004222"])
def test_xmllint_validates_sample_dossiers(tmp_path: Path, procedure: str) -> None:
    """Sample dossiers of every kind are valid for xmllint against dossier.xsd."""
    from exchange.codes import ProcedureCode

    path = tmp_path / "dossier.xml"
    path.write_bytes(samples.to_bytes(samples.sample_dossier(
        samples.SampleSpec(COMMUNE, ProcedureCode(procedure)))))
    result = _xmllint(schemas.DOSSIER, path)
    assert result.returncode == 0, result.stderr


def test_xmllint_refuses_an_invalid_envelope(sealed: bytes, tmp_path: Path) -> None:
    """xmllint agrees with us that an envelope with a bad agency code is invalid."""
    path = tmp_path / "envelope.xml"
    path.write_bytes(sealed.replace(f"<To>{POLICE}</To>".encode(), b"<To>police</To>"))
    assert _xmllint(schemas.ENVELOPE, path).returncode != 0
