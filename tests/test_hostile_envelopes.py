"""Hostile envelopes, dossiers and rule files: each refused (or accepted) through the command line
with its exit code and reason code; the shape check refuses the costly ones before the schema or
signxml runs; nothing but a refusal leaves ``open``; a recognised duplicate skips verification."""

from __future__ import annotations

import base64
import copy
import re
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, suppress
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lxml import etree
from signxml.algorithms import CanonicalizationMethod, DigestAlgorithm, SignatureMethod
from signxml.signer import XMLSigner

from exchange.cli import main
from exchange.envelope import pki, xmldsig
from exchange.envelope.messages import Ack, Outcome, receipt_element
from exchange.envelope.model import Header, Kind, envelope_element
from exchange.envelope.sealing import Opener
from exchange.errors import BadShape, InvalidEnvelope, PkiError, UntrustedSigner
from exchange.node import intake
from exchange.node.config import NodeConfig
from exchange.node.context import NodeContext
from exchange.node.workflow import submit
from exchange.store.states import Outcome as Handled
from exchange.xml import safexml, schemas
from exchange.xml.names import DOSSIER_NS, q
from tests.agencies import COMMUNE, POLICE
from tests.conftest import Pki, make_dossier, transfer_header
from tests.node_cluster import Cluster

D = f"{{{DOSSIER_NS}}}"
RULES = Path(__file__).resolve().parent / "rules" / "seed-2019"


def _bytes(root: etree._Element) -> bytes:
    return bytes(etree.tostring(root, xml_declaration=True, encoding="UTF-8"))


def _sign(pki_env: Pki, root: etree._Element) -> bytes:
    """``root`` signed by the commune as ``Signer.seal`` would, whatever its text says."""
    signer = pki_env.signer(COMMUNE)
    signed = XMLSigner(signature_algorithm=SignatureMethod.ECDSA_SHA256, digest_algorithm=DigestAlgorithm.SHA256,
                       c14n_algorithm=CanonicalizationMethod.EXCLUSIVE_XML_CANONICALIZATION_1_0).sign(
        root, key=signer.key, cert=[pki.cert_pem(signer.cert).decode()])
    return _bytes(signed)


def _transfer(edit: Callable[[etree._Element], None]) -> Callable[[Pki, bytes], bytes]:
    """A genuine transfer whose unsigned tree ``edit`` changes before it is signed."""
    def build(pki_env: Pki, _sealed: bytes) -> bytes:
        dossier = make_dossier()
        root = envelope_element(transfer_header(dossier), dossier)
        edit(root)
        return _sign(pki_env, root)
    return build


def _header_text(name: str, text: str) -> Callable[[etree._Element], None]:
    def edit(root: etree._Element) -> None:
        root.find(f"{q('Header')}/{q(name)}").text = text  # type: ignore[union-attr]
    return edit


def _dossier_text(name: str, text: str) -> Callable[[etree._Element], None]:
    """A dossier field changed, PayloadDigest kept true to the body."""
    def edit(root: etree._Element) -> None:
        from exchange.envelope.model import payload_digest
        payload = root.find(q("Body"))[0]  # type: ignore[index]
        payload.find(D + name).text = text  # type: ignore[union-attr]
        root.find(f"{q('Header')}/{q('PayloadDigest')}").text = payload_digest(payload)  # type: ignore[union-attr]
    return edit


def _hop(at: str) -> Callable[[etree._Element], None]:
    def edit(root: etree._Element) -> None:
        etree.SubElement(root.find(f"{q('Header')}/{q('Trace')}"), q("Hop"),  # type: ignore[arg-type]
                         agency=str(COMMUNE), at=at)
    return edit


def _later(days: int, form: str) -> str:
    """The day ``days`` from today in the lexical ``form`` ({date} is YYYY-MM-DD); a Created
    time must come after the session's certificates were issued, so from tomorrow on."""
    import datetime as dt
    return form.format(date=(dt.datetime.now(dt.UTC) + dt.timedelta(days=days)).date().isoformat())


