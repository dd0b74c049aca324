"""Our single-profile XML-DSig (exchange/envelope/xmldsig.py) held to two general engines:
stock signxml and xmlsec1. On every genuine envelope all three accept and the signed bytes are
signxml's; on every hostile envelope of the corpus and on random alterations of a genuine one,
whatever signxml or xmlsec1 refuses, we refuse. We may refuse more (our profile is narrower)."""

from __future__ import annotations

import datetime as dt
import subprocess
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lxml import etree
from signxml.algorithms import DigestAlgorithm, SignatureMethod
from signxml.verifier import SignatureConfiguration, XMLVerifier

from exchange.envelope import pki, xmldsig
from exchange.envelope.model import Header, Kind
from exchange.errors import BadSignature, InvalidEnvelope
from exchange.xml import safexml
from tests.agencies import COMMUNE, POLICE
from tests.conftest import Pki, make_dossier, require_tool, transfer_header
from tests.test_envelope_encryption import to
from tests.test_hostile_envelopes import ENVELOPES

EXPECT = SignatureConfiguration(location="./", expect_references=1,
                                signature_methods=frozenset({SignatureMethod.ECDSA_SHA256}),
                                digest_algorithms=frozenset({DigestAlgorithm.SHA256}))


def signxml_signed(data: bytes, pki_env: Pki) -> bytes | None:
    """The bytes stock signxml says are signed, or None when it refuses."""
    try:
        cert = pki_env.opener().trust.check_encoded(xmldsig.pinned(safexml.parse(data)).certificate).cert
        result = XMLVerifier().verify(data, x509_cert=cert, expect_config=EXPECT)
    except Exception:  # noqa: BLE001 - any refusal of signxml's (or of its input) is a refusal
        return None
    return result.signed_data  # type: ignore[union-attr]


def ours_signed(data: bytes, pki_env: Pki) -> bytes | None:
    try:
        root = safexml.parse(data)
        signature = xmldsig.pinned(root)
        cert = pki_env.opener().trust.check_encoded(signature.certificate).cert
        return xmldsig.verify(root, signature, cert.public_key()).data  # type: ignore[arg-type]
    except InvalidEnvelope:
        return None


def xmlsec1_accepts(data: bytes, pki_env: Pki, tmp_path: Path) -> bool:
    path = tmp_path / "envelope.xml"
    path.write_bytes(data)
    result = subprocess.run([require_tool("xmlsec1"), "--verify", "--trusted-pem",
                             str(pki_env.root / "ca" / pki.CA_CERT), str(path)],
                            capture_output=True, text=True, timeout=60, check=False)
    return result.returncode == 0


def genuine(pki_env: Pki) -> dict[str, bytes]:
    """Every kind of envelope the nodes make, as they make it."""
    signer = pki_env.signer(COMMUNE)
    small, large = make_dossier(), make_dossier(size_kb=100)
    return {
        "10 KiB transfer": signer.seal(transfer_header(small), small),
        "100 KiB transfer": signer.seal(transfer_header(large), large),
        "encrypted transfer": signer.seal(transfer_header(small), small, encrypt_for=to(pki_env, POLICE)),
        "status": signer.seal(Header(kind=Kind.STATUS, sender=COMMUNE, recipient=POLICE,
                                     dossier=transfer_header(small).dossier, procedure=transfer_header(small).procedure,
                                     step="police"), etree.fromstring(
            b'<StatusUpdate xmlns="urn:vn-exchange:status:1"/>')),
    }


@pytest.mark.tools
def test_genuine_envelopes_verify_alike_everywhere(pki_env: Pki, tmp_path: Path) -> None:
    for name, data in genuine(pki_env).items():
        ours = ours_signed(data, pki_env)
        assert ours is not None, name
        assert ours == signxml_signed(data, pki_env), name
        assert xmlsec1_accepts(data, pki_env, tmp_path), name


