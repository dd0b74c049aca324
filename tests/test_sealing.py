"""seal and open: round trips, and every way an envelope must be refused, with its reason code."""

from __future__ import annotations

import copy
import dataclasses
import datetime as dt
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lxml import etree

from exchange.codes import AgencyCode, DossierCode
from exchange.envelope import pki
from exchange.envelope.messages import (
    Ack,
    DossierStatus,
    ExchangeStatus,
    Outcome,
    StatusUpdate,
    read_acks,
    receipt_element,
    status_element,
)
from exchange.envelope.model import Header, Kind, canonical, envelope_element
from exchange.envelope.sealing import Opener
from exchange.envelope.trust import TrustStore
from exchange.errors import (
    BadSignature,
    DigestMismatch,
    EnvelopeExpired,
    Expired,
    InvalidEnvelope,
    MalformedXml,
    Revoked,
    SchemaViolation,
    SenderMismatch,
    TooLarge,
    UntrustedSigner,
)
from exchange.xml import safexml
from exchange.xml.names import DS_NS, ENV_NS, q
from tests.agencies import BIRTH, COMMUNE, INSURANCE, POLICE
from tests.conftest import Pki, make_dossier, transfer_header


def _tree(data: bytes) -> etree._Element:
    return safexml.parse(data)


def _bytes(root: etree._Element) -> bytes:
    return bytes(etree.tostring(root, xml_declaration=True, encoding="UTF-8"))