def _receipt(received_at: str) -> Callable[[Pki, bytes], bytes]:
    def build(pki_env: Pki, _sealed: bytes) -> bytes:
        payload = receipt_element((Ack("00000000-0000-4000-8000-000000000001", "0" * 64, Outcome.ACCEPTED),))
        payload.find("{urn:vn-exchange:receipt:1}Ack/{urn:vn-exchange:receipt:1}ReceivedAt").text = received_at  # type: ignore[union-attr]
        root = envelope_element(Header(kind=Kind.RECEIPT, sender=COMMUNE, recipient=POLICE), payload)
        return _sign(pki_env, root)
    return build


def _replace(old: bytes, new: bytes, count: int = 1) -> Callable[[Pki, bytes], bytes]:
    def build(_pki: Pki, sealed: bytes) -> bytes:
        assert old in sealed
        return sealed.replace(old, new, count)
    return build


def _sub(pattern: bytes, new: bytes) -> Callable[[Pki, bytes], bytes]:
    def build(_pki: Pki, sealed: bytes) -> bytes:
        changed, n = re.subn(pattern, new, sealed, count=1, flags=re.S)
        assert n == 1
        return changed
    return build


def _const(data: bytes) -> Callable[[Pki, bytes], bytes]:
    return lambda _pki, _sealed: data


def _attrs(n: int) -> bytes:
    return b" ".join(b'a%d="x"' % i for i in range(n))


def _comments_in_hops(hops: int, each: int) -> Callable[[Pki, bytes], bytes]:
    return _replace(b"<Trace/>", b"<Trace>" + (b'<Hop agency="000.01.10.H49" at="2025-01-01T00:00:00Z">'
                                                + b"<!---->" * each + b"</Hop>") * hops + b"</Trace>")


def _nested_attrs(groups: int, each: int) -> Callable[[Pki, bytes], bytes]:
    group = b"<x>" + b'<y a="1" b="2" c="3" d="4"/>' * each + b"</x>"
    return _replace(b"</Body>", group * groups + b"</Body>")


ENV = b'<Envelope xmlns="urn:vn-exchange:envelope:1" version="1"'
SIGNATURE_VALUE = rb"<ds:SignatureValue>[^<]*</ds:SignatureValue>"
CERT = rb"<ds:X509Certificate>[^<]*</ds:X509Certificate>"