@pytest.mark.tools
@pytest.mark.parametrize("name", sorted(ENVELOPES))
def test_hostile_envelopes_refused_by_either_engine_are_refused_by_ours(name: str, pki_env: Pki, sealed: bytes,
                                                                        tmp_path: Path) -> None:
    data = ENVELOPES[name][0](pki_env, sealed)
    if len(data) > 1_000_000:
        pytest.skip("beyond the envelope cap the shape check refuses first")
    ours = ours_signed(data, pki_env)
    stock = signxml_signed(data, pki_env)
    if stock is None or not xmlsec1_accepts(data, pki_env, tmp_path):
        assert ours is None
    if ours is not None:
        assert ours == stock


def test_a_signature_by_signxml_verifies_with_ours(pki_env: Pki) -> None:
    """The other direction: what stock signxml signs in our profile, we verify to the same bytes."""
    from signxml.algorithms import CanonicalizationMethod
    from signxml.signer import XMLSigner

    from exchange.envelope.model import envelope_element

    signer = pki_env.signer(COMMUNE)
    dossier = make_dossier()
    root = envelope_element(transfer_header(dossier), dossier)
    data = etree.tostring(XMLSigner(
        signature_algorithm=SignatureMethod.ECDSA_SHA256, digest_algorithm=DigestAlgorithm.SHA256,
        c14n_algorithm=CanonicalizationMethod.EXCLUSIVE_XML_CANONICALIZATION_1_0).sign(
        root, key=signer.key, cert=[pki.cert_pem(signer.cert).decode()]))
    assert ours_signed(data, pki_env) == signxml_signed(data, pki_env) is not None


def test_text_after_the_signature_is_kept_by_the_enveloped_transform(pki_env: Pki, sealed: bytes) -> None:
    """Whitespace after ds:Signature is the document's, not the signature's: a pretty-printed
    envelope signed elsewhere still verifies (lxml would drop an element's tail with it)."""
    from exchange.envelope.model import envelope_element

    signer = pki_env.signer(COMMUNE)
    dossier = make_dossier()
    root = envelope_element(transfer_header(dossier), dossier)
    root[-1].tail = "\n"  # signed: the text after the body, before </Envelope>
    xmldsig.sign(root, signer.key, "".join(pki.cert_pem(signer.cert).decode().splitlines(keepends=True)[1:-1]))
    root[-2].tail, root[-1].tail = None, "\n"  # now after the signature: the same document without it
    data = etree.tostring(root)
    assert ours_signed(data, pki_env) == signxml_signed(data, pki_env) is not None


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(position=st.integers(min_value=0), byte=st.integers(min_value=0x20, max_value=0x7e))
def test_random_alterations_never_verify_where_signxml_refuses(pki_env: Pki, sealed: bytes, position: int,
                                                                byte: int) -> None:
    """One byte of a genuine envelope changed anywhere: we accept only where signxml accepts,
    and then the same signed bytes."""
    at = position % len(sealed)
    data = sealed[:at] + bytes([byte]) + sealed[at + 1:]
    ours = ours_signed(data, pki_env)
    if ours is not None:
        assert ours == signxml_signed(data, pki_env)


def test_a_comment_inside_a_value_cannot_truncate_what_is_read(pki_env: Pki, sealed: bytes) -> None:
    """Comment injection (as against SAML): the signature still verifies, since exclusive c14n
    leaves comments out, but what is read is the canonical text, not the text up to the comment."""
    data = sealed.replace(b"<Step>police</Step>", b"<Step>pol<!---->ice</Step>")
    root = safexml.parse(data)
    signature = xmldsig.pinned(root)
    cert = pki_env.opener().trust.check_encoded(signature.certificate).cert
    signed = xmldsig.verify(root, signature, cert.public_key())  # type: ignore[arg-type]
    assert signed.root.findtext("{urn:vn-exchange:envelope:1}Header/{urn:vn-exchange:envelope:1}Step") == "police"


def test_a_signature_method_outside_the_profile_is_refused(pki_env: Pki, sealed: bytes) -> None:
    data = sealed.replace(b"xmldsig-more#ecdsa-sha256", b"xmldsig-more#ecdsa-sha512")
    root = safexml.parse(data)
    signature = xmldsig.pinned(root)
    cert = pki_env.opener().trust.check_encoded(signature.certificate, dt.datetime.now(dt.UTC)).cert
    with pytest.raises(BadSignature, match="ECDSA with SHA-256"):
        xmldsig.verify(root, signature, cert.public_key())  # type: ignore[arg-type]