def test_round_trip(pki_env: Pki, opener: Opener) -> None:
    """A sealed transfer opens to the same header and the same canonical payload."""
    dossier = make_dossier()
    header = transfer_header(dossier, in_reply_to="00000000-0000-4000-8000-000000000001")
    env = opener.open(pki_env.signer(COMMUNE).seal(header, copy.deepcopy(dossier)))
    assert env.header.message_id == header.message_id
    assert env.header.created == header.created.replace(microsecond=header.created.microsecond // 1000 * 1000)
    assert (env.header.sender, env.header.recipient, env.header.step) == (COMMUNE, POLICE, "police")
    assert env.header.in_reply_to == header.in_reply_to
    assert env.signer == COMMUNE
    assert canonical(env.payload) == canonical(dossier)


def test_verified_envelope_is_frozen(sealed: bytes, opener: Opener) -> None:
    """The verified envelope cannot be changed after verification."""
    env = opener.open(sealed)
    with pytest.raises(dataclasses.FrozenInstanceError):
        env.signer = POLICE  # type: ignore[misc]


def test_receipt_and_status_round_trip(pki_env: Pki, opener: Opener, sealed: bytes) -> None:
    """Receipts and status updates are sealed and opened like transfers."""
    transfer = opener.open(sealed)
    police = pki_env.signer(POLICE)
    ack = Ack(transfer.header.message_id, transfer.envelope_digest, Outcome.ACCEPTED)
    receipt = police.seal(Header(kind=Kind.RECEIPT, sender=POLICE, recipient=COMMUNE,
                                 in_reply_to=transfer.header.message_id), receipt_element((ack,)))
    opened = opener.open(receipt)
    assert read_acks(opened.payload)[0].envelope_digest == transfer.envelope_digest
    update = StatusUpdate(transfer.header.dossier or DossierCode("x"), POLICE, ExchangeStatus.PROCESSING,
                          DossierStatus.PROCESSING, step="police", apology="Xin lỗi",
                          new_due_date=dt.date(2026, 12, 24))
    status = police.seal(Header(kind=Kind.STATUS, sender=POLICE, recipient=COMMUNE,
                                dossier=update.dossier, procedure=BIRTH, step="police"),
                         status_element(update))
    assert opener.open(status).header.kind is Kind.STATUS


HEADER_EDITS = {
    "MessageId": "11111111-2222-4333-8444-555555555555",
    "Kind": "status",
    "From": "000.02.10.H49",
    "To": str(INSURANCE),
    "DossierCode": "000.01.10.H49-250101-0007",
    "Procedure": "2.001023",
    "Step": "insurance",
    "Created": "2026-01-01T00:00:00.000Z",
    "Expires": "2099-01-01T00:00:00.000Z",
    "PayloadDigest": "0" * 64,
}


@pytest.mark.parametrize("field", sorted(HEADER_EDITS))
def test_any_header_field_edit_is_refused(sealed: bytes, opener: Opener, field: str) -> None:
    """Changing any header field to another valid value breaks the signature."""
    root = _tree(sealed)
    el = root.find(f"{q('Header')}/{q(field)}")
    assert el is not None
    assert el.text != HEADER_EDITS[field]
    el.text = HEADER_EDITS[field]
    with pytest.raises(BadSignature):
        opener.open(_bytes(root))


def test_trace_hop_added_is_refused(sealed: bytes, opener: Opener) -> None:
    """A hop added to the trace after signing is refused."""
    root = _tree(sealed)
    trace = root.find(f"{q('Header')}/{q('Trace')}")
    assert trace is not None
    etree.SubElement(trace, q("Hop"), agency=str(POLICE), at="2026-01-01T00:00:00Z")
    with pytest.raises(BadSignature):
        opener.open(_bytes(root))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_payload_byte_edit_is_refused(sealed: bytes, opener: Opener, data: st.DataObject) -> None:
    """Changing any one byte of the body, to anything, is refused (signature, schema or syntax)."""
    start, end = sealed.index(b"<Body>") + len(b"<Body>"), sealed.index(b"</Body>")
    position = data.draw(st.integers(start, end - 1))
    replacement = data.draw(st.integers(0, 255).filter(lambda b: b != sealed[position]))
    tampered = sealed[:position] + bytes([replacement]) + sealed[position + 1:]
    with pytest.raises(InvalidEnvelope):
        opener.open(tampered)


def test_signature_value_edit_is_refused(sealed: bytes, opener: Opener) -> None:
    """A changed signature value does not verify."""
    root = _tree(sealed)
    value = root.find(f"{{{DS_NS}}}Signature/{{{DS_NS}}}SignatureValue")
    assert value is not None
    assert value.text
    value.text = ("A" if value.text[0] != "A" else "B") + value.text[1:]
    with pytest.raises(BadSignature):
        opener.open(_bytes(root))


def test_wrapping_signed_envelope_under_new_root_is_refused(sealed: bytes, opener: Opener) -> None:
    """A signed envelope moved under a new root element is refused."""
    wrapper = etree.Element(q("Envelope"), version="1")
    wrapper.append(_tree(sealed))
    with pytest.raises(SchemaViolation):
        opener.open(_bytes(wrapper))


def test_forged_envelope_carrying_signed_one_is_refused(sealed: bytes, opener: Opener) -> None:
    """A forged envelope whose body hides the genuine signed envelope is refused."""
    genuine = _tree(sealed)
    forged = copy.deepcopy(genuine)
    body = forged.find(q("Body"))
    assert body is not None
    body[0] = genuine  # the verifier must not find the genuine signature and trust the forgery
    forged.find(f"{q('Header')}/{q('To')}").text = str(INSURANCE)  # type: ignore[union-attr]
    with pytest.raises(InvalidEnvelope):
        opener.open(_bytes(forged))


def test_extra_unsigned_header_is_refused(sealed: bytes, opener: Opener) -> None:
    """A second, unsigned header inserted before the signed one is refused."""
    root = _tree(sealed)
    fake = copy.deepcopy(root.find(q("Header")))
    fake.find(q("To")).text = str(INSURANCE)  # type: ignore[union-attr]
    root.insert(0, fake)
    with pytest.raises(SchemaViolation):
        opener.open(_bytes(root))


def test_second_body_is_refused(sealed: bytes, opener: Opener) -> None:
    """A second body after the signed one is refused."""
    root = _tree(sealed)
    root.insert(2, copy.deepcopy(root.find(q("Body"))))
    with pytest.raises(SchemaViolation):
        opener.open(_bytes(root))


def test_duplicate_id_attributes_are_refused(sealed: bytes, opener: Opener) -> None:
    """Id attributes, the tool of ID-based wrapping, are not part of the envelope at all."""
    root = _tree(sealed)
    for name in ("Header", "Body"):
        el = root.find(q(name))
        assert el is not None
        el.set("Id", "dup")
    with pytest.raises(SchemaViolation):
        opener.open(_bytes(root))


def test_signature_moved_into_body_is_refused(sealed: bytes, opener: Opener) -> None:
    """The signature must be the root's last child; elsewhere it is refused."""
    root = _tree(sealed)
    signature = root[-1]
    root.find(f"{q('Header')}/{q('Trace')}").append(signature)  # type: ignore[union-attr]
    with pytest.raises(SchemaViolation):
        opener.open(_bytes(root))


def _signed_with_reference(pki_env: Pki, uri: str) -> bytes:
    """An envelope properly signed by the commune, but over a reference other than URI=""."""
    from signxml.algorithms import CanonicalizationMethod, DigestAlgorithm, SignatureMethod
    from signxml.signer import XMLSigner

    signer = pki_env.signer(COMMUNE)
    dossier = make_dossier()
    root = envelope_element(transfer_header(dossier), dossier)
    root.find(q("Body")).set("Id", "body")  # type: ignore[union-attr]
    signed = XMLSigner(signature_algorithm=SignatureMethod.ECDSA_SHA256,
                       digest_algorithm=DigestAlgorithm.SHA256,
                       c14n_algorithm=CanonicalizationMethod.EXCLUSIVE_XML_CANONICALIZATION_1_0).sign(
        root, key=signer.key, cert=[pki.cert_pem(signer.cert).decode()], reference_uri=uri)
    return _bytes(signed)


def test_reference_to_part_of_document_is_refused(pki_env: Pki, opener: Opener) -> None:
    """A genuine signature over only the body (URI="#body") is refused: the header is unsigned."""
    from exchange.envelope import xmldsig

    data = _signed_with_reference(pki_env, "#body")
    with pytest.raises((BadSignature, SchemaViolation)):
        opener.open(data)
    with pytest.raises(BadSignature, match='URI=""'):
        xmldsig.pinned(_tree(data))


def test_two_references_are_refused(sealed: bytes, opener: Opener) -> None:
    """A signature with a second reference is refused before verification."""
    root = _tree(sealed)
    signed_info = root[-1][0]
    signed_info.append(copy.deepcopy(signed_info.find(f"{{{DS_NS}}}Reference")))
    with pytest.raises((BadSignature, SchemaViolation), match="reference"):
        opener.open(_bytes(root))


def test_untrusted_ca_is_refused(other_pki: Pki, opener: Opener) -> None:
    """A signature by a certificate from another CA, for a real agency code, is untrusted."""
    dossier = make_dossier()
    data = other_pki.signer(COMMUNE).seal(transfer_header(dossier), dossier)
    with pytest.raises(UntrustedSigner, match="not a trusted CA"):
        opener.open(data)


def test_revoked_signer_is_refused(pki_env: Pki, tmp_path: pytest.TempPathFactory) -> None:
    """A certificate on the CA's CRL is refused as revoked; others still pass."""
    agency = AgencyCode("000.09.10.H49")
    signer = pki_env.signer(agency)
    dossier = make_dossier(agency=agency)
    data = signer.seal(transfer_header(dossier, sender=agency), dossier)
    ca = pki.CertificateAuthority.load(pki_env.root / "ca")
    ca.revoke(signer.cert, "key compromise")
    crl_path = tmp_path / "crl.pem"  # type: ignore[operator]
    from cryptography.hazmat.primitives.serialization import Encoding

    crl_path.write_bytes(ca.crl().public_bytes(Encoding.PEM))
    opener = Opener(TrustStore.load(pki_env.root / "ca", crl_path))
    with pytest.raises(Revoked, match="revoked on"):
        opener.open(data)
    good = make_dossier()
    assert opener.open(pki_env.signer(COMMUNE).seal(transfer_header(good), good)).signer == COMMUNE


def test_expired_certificate_is_refused(pki_env: Pki, tmp_path: pytest.TempPathFactory) -> None:
    """A certificate whose validity ended is refused as expired."""
    agency = AgencyCode("000.08.10.H49")
    key = pki.new_key()
    cert = pki_env.ca.issue(agency, key.public_key(),
                            not_before=dt.datetime.now(dt.UTC) - dt.timedelta(days=10), days=2)
    from exchange.envelope.sealing import Signer

    dossier = make_dossier(agency=agency)
    data = Signer(key, cert, agency).seal(transfer_header(dossier, sender=agency), dossier)
    with pytest.raises(Expired, match="expired on"):
        pki_env.opener().open(data)


def test_signature_made_before_certificate_validity_is_refused(pki_env: Pki) -> None:
    """An envelope created before its certificate became valid is refused as expired."""
    signer = pki_env.signer(COMMUNE)
    dossier = make_dossier()
    created = signer.cert.not_valid_before_utc - dt.timedelta(days=3)
    data = signer.seal(transfer_header(dossier, created=created,
                                       expires=dt.datetime.now(dt.UTC) + dt.timedelta(days=1)), dossier)
    with pytest.raises(Expired, match="at signing time"):
        pki_env.opener().open(data)


def test_sender_mismatch_is_refused(pki_env: Pki, opener: Opener) -> None:
    """A valid signature by the police on an envelope that claims to come from the commune is refused."""
    police = pki_env.signer(POLICE)
    impostor = dataclasses.replace(police, agency=COMMUNE)
    dossier = make_dossier()
    data = impostor.seal(transfer_header(dossier, sender=COMMUNE, recipient=INSURANCE), dossier)
    with pytest.raises(SenderMismatch, match=f"certificate is {POLICE}"):
        opener.open(data)


def test_signer_refuses_to_seal_for_another_agency(pki_env: Pki) -> None:
    """Sealing a header whose sender is not the certificate's agency fails at the sender."""
    dossier = make_dossier()
    with pytest.raises(SenderMismatch):
        pki_env.signer(POLICE).seal(transfer_header(dossier, sender=COMMUNE), dossier)


def test_oversized_envelope_is_refused_before_parsing(sealed: bytes, pki_env: Pki) -> None:
    """An envelope above the configured cap is refused as too large."""
    with pytest.raises(TooLarge):
        pki_env.opener(max_bytes=len(sealed) - 1).open(sealed)


def test_doctype_in_envelope_is_refused(sealed: bytes, opener: Opener) -> None:
    """An envelope that declares a DOCTYPE is refused as malformed."""
    data = sealed.replace(b"?>", b"?><!DOCTYPE Envelope>", 1)
    with pytest.raises(MalformedXml):
        opener.open(data)


def test_expired_envelope_is_refused(pki_env: Pki, opener: Opener) -> None:
    """An envelope past its own expiry time is refused."""
    dossier = make_dossier()
    created = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=3)
    data = pki_env.signer(COMMUNE).seal(
        transfer_header(dossier, created=created, expires=created + dt.timedelta(minutes=1)), dossier)
    with pytest.raises(EnvelopeExpired):
        opener.open(data)