ENVELOPES: dict[str, tuple[Callable[[Pki, bytes], bytes], int, str]] = {
    # name: (how to make it, exit code, reason code or "" when verified)
    "2000 made-up attributes, unsigned": (_const(ENV + b" " + _attrs(2000) + b"/>"), 1, "bad-shape"),
    "2000 made-up attributes on the header": (_replace(b"<Header>", b"<Header " + _attrs(2000) + b">"), 1, "bad-shape"),
    "200,000 elements in a ds:Object": (_replace(b"</ds:Signature>", b"<ds:Object>" + b"<a/>" * 200_000
                                                 + b"</ds:Object></ds:Signature>"), 1, "bad-shape"),
    "an empty ds:Object": (_replace(b"</ds:Signature>", b"<ds:Object/></ds:Signature>"), 1, "bad-shape"),
    "200,000 elements in the body": (_replace(b"</Body>", b"<x/>" * 200_000 + b"</Body>"), 1, "bad-shape"),
    "20,000 comments in the signature": (_replace(b"</ds:Signature>", b"<!---->" * 20_000 + b"</ds:Signature>"),
                                         1, "bad-shape"),
    "17,000 comments spread over hops": (_comments_in_hops(17, 1000), 1, "bad-shape"),
    "elements nested 200 deep": (_replace(b"</Body>", b"<a>" * 200 + b"</a>" * 200 + b"</Body>"), 1, "bad-shape"),
    "five attributes on the body": (_replace(b"<Body>", b'<Body a="1" b="2" c="3" d="4" e="5">'), 1, "bad-shape"),
    "4,400 attributes over 1,100 elements": (_nested_attrs(5, 220), 1, "bad-shape"),
    "the body before the header": (_sub(rb"(<Header>.*</Header>)(<Body>.*</Body>)", rb"\2\1"), 1, "bad-shape"),
    "two X509Data in KeyInfo": (_sub(rb"(<ds:X509Data>.*</ds:X509Data>)", rb"\1\1"), 1, "bad-shape"),
    "a subject name padded into X509Data": (_replace(b"</ds:X509Data>", b"<ds:X509SubjectName>CN=x</ds:X509SubjectName>"
                                                     b"</ds:X509Data>"), 1, "bad-shape"),
    "a signature without KeyInfo": (_sub(rb"<ds:KeyInfo>.*</ds:KeyInfo>", b""), 1, "bad-shape"),
    "a dossier as the root": (_const(b'<Dossier xmlns="urn:vn-exchange:dossier:1" version="1"/>'), 1, "bad-shape"),
    "an empty SignatureValue": (_sub(SIGNATURE_VALUE, b"<ds:SignatureValue></ds:SignatureValue>"), 1, "bad-signature"),
    "a SignatureValue that is not base64": (_sub(SIGNATURE_VALUE, b"<ds:SignatureValue>!!!!</ds:SignatureValue>"),
                                            1, "bad-signature"),
    "a SignatureValue four bytes long": (_sub(SIGNATURE_VALUE, b"<ds:SignatureValue>AAAAAA==</ds:SignatureValue>"),
                                         1, "bad-signature"),
    "an empty X509Certificate": (_sub(CERT, b"<ds:X509Certificate></ds:X509Certificate>"), 1, "bad-signature"),
    "an X509Certificate of garbage": (_sub(CERT, b"<ds:X509Certificate>AAAA</ds:X509Certificate>"), 1, "bad-signature"),
    "an empty DigestValue": (_sub(rb"<ds:DigestValue>[^<]*</ds:DigestValue>", b"<ds:DigestValue></ds:DigestValue>"),
                             1, "bad-signature"),
    "Created at 24:00:00Z": (_transfer(_header_text("Created", _later(0, "{date}T24:00:00Z"))), 0, ""),
    "Created with nine fractional digits and an offset": (
        _transfer(_header_text("Created", _later(1, "{date}T09:02:03.123456789+07:00"))), 0, ""),
    "Created inside whitespace": (_transfer(_header_text("Created", _later(1, " {date}T00:00:00Z\n"))), 0, ""),
    "Expires at 24:00:00.000-05:00": (_transfer(_header_text("Expires", _later(3, "{date}T24:00:00.000-05:00"))),
                                      0, ""),
    "a hop at 24:00:00Z": (_transfer(_hop(_later(-2, "{date}T24:00:00Z"))), 0, ""),
    "Expires in the year 12025": (_transfer(_header_text("Expires", "12025-01-01T00:00:00Z")), 1, "schema-violation"),
    "a dossier due on a date with Z": (_transfer(_dossier_text("DueDate", _later(5, "{date}Z"))), 0, ""),
    "a dossier due on a date with an offset": (_transfer(_dossier_text("DueDate", _later(5, "{date}+07:00"))), 0, ""),
    "a dossier received in the year -1": (_transfer(_dossier_text("ReceivedAt", "-0001-01-01T00:00:00Z")),
                                          1, "schema-violation"),
    "a receipt received at 24:00:00Z": (_receipt("2025-01-01T24:00:00Z"), 0, ""),
    "a receipt received in the year 10000": (_receipt("10000-01-01T00:00:00Z"), 1, "schema-violation"),
}


