"""edXML (QCVN 102:2016) packages: our exports have the SDK sample's structure element by element,
packages written the SDK's way import as dossiers, and a package that carries our dossier.xml
must agree with it."""

from __future__ import annotations

import datetime as dt
import hashlib
import shutil
import subprocess
from pathlib import Path

import pytest
from lxml import etree

from exchange.adapters.edxml import Organ, export_transfer
from exchange.demo import samples
from exchange.node.config import NodeConfig
from exchange.node.context import NodeContext
from tests import edxml_builder as sdk
from tests import edxml_reader as reader
from tests.agencies import BIRTH, COMMUNE
from tests.node_cluster import RULES, Cluster, cli

HERE, POLICE = str(COMMUNE), "000.30.10.H49"
MESSAGE = "edXML/edXMLEnvelope/edXMLHeader/MessageHeader"
TRACES = "edXML/edXMLEnvelope/edXMLHeader/TraceHeaderList"
FILES = [sdk.File("to-trinh.pdf", "application/pdf", "Tờ trình đề nghị", b"%PDF-1.4 t\xe1\xbb\x9d tr\xc3\xacnh " * 40),
         sdk.File("giay-chung-sinh.pdf", "application/pdf", "Giấy chứng sinh", bytes(range(256)) * 3),
         sdk.File("danh-sach.xlsx", "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
                  "Danh sách kèm theo", b"PK\x03\x04" + b"x" * 500)]


def sample(sequence: int) -> etree._Element:
    return samples.sample_dossier(samples.SampleSpec(COMMUNE, BIRTH, size_kb=3, sequence=sequence))


def node(tmp_path: Path, rules: Path = RULES) -> Path:
    cluster = Cluster(tmp_path, rules=rules)
    cluster.init(HERE)
    return cluster.config(HERE)


def stored(config: Path) -> list[str]:
    with NodeContext.open(NodeConfig.load(config)) as ctx:
        return [row.code for row in ctx.store.dossiers()]