def test_payload_digest_must_match_body(pki_env: Pki, opener: Opener) -> None:
    """A sender that signs a wrong payload digest is refused with digest-mismatch."""
    from exchange.envelope import sealing

    dossier = make_dossier()
    original = sealing.envelope_element

    def wrong_digest(header: Header, payload: etree._Element) -> etree._Element:
        root = original(header, payload)
        root.find(f"{q('Header')}/{q('PayloadDigest')}").text = "f" * 64  # type: ignore[union-attr]
        return root

    sealing.envelope_element = wrong_digest  # type: ignore[assignment]
    try:
        data = pki_env.signer(COMMUNE).seal(transfer_header(dossier), dossier)
    finally:
        sealing.envelope_element = original
    with pytest.raises(DigestMismatch, match="PayloadDigest"):
        opener.open(data)


def test_header_dossier_code_must_match_payload(pki_env: Pki, opener: Opener) -> None:
    """A transfer whose header names another dossier than its body is refused."""
    dossier = make_dossier()
    header = dataclasses.replace(transfer_header(dossier),
                                 dossier=DossierCode("000.01.10.H49-250101-0099"))
    with pytest.raises(DigestMismatch, match="dossier code"):
        opener.open(pki_env.signer(COMMUNE).seal(header, dossier))