@pytest.mark.parametrize("name", sorted(ENVELOPES))
def test_hostile_envelope_through_the_cli(name: str, pki_env: Pki, sealed: bytes, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    """`exchange envelope verify` accepts or refuses each hostile envelope with its exit code and
    reason code, well under a second."""
    build, code, reason = ENVELOPES[name]
    path = tmp_path / "envelope.xml"
    path.write_bytes(build(pki_env, sealed))
    started = time.perf_counter()
    assert main(["envelope", "verify", "--trust", str(pki_env.root / "ca"), str(path)]) == code
    assert time.perf_counter() - started < 5  # a generous bound against a stall; the benchmark has the figures
    err = capsys.readouterr().err
    if reason:
        assert f"refused: {reason}:" in err
    else:
        assert "refused" not in err


# Dossiers ----------------------------------------------------------------------------------

def _dossier_with(edit: Callable[[etree._Element], None]) -> bytes:
    root = make_dossier(size_kb=1)
    edit(root)
    return _bytes(root)


def _set(name: str, text: str) -> Callable[[etree._Element], None]:
    def edit(root: etree._Element) -> None:
        root.find(D + name).text = text  # type: ignore[union-attr]
    return edit


def _many_documents(n: int) -> Callable[[etree._Element], None]:
    def edit(root: etree._Element) -> None:
        documents = root.find(D + "Documents")
        for _ in range(n):
            etree.SubElement(documents, D + "Document", kind="x")  # type: ignore[arg-type]
    return edit


def _deep(n: int) -> Callable[[etree._Element], None]:
    def edit(root: etree._Element) -> None:
        el = root.find(D + "ProcessingControl")
        for _ in range(n):
            el = etree.SubElement(el, D + "Row")  # type: ignore[arg-type]
    return edit


def _dossier_attrs(root: etree._Element) -> None:
    for i in range(2000):
        root.set(f"a{i}", "x")


DOSSIERS: dict[str, tuple[Callable[[etree._Element], None], int, str]] = {
    "due on a date with Z": (_set("DueDate", "2026-12-04Z"), 0, "due 2026-12-04"),
    "due on a date with an offset": (_set("DueDate", "2026-12-04-05:00"), 0, "due 2026-12-04"),
    "received at 24:00:00Z": (_set("ReceivedAt", "2026-11-29T24:00:00Z"), 0, "at 2026-11-30 00:00Z"),
    "received with nine fractional digits": (_set("ReceivedAt", "2026-11-29T16:29:55.123456789+07:00"), 0,
                                             "at 2026-11-29 09:29Z"),
    "received inside whitespace": (_set("ReceivedAt", "\n  2026-11-29T16:29:55Z  \n"), 0, "at 2026-11-29 16:29Z"),
    "received in the year 12025": (_set("ReceivedAt", "12025-01-01T00:00:00Z"), 1, "outside 0001-9999"),
    "due in the year -1": (_set("DueDate", "-0001-01-01"), 1, "outside 0001-9999"),
    "2000 made-up attributes": (_dossier_attrs, 1, "attributes on"),
    "20,000 documents": (_many_documents(20_000), 1, "child nodes"),
    "elements nested 50 deep": (_deep(50), 1, "nested more than"),
}


@pytest.mark.parametrize("name", sorted(DOSSIERS))
def test_hostile_dossier_through_the_cli(name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`exchange dossier check` accepts or refuses each hostile dossier, saying why."""
    edit, code, words = DOSSIERS[name]
    path = tmp_path / "dossier.xml"
    path.write_bytes(_dossier_with(edit))
    assert main(["dossier", "check", str(path)]) == code
    captured = capsys.readouterr()
    assert words in (captured.out if code == 0 else captured.err)


def test_dossier_of_many_errors_is_explained_cheaply(monkeypatch: pytest.MonkeyPatch) -> None:
    """A large invalid dossier is explained in libxml2's words: xmlschema, whose cost does not
    stop at the errors reported, is never asked."""
    def spy(name: str) -> Any:
        raise AssertionError(f"xmlschema loaded for {name}")
    root = make_dossier(size_kb=1)
    control = root.find(D + "ProcessingControl")
    for _ in range(1000):
        etree.SubElement(etree.SubElement(control, D + "Row"), D + "Time").text = "x"  # type: ignore[arg-type]
    monkeypatch.setattr(schemas, "load", spy)
    found = schemas.problems(schemas.DOSSIER, root, "dossier")
    assert len(found) == schemas.MAX_REPORTED + 1
    assert found[-1].endswith("(more errors not listed)")


# Rule files --------------------------------------------------------------------------------

RULE_DATES: dict[str, tuple[bytes, bytes, int, str]] = {
    "a holiday on a date with Z": (b'<holiday date="2025-01-01"', b'<holiday date="2025-01-01Z"', 0, ""),
    "a holiday on a date with an offset": (b'<holiday date="2025-01-01"', b'<holiday date="2025-01-01+07:00"', 0, ""),
    "a span with zones": (b'from="2025-01-25" to="2025-02-02"', b'from="2025-01-25Z" to="2025-02-02-05:00"', 0, ""),
    "a workday with an offset": (b'<workday date="2025-04-26"', b'<workday date="2025-04-26+07:00"', 0, ""),
    "a holiday in the year 12025": (b'<holiday date="2025-01-01"', b'<holiday date="12025-01-01"', 1,
                                    "outside 0001-9999"),
    "a workday in the year -1": (b'<workday date="2025-04-26"', b'<workday date="-0001-04-26"', 1,
                                 "outside 0001-9999"),
}


@pytest.mark.parametrize("name", sorted(RULE_DATES))
def test_rule_dates_through_the_cli(name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`exchange rules check` reads every xs:date form the schema allows, and reports what it
    cannot hold as a problem in the file, never as a crash."""
    old, new, code, words = RULE_DATES[name]
    rules = tmp_path / "rules"
    shutil.copytree(RULES, rules)
    calendar = rules / "calendar.xml"
    assert old in calendar.read_bytes()
    calendar.write_bytes(calendar.read_bytes().replace(old, new, 1))
    assert main(["rules", "check", str(rules)]) == code
    assert words in capsys.readouterr().err


# The shape check comes first ---------------------------------------------------------------

@pytest.fixture
def costly_steps(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Records each call of the schema check and of the signature's verification (spies: both still run)."""
    calls: list[str] = []
    problems, verify = schemas.problems, xmldsig.verify

    def schema_spy(*args: Any, **kwargs: Any) -> list[str]:
        calls.append("schema")
        return problems(*args, **kwargs)

    def verify_spy(*args: Any, **kwargs: Any) -> Any:
        calls.append("xmldsig")
        return verify(*args, **kwargs)

    monkeypatch.setattr(schemas, "problems", schema_spy)
    monkeypatch.setattr(xmldsig, "verify", verify_spy)
    return calls


SHAPE_CASES = sorted(name for name, (_, _, reason) in ENVELOPES.items() if reason == "bad-shape")


@pytest.mark.parametrize("name", SHAPE_CASES)
def test_shape_check_refuses_before_schema_and_signature(name: str, pki_env: Pki, sealed: bytes, opener: Opener,
                                                      costly_steps: list[str]) -> None:
    """Each padded or malformed-shape envelope is refused as bad-shape before the schema check or
    the signature's verification has run."""
    data = ENVELOPES[name][0](pki_env, sealed)
    with pytest.raises(BadShape):
        opener.open(data)
    assert costly_steps == []


def test_genuine_envelope_passes_every_step(sealed: bytes, opener: Opener, costly_steps: list[str]) -> None:
    """A genuine envelope passes the shape check and goes on to the schema and the signature."""
    opener.open(sealed)
    assert costly_steps == ["schema", "xmldsig"]


def test_hostile_dossier_is_refused_before_its_schema(costly_steps: list[str]) -> None:
    """A dossier with 2,000 made-up attributes is refused before schema validation."""
    from exchange.envelope import dossier as dossiers
    from exchange.errors import InvalidDossier

    with pytest.raises(InvalidDossier, match="attributes on"):
        dossiers.load(_dossier_with(_dossier_attrs))
    assert costly_steps == []


# Nothing but a refusal leaves open -----------------------------------------------------------

def _mutate(data: bytes, cuts: list[tuple[int, int, bytes]]) -> bytes:
    out = bytearray(data)
    for at, length, insert in cuts:
        at %= len(out) + 1
        out[at:at + length] = insert
    return bytes(out)


MUTATIONS = st.lists(st.tuples(st.integers(0, 20_000), st.integers(0, 40),
                               st.sampled_from([b"", b"<", b">", b"/", b"=", b'"', b"&amp;", b"A", b"0", b" ",
                                                b"<ds:Object/>", b"<!---->", b"</ds:SignatureValue>",
                                                b"<ds:SignatureValue/>", b"T24:00:00Z", b"99999", b"\xff"])),
                     min_size=1, max_size=4)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cuts=MUTATIONS)
def test_mutated_envelope_raises_only_refusals(sealed: bytes, opener: Opener,
                                               cuts: list[tuple[int, int, bytes]]) -> None:
    """Whatever bytes are cut or inserted into a genuine envelope, open returns or refuses it."""
    with suppress(InvalidEnvelope):
        opener.open(_mutate(sealed, cuts))


ELEMENT_EDITS = st.sampled_from(["empty", "drop", "duplicate", "garbage", "date"])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(index=st.integers(0, 10_000), edit=ELEMENT_EDITS)
def test_edited_element_raises_only_refusals(sealed: bytes, opener: Opener, index: int, edit: str) -> None:
    """Emptying, dropping, doubling or garbling any one element of a genuine envelope gives a
    refusal, never another exception."""
    root = safexml.parse(sealed)
    elements = list(root.iter())
    el = elements[index % len(elements)]
    parent = el.getparent()
    if edit == "empty":
        el.text = None
        for child in list(el):
            el.remove(child)
    elif edit == "drop" and parent is not None:
        parent.remove(el)
    elif edit == "duplicate" and parent is not None:
        parent.insert(parent.index(el), copy.deepcopy(el))
    elif edit == "garbage":
        el.text = base64.b64encode(b"\x00" * (index % 50)).decode()
    elif edit == "date":
        el.text = "9999-12-31T24:00:00-14:00"
    with suppress(InvalidEnvelope):
        opener.open(_bytes(root))


# The agency curve --------------------------------------------------------------------------

def _certificate_on(pki_env: Pki, curve: ec.EllipticCurve) -> x509.Certificate:
    """A signing certificate for the commune on ``curve``, issued by the test CA as ``issue`` would."""
    key = ec.generate_private_key(curve)
    ca = pki_env.ca
    return (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, str(COMMUNE)),
                                     x509.NameAttribute(NameOID.SERIAL_NUMBER, str(COMMUNE))]))
            .issuer_name(ca.cert.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(ca.cert.not_valid_before_utc).not_valid_after(ca.cert.not_valid_after_utc)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(True, False, False, False, False, False, False, False, False), critical=True)
            .add_extension(x509.SubjectAlternativeName(
                [x509.UniformResourceIdentifier(pki.AGENCY_URI_PREFIX + str(COMMUNE))]), critical=False)
            .sign(ca.key, hashes.SHA256()))