def export(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[Path, str, bytes]:
    config = node(tmp_path)
    (tmp_path / "d.xml").write_bytes(samples.to_bytes(sample(4)))
    capsys.readouterr()
    assert cli("submit", "--config", config, tmp_path / "d.xml") == 0
    code = capsys.readouterr().out.strip()
    assert cli("edxml", "export", "--config", config, "--dossier", code, "--to", POLICE,
               "--out", tmp_path / "out.edxml") == 0
    return config, code, (tmp_path / "out.edxml").read_bytes()


def test_export_has_the_sdk_samples_structure_in_order(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """An exported package has the SDK sample's elements, in its order, all in the QCVN 102 namespace."""
    _, _, data = export(tmp_path, capsys)
    assert reader.children(data, "edXML") == ["edXMLEnvelope", "AttachmentEncoded"]
    assert reader.children(data, "edXML/edXMLEnvelope") == ["edXMLHeader", "edXMLBody"]
    assert reader.children(data, "edXML/edXMLEnvelope/edXMLHeader") == [
        "MessageHeader", "TraceHeaderList", "DigitalSignature"]
    assert reader.children(data, MESSAGE) == [
        "From", "To", "Code", "PromulgationInfo", "DocumentType", "Subject", "Content", "SignerInfo", "DueDate",
        "ToPlaces", "OtherInfo", "SteeringType", "DocumentId"]
    assert reader.children(data, f"{MESSAGE}/From") == ["OrganId", "OrganizationInCharge", "OrganName"]
    assert reader.children(data, f"{MESSAGE}/Code") == ["CodeNumber", "CodeNotation"]
    assert reader.children(data, f"{MESSAGE}/PromulgationInfo") == ["Place", "PromulgationDate"]
    assert reader.children(data, f"{MESSAGE}/SignerInfo") == ["Competence", "Position", "FullName"]
    assert reader.children(data, "edXML/edXMLEnvelope/edXMLBody") == ["edXMLManifest"]
    assert {n.namespace for n in reader.nodes(data)} == {reader.NS}


def test_trace_list_holds_the_hops_and_the_business_beside_them(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """TraceHeaderList carries the four attributes, one TraceHeader per hop and Bussiness beside them."""
    _, _, data = export(tmp_path, capsys)
    trace_list = next(n for n in reader.nodes(data) if n.path == TRACES)
    assert trace_list.attributes == {"id": "trace", "version": "1.0", "mustUnderstand": "1",
                                     "actor": "http://schemas.xmlsoap.org/soap/actor/next"}
    assert reader.children(data, TRACES) == ["TraceHeader", "Bussiness"]
    assert reader.text(data, f"{TRACES}/TraceHeader/OrganId") == HERE
    assert len(reader.text(data, f"{TRACES}/TraceHeader/Timestamp")) == len("2026/11/29 10:00:00")
    assert reader.children(data, f"{TRACES}/Bussiness") == [
        "BussinessDocType", "BussinessDocReason", "StaffInfo", "Paper"]
    assert reader.texts(data, "edXML/edXMLEnvelope/edXMLHeader/Bussiness") == []


def test_a_hop_taken_is_traced() -> None:
    """Each hand-off on the dossier's control slip becomes a TraceHeader before the export's own."""
    dossier = sample(5)
    control = dossier.find("{urn:vn-exchange:dossier:1}ProcessingControl")
    assert control is not None
    row = etree.SubElement(control, "{urn:vn-exchange:dossier:1}Row")
    for name, value in (("Time", "2026-11-27T02:00:00Z"), ("FromUnit", HERE), ("ToUnit", POLICE),
                        ("HandedOverBy", "A"), ("Result", "ok")):
        etree.SubElement(row, f"{{urn:vn-exchange:dossier:1}}{name}").text = value
    data = export_transfer(dossier, Organ(POLICE, "Công an huyện Đầm Hà"), Organ(HERE, "UBND"), "Khai sinh")
    assert reader.texts(data, f"{TRACES}/TraceHeader/OrganId") == [HERE, POLICE]
    assert reader.texts(data, f"{TRACES}/TraceHeader/Timestamp")[0] == "2026/11/27 09:00:00"


def test_agencies_are_named_in_vietnamese(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """From and To carry each agency's Vietnamese name from the rules; Place is the commune."""
    _, _, data = export(tmp_path, capsys)
    assert reader.texts(data, f"{MESSAGE}/From/OrganName") == ["Ủy ban nhân dân xã Dực Yên"]
    assert reader.texts(data, f"{MESSAGE}/To/OrganId") == [POLICE]
    assert reader.texts(data, f"{MESSAGE}/To/OrganName") == ["Công an huyện Đầm Hà"]
    assert reader.texts(data, f"{MESSAGE}/To/OrganizationInCharge") == ["Ủy ban nhân dân huyện Đầm Hà"]
    assert reader.text(data, f"{MESSAGE}/PromulgationInfo/Place") == "xã Dực Yên"
    assert reader.text(data, f"{MESSAGE}/ToPlaces/Place") == "Công an huyện Đầm Hà"


def test_export_is_utf8_with_its_declaration_and_vietnamese_as_itself(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The bytes start with the XML declaration, hold Vietnamese unescaped, and xmllint finds them well-formed."""
    _, _, data = export(tmp_path, capsys)
    assert data.startswith(b'<?xml version="1.0" encoding="UTF-8"?>\n<')
    assert "Ủy ban nhân dân".encode() in data
    assert b"&#" not in data
    if shutil.which("xmllint"):
        subprocess.run(["xmllint", "--noout", tmp_path / "out.edxml"], check=True)


def test_code_and_document_id_name_the_dossier(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Code is the dossier's number and code; DocumentId is organ,yyyy/MM/dd,number/notation."""
    _, code, data = export(tmp_path, capsys)
    received = dt.datetime.fromisoformat((sample(4).findtext("{*}ReceivedAt") or "").replace("Z", "+00:00"))
    date = (received + dt.timedelta(hours=7)).strftime("%Y/%m/%d")  # the local day it was received
    assert reader.text(data, f"{MESSAGE}/Code/CodeNumber") == "4"
    assert reader.text(data, f"{MESSAGE}/Code/CodeNotation") == code
    assert reader.text(data, f"{MESSAGE}/PromulgationInfo/PromulgationDate") == date
    assert reader.text(data, f"{MESSAGE}/DocumentId") == f"{HERE},{date},4/{code}"


def test_attachments_follow_the_envelope_and_match_the_manifest(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Each Reference (xlink:href cid:ID) has its Attachment (ContentId ID) with the sample's children."""
    _, _, data = export(tmp_path, capsys)
    references, attachments = reader.references(data), reader.attachments(data)
    assert len(references) == len(attachments) == 1 + len(sample(4).findall(".//{*}Attachment"))
    assert reader.children(data, "edXML/edXMLEnvelope/edXMLBody/edXMLManifest/Reference") == [
        "Description", "AttachmentName", "ContentType", "ContentId"]
    assert reader.children(data, "edXML/AttachmentEncoded/Attachment") == [
        "ContentType", "ContentId", "Description", "ContentTransferEncoded", "AttachmentName"]
    manifest = next(n for n in reader.nodes(data) if n.path.endswith("edXMLManifest"))
    assert manifest.attributes == {"version": "1.0"}
    for reference, attachment in zip(references, attachments, strict=True):
        assert reference["href"] == reference["ContentId"] == f"cid:{attachment['ContentId']}"
        assert reference["AttachmentName"] == attachment["AttachmentName"]
    assert attachments[0]["AttachmentName"] == "dossier.xml"


def test_sdk_package_imports_as_a_dossier(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A package written the SDK's way (no dossier.xml, 76-column base64) becomes a dossier whose
    documents are the subject and each attachment, with its SHA-256."""
    config = node(tmp_path)
    package = tmp_path / "edoc.edxml"
    package.write_bytes(sdk.package(sdk.Sdk("000.00.01.H49", "Sở Tư pháp tỉnh Quảng Ninh", HERE,
                                            "Ủy ban nhân dân xã Dực Yên", files=FILES)))
    encoded = etree.fromstring(package.read_bytes()).iterfind(".//{*}ContentTransferEncoded")
    assert {max(len(line) for line in (e.text or "").splitlines()) for e in encoded} == {76}
    capsys.readouterr()
    assert cli("edxml", "import", "--config", config, "--procedure", str(BIRTH), package) == 0
    code = capsys.readouterr().out.strip()
    assert code.startswith(f"{HERE}-")
    assert code.endswith("-0001")
    with NodeContext.open(NodeConfig.load(config)) as ctx:
        payload = ctx.store.dossier_payload(code)
    assert payload is not None
    dossier = etree.fromstring(payload)
    titles = [t.text for t in dossier.iterfind(".//{*}Document/{*}Title")]
    assert titles == ["Về việc liên thông hồ sơ đăng ký khai sinh cho cháu Nguyễn Thị Hồng Nhung",
                      "Tờ trình đề nghị", "Giấy chứng sinh", "Danh sách kèm theo"]
    assert [s.text for s in dossier.iterfind(".//{*}Sha256")] == [hashlib.sha256(f.content).hexdigest() for f in FILES]
    assert dossier.findtext("{*}Applicant/{*}FullName") == "Sở Tư pháp tỉnh Quảng Ninh"
    assert "000.00.01.H49,2026/11/27,125/UBND-VP" in (dossier.findtext(".//{*}Row/{*}Note") or "")


def test_the_mapping_file_beside_the_rules_gives_the_procedure(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Without --procedure, edxml-procedures.toml maps the DocumentType/Type or subject words to a procedure."""
    rules = tmp_path / "rules"
    shutil.copytree(RULES, rules)
    (rules / "edxml-procedures.toml").write_text(
        '[types]\n"42" = "2.002622"\n\n[[subjects]]\ncontains = "khai sinh"\nprocedure = "2.000986"\n', "utf-8")
    config = node(tmp_path, rules)
    for name, type_code, expected in (("a", "18", "2.000986"), ("b", "42", "2.002622")):
        (tmp_path / name).write_bytes(sdk.package(sdk.Sdk("000.00.01.H49", "Sở Tư pháp", HERE, "UBND xã",
                                                          type_code=type_code, files=FILES[:1])))
        capsys.readouterr()
        assert cli("edxml", "import", "--config", config, tmp_path / name) == 0
        code = capsys.readouterr().out.strip()
        with NodeContext.open(NodeConfig.load(config)) as ctx:
            row = ctx.store.dossier(code)
        assert row is not None
        assert row.procedure == expected


def test_a_package_with_no_procedure_is_refused_and_nothing_is_stored(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """With no --procedure and no mapping, or an unknown procedure, import exits 1 saying why."""
    config = node(tmp_path)
    package = tmp_path / "p.edxml"
    package.write_bytes(sdk.package(sdk.Sdk("000.00.01.H49", "Sở Tư pháp", HERE, "UBND xã", files=FILES)))
    capsys.readouterr()
    assert cli("edxml", "import", "--config", config, package) == 1
    assert "no procedure for this package: give --procedure CODE" in capsys.readouterr().err
    assert cli("edxml", "import", "--config", config, "--procedure", "9.999999", package) == 1
    assert "procedure 9.999999 (from --procedure): no routing rules" in capsys.readouterr().err
    assert stored(config) == []


def test_a_package_for_another_agency_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A package addressed to another agency is not this node's to take."""
    config = node(tmp_path)
    package = tmp_path / "p.edxml"
    package.write_bytes(sdk.package(sdk.Sdk("000.00.01.H49", "Sở Tư pháp", POLICE, "Công an", files=FILES)))
    capsys.readouterr()
    assert cli("edxml", "import", "--config", config, "--procedure", str(BIRTH), package) == 1
    assert f"MessageHeader/To names {POLICE} (Công an), not this node's agency {HERE}" in capsys.readouterr().err


def test_header_must_agree_with_the_dossier_it_carries(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A header for dossier 0003 carrying dossier 0008's dossier.xml is refused, naming both."""
    config = node(tmp_path)
    three, eight = sample(3), sample(8)
    code3 = three.findtext("{*}Code") or ""
    files = [sdk.File("dossier.xml", "application/xml", "Hồ sơ", samples.to_bytes(eight))]
    package = tmp_path / "p.edxml"
    package.write_bytes(sdk.package(sdk.Sdk(HERE, "UBND", HERE, "UBND", number="3", notation=code3, files=files)))
    capsys.readouterr()
    assert cli("edxml", "import", "--config", config, package) == 1
    err = capsys.readouterr().err
    assert f"MessageHeader/Code/CodeNumber is '3' but the dossier.xml it carries is dossier {eight.findtext('{*}Code')}" in err
    assert stored(config) == []


def test_attachments_must_be_the_dossiers_own(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A package whose attachments differ from those in the dossier.xml it carries is refused."""
    config = node(tmp_path)
    data = bytearray(export_transfer(sample(6), Organ(HERE, "UBND"), Organ(HERE, "UBND"), "Khai sinh"))
    root = etree.fromstring(bytes(data))
    extra = etree.fromstring(etree.tostring(root.find("{*}AttachmentEncoded/{*}Attachment[2]")))
    extra.find("{*}ContentId").text = "extra"  # type: ignore[union-attr]
    extra.find("{*}AttachmentName").text = "ghost.pdf"  # type: ignore[union-attr]
    root.find("{*}AttachmentEncoded").append(extra)  # type: ignore[union-attr]
    (tmp_path / "p.edxml").write_bytes(etree.tostring(root, xml_declaration=True, encoding="UTF-8"))
    capsys.readouterr()
    assert cli("edxml", "import", "--config", config, tmp_path / "p.edxml") == 1
    assert "attachments are not dossier" in (err := capsys.readouterr().err)
    assert "in the package only: ghost.pdf" in err


def test_export_imports_back_to_the_same_dossier(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A package this node exports for itself imports back to the same dossier."""
    config = node(tmp_path)
    dossier = sample(9)
    (tmp_path / "p.edxml").write_bytes(export_transfer(dossier, Organ(HERE, "UBND"), Organ(HERE, "UBND"), "Khai sinh"))
    capsys.readouterr()
    assert cli("edxml", "import", "--config", config, tmp_path / "p.edxml") == 0
    assert capsys.readouterr().out.strip() == dossier.findtext("{*}Code")


@pytest.mark.parametrize(("mutate", "message"), [
    (lambda b: b.replace(b"<edXML:Subject>", b"<edXML:Sub>").replace(b"</edXML:Subject>", b"</edXML:Sub>"),
     "MessageHeader has no Subject (expected the document's subject)"),
    (lambda b: b.replace(b"2026/11/27</edXML:PromulgationDate>", b"27/11/2026</edXML:PromulgationDate>"),
     "PromulgationInfo/PromulgationDate is '27/11/2026' (expected a date yyyy/MM/dd)"),
    (lambda b: b.replace(b"<ContentTransferEncoded>", b"<ContentTransferEncoded>!!", 1),
     "attachment 'to-trinh.pdf' (ContentId 1@edoc): ContentTransferEncoded is not base64"),
    (lambda b: b.replace(b"<ContentId>2@edoc</ContentId>", b"<ContentId>9@edoc</ContentId>"),
     "the manifest references cid:2@edoc (giay-chung-sinh.pdf), which no AttachmentEncoded/Attachment carries"),
    (lambda b: b'<?xml version="1.0"?><Other/>', "the root element is Other, expected"),
    (lambda b: b'<!DOCTYPE x [<!ENTITY a SYSTEM "file:///etc/passwd">]><edXML/>', "DOCTYPE"),
])
def test_a_faulty_package_is_refused_naming_the_element(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], mutate: object, message: str) -> None:
    """Each fault in a package is refused (exit 1) with the file, the element and what was expected."""
    config = node(tmp_path)
    data = sdk.package(sdk.Sdk("000.00.01.H49", "Sở Tư pháp", HERE, "UBND xã", files=FILES))
    (tmp_path / "p.edxml").write_bytes(mutate(data))  # type: ignore[operator]
    capsys.readouterr()
    assert cli("edxml", "import", "--config", config, "--procedure", str(BIRTH), tmp_path / "p.edxml") == 1
    err = capsys.readouterr().err
    assert message in err
    assert "p.edxml" in err
    assert stored(config) == []