def test_kind_must_match_payload(pki_env: Pki, opener: Opener) -> None:
    """A receipt envelope carrying a dossier is refused."""
    dossier = make_dossier()
    header = dataclasses.replace(transfer_header(dossier), kind=Kind.RECEIPT)
    with pytest.raises(DigestMismatch, match="receipt envelope carries"):
        opener.open(pki_env.signer(COMMUNE).seal(header, dossier))


def test_chain_checks_are_cached_by_fingerprint(pki_env: Pki) -> None:
    """Opening many envelopes from one agency verifies its certificate chain once."""
    opener = pki_env.opener()
    signer = pki_env.signer(COMMUNE)
    for sequence in range(1, 6):
        dossier = make_dossier(sequence=sequence)
        opener.open(signer.seal(transfer_header(dossier), dossier))
    assert opener.trust.chain_checks == 1


def test_refusal_codes_are_stable() -> None:
    """Each refusal class carries its own reason code, and no two share one."""
    from exchange.errors import REFUSALS

    codes = [cls.reason_code for cls in REFUSALS]
    assert len(set(codes)) == len(codes)
    assert all(re.fullmatch(r"[a-z][a-z\-]+", code) for code in codes)
    assert {"bad-signature", "untrusted-signer", "revoked", "expired", "sender-mismatch",
            "schema-violation", "malformed-xml", "too-large"} <= set(codes)