CURVES = {"secp192r1": ec.SECP192R1(), "secp256k1": ec.SECP256K1(), "secp384r1": ec.SECP384R1()}


@pytest.mark.parametrize("curve", sorted(CURVES))
def test_certificate_on_another_curve_is_untrusted(curve: str, pki_env: Pki, opener: Opener) -> None:
    """A certificate from the trusted CA for a key on another curve than P-256 is untrusted."""
    with pytest.raises(UntrustedSigner, match="P-256"):
        opener.trust.check(_certificate_on(pki_env, CURVES[curve]))


def test_envelope_signed_with_a_p384_key_is_refused(pki_env: Pki, opener: Opener) -> None:
    """An envelope signed with a CA-issued P-384 key is refused as untrusted-signer."""
    key = ec.generate_private_key(ec.SECP384R1())
    cert = _certificate_on(pki_env, ec.SECP384R1())
    cert = x509.CertificateBuilder(cert.issuer, cert.subject, key.public_key(), cert.serial_number,
                                   cert.not_valid_before_utc, cert.not_valid_after_utc,
                                   list(cert.extensions)).sign(pki_env.ca.key, hashes.SHA256())
    dossier = make_dossier()
    root = envelope_element(transfer_header(dossier), dossier)
    signed = XMLSigner(signature_algorithm=SignatureMethod.ECDSA_SHA384, digest_algorithm=DigestAlgorithm.SHA256,
                       c14n_algorithm=CanonicalizationMethod.EXCLUSIVE_XML_CANONICALIZATION_1_0).sign(
        root, key=key, cert=[pki.cert_pem(cert).decode()])
    with pytest.raises(UntrustedSigner, match="secp384r1"):
        opener.open(_bytes(signed))


@pytest.mark.parametrize("curve", sorted(CURVES))
def test_ca_refuses_to_issue_for_another_curve(curve: str, pki_env: Pki) -> None:
    """The CA issues agency certificates for P-256 keys only."""
    with pytest.raises(PkiError, match="P-256"):
        pki_env.ca.issue(COMMUNE, ec.generate_private_key(CURVES[curve]).public_key())


# A recognised duplicate --------------------------------------------------------------------

@pytest.fixture
def police_and_transfer(tmp_path: Path) -> Iterator[tuple[NodeContext, str, bytes]]:
    """The police node's context and a transfer the commune's node sealed for it."""
    cluster = Cluster(tmp_path)
    cluster.init(str(COMMUNE), str(POLICE))
    with ExitStack() as stack:
        commune, police = (stack.enter_context(NodeContext.open(NodeConfig.load(cluster.config(str(a)))))
                           for a in (COMMUNE, POLICE))
        submit(commune, _bytes(make_dossier(size_kb=2)))
        row = next(r for r in commune.store.due_outbox(10) if r.recipient == str(POLICE))
        yield police, row.message_id, row.body


def _count_opens(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    opened: list[bytes] = []
    real = Opener.open

    def spy(self: Opener, data: bytes, source: str = "envelope") -> Any:
        opened.append(data)
        return real(self, data, source)
    monkeypatch.setattr(Opener, "open", spy)
    return opened


def test_the_same_bytes_again_skip_verification(police_and_transfer: tuple[NodeContext, str, bytes],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """A redelivery of the very bytes taken in is a duplicate, answered without verifying them."""
    police, message_id, body = police_and_transfer
    opened = _count_opens(monkeypatch)
    assert intake.receive_batch(police, [(message_id, body)])[0].outcome is Handled.ACCEPTED
    assert intake.receive_batch(police, [(message_id, body)])[0].outcome is Handled.DUPLICATE
    assert opened == [body]


def test_other_bytes_under_a_known_id_are_verified(police_and_transfer: tuple[NodeContext, str, bytes],
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Different bytes under a message id already taken in are verified, and refused when forged."""
    police, message_id, body = police_and_transfer
    intake.receive_batch(police, [(message_id, body)])
    opened = _count_opens(monkeypatch)
    forged = re.sub(rb"<ds:SignatureValue>([^<]{8})", lambda m: b"<ds:SignatureValue>" + m.group(1)[::-1], body)
    assert forged != body
    handled = intake.receive_batch(police, [(message_id, forged)])[0]
    assert handled.outcome is Handled.REFUSED
    assert handled.reason.startswith("bad-signature")
    assert opened == [forged]