def test_verified_payload_comes_from_signed_tree(sealed: bytes, opener: Opener) -> None:
    """Comments added to the received bytes (not covered by exc-c14n) never reach the result."""
    data = sealed.replace(b"<Body>", b"<Body><!-- injected -->", 1)
    env = opener.open(data)
    body = env.payload.getparent()
    assert body is not None
    assert not any(isinstance(n, etree._Comment) for n in body.iter())
    assert env.payload.tag == "{urn:vn-exchange:dossier:1}Dossier"
    assert ENV_NS in body.tag


def test_a_changed_digest_value_is_refused(sealed: bytes, opener: Opener) -> None:
    """A digest mismatch in the signed reference is refused."""
    root = _tree(sealed)
    digest = root[-1].find(f"{{{DS_NS}}}SignedInfo/{{{DS_NS}}}Reference/{{{DS_NS}}}DigestValue")
    assert digest is not None
    digest.text = "AAAA" + (digest.text or "")[4:]
    with pytest.raises(BadSignature):
        opener.open(_bytes(root))


def test_attachment_that_is_not_base64_is_refused(pki_env: Pki, opener: Opener) -> None:
    """Base64 content left to the decoder on the hot path is still checked strictly."""
    dossier = make_dossier()
    content = dossier.find(".//{urn:vn-exchange:dossier:1}Content")
    assert content is not None
    content.text = "!!!!" + (content.text or "")[4:]
    with pytest.raises(SchemaViolation, match="not base64"):
        opener.open(pki_env.signer(COMMUNE).seal(transfer_header(dossier), dossier))


def test_attachment_hash_mismatch_is_refused(pki_env: Pki, opener: Opener) -> None:
    """A signed dossier whose attachment does not hash to its declared Sha256 is refused."""
    dossier = make_dossier()
    sha = dossier.find(".//{urn:vn-exchange:dossier:1}Sha256")
    assert sha is not None
    sha.text = "0" * 64
    with pytest.raises(DigestMismatch, match="hashes to"):
        opener.open(pki_env.signer(COMMUNE).seal(transfer_header(dossier), dossier))


def test_receipt_carries_checkpoint_and_consistency_proof(pki_env: Pki, opener: Opener) -> None:
    """A receipt's witnessed checkpoint and proof survive sealing and opening byte for byte."""
    from exchange.envelope.messages import Witnessed, read_witnessed

    note = "vn-exchange/audit/000.30.10.H49\n12\n" + "A" * 43 + "=\n\n\u2014 vn-exchange/audit/000.30.10.H49 abc=\n"
    witnessed = Witnessed(note, 9, (b"\x01" * 32, b"\x02" * 32))
    ack = Ack("00000000-0000-4000-8000-000000000001", "a" * 64, Outcome.ACCEPTED)
    sealed = pki_env.signer(POLICE).seal(Header(kind=Kind.RECEIPT, sender=POLICE, recipient=COMMUNE),
                                         receipt_element((ack,), witnessed))
    assert read_witnessed(opener.open(sealed).payload) == witnessed
