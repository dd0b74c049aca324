"""edXML (QCVN 102:2016) packages: a hand-made package imports as a dossier, exports re-import
to the same dossier, and status packages carry the 01–06 codes."""

from __future__ import annotations

import base64
import datetime as dt
from pathlib import Path

import pytest
from lxml import etree

from exchange.adapters.edxml import NS, Organ, export_status, export_transfer, import_package
from exchange.codes import AgencyCode, ProcedureCode
from exchange.demo import samples
from exchange.envelope.model import canonical
from exchange.errors import InvalidDossier
from tests import agencies
from tests.node_cluster import COMMUNE, Cluster, cli

POLICE = Organ(str(agencies.POLICE), "Công an huyện Đầm Hà")
DESK = Organ(COMMUNE, "Ủy ban nhân dân xã Dực Yên")


def dossier(sequence: int = 1) -> etree._Element:
    return samples.sample_dossier(samples.SampleSpec(AgencyCode(COMMUNE), ProcedureCode("2.000986"),
                                                     size_kb=3, sequence=sequence))


def hand_made_package(inner: bytes | None) -> bytes:
    """A package written by hand after the published structure, as another DMS would send it."""
    attachments = ""
    if inner is not None:
        attachments = (f"<edXML:Attachment><edXML:ContentId>cid:1</edXML:ContentId>"
                       f"<edXML:AttachmentName>dossier.xml</edXML:AttachmentName>"
                       f"<edXML:ContentType>application/xml</edXML:ContentType>"
                       f"<edXML:Value>{base64.b64encode(inner).decode()}</edXML:Value></edXML:Attachment>")
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<edXML:edXML xmlns:edXML="{NS}">
  <edXML:edXMLEnvelope>
    <edXML:edXMLHeader>
      <edXML:MessageHeader>
        <edXML:From><edXML:OrganId>{COMMUNE}</edXML:OrganId><edXML:OrganName>UBND xã Dực Yên</edXML:OrganName></edXML:From>
        <edXML:To><edXML:OrganId>000.30.10.H49</edXML:OrganId><edXML:OrganName>Công an huyện</edXML:OrganName></edXML:To>
        <edXML:Code><edXML:CodeNumber>1</edXML:CodeNumber><edXML:CodeNotation>2.000986</edXML:CodeNotation></edXML:Code>
        <edXML:PromulgationInfo><edXML:Place>Đầm Hà</edXML:Place><edXML:PromulgationDate>2026/11/29</edXML:PromulgationDate></edXML:PromulgationInfo>
        <edXML:DocumentType><edXML:Type>1</edXML:Type><edXML:TypeName>Hồ sơ</edXML:TypeName></edXML:DocumentType>
        <edXML:Subject>Liên thông khai sinh</edXML:Subject>
        <edXML:Content>Hồ sơ liên thông</edXML:Content>
        <edXML:DocumentId>{COMMUNE},2026/11/29,1</edXML:DocumentId>
        <edXML:SteeringType>0</edXML:SteeringType>
      </edXML:MessageHeader>
      <edXML:TraceHeaderList><edXML:TraceHeader><edXML:OrganId>{COMMUNE}</edXML:OrganId><edXML:Timestamp>2026/11/29 09:00:00</edXML:Timestamp></edXML:TraceHeader></edXML:TraceHeaderList>
      <edXML:Bussiness><edXML:BussinessDocType>0</edXML:BussinessDocType></edXML:Bussiness>
    </edXML:edXMLHeader>
    <edXML:edXMLBody><edXML:Manifest/></edXML:edXMLBody>
  </edXML:edXMLEnvelope>
  <edXML:AttachmentEncoded>{attachments}</edXML:AttachmentEncoded>
</edXML:edXML>
""".encode()


def test_hand_made_package_is_submitted(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`exchange edxml import` submits the dossier a hand-made package carries; `export` and
    `status` give it back as edXML."""
    district = Cluster(tmp_path)
    district.init(COMMUNE)
    package = tmp_path / "package.xml"
    package.write_bytes(hand_made_package(samples.to_bytes(dossier(7))))
    capsys.readouterr()
    assert cli("edxml", "import", "--config", district.config(COMMUNE), package) == 0
    code = capsys.readouterr().out.strip()
    assert code.endswith("-0007")
    assert cli("edxml", "export", "--config", district.config(COMMUNE), "--dossier", code,
               "--to", "000.30.10.H49", "--out", tmp_path / "out.xml") == 0
    assert code.encode() in (tmp_path / "out.xml").read_bytes()
    assert cli("edxml", "status", "--config", district.config(COMMUNE), "--dossier", code,
               "--out", tmp_path / "status.xml") == 0
    assert b"<edXML:StatusCode>05</edXML:StatusCode>" in (tmp_path / "status.xml").read_bytes()


def test_package_without_dossier_is_refused_with_the_reason() -> None:
    """A package with no dossier.xml cannot be routed, and says so."""
    with pytest.raises(InvalidDossier, match="carries no dossier.xml"):
        import_package(hand_made_package(None))


def test_export_imports_back_to_the_same_dossier() -> None:
    """A package this node exports carries the dossier, its attachments and the trace."""
    original = dossier(3)
    package = export_transfer(original, DESK, POLICE, "Liên thông khai sinh")
    root = etree.fromstring(package)
    assert root.tag == f"{{{NS}}}edXML"
    assert root.findtext(f".//{{{NS}}}DocumentId").endswith(original.findtext("{urn:vn-exchange:dossier:1}Code"))
    assert len(root.findall(f"{{{NS}}}AttachmentEncoded/{{{NS}}}Attachment")) == 1 + len(
        original.findall(".//{urn:vn-exchange:dossier:1}Attachment"))
    back, info = import_package(package)
    assert canonical(back) == canonical(original)
    assert str(info.procedure) == "2.000986"


def test_status_package_codes() -> None:
    """Status packages carry QCVN 102 codes 01–06 (and the national axis's 13, 15, 16) and refuse others."""
    status = etree.fromstring(export_status(f"{COMMUNE}-261129-0001", POLICE, "06", "Đã xử lý xong",
                                            dt.datetime(2026, 11, 29, 3, tzinfo=dt.UTC)))
    assert status.findtext(f"{{{NS}}}StatusCode") == "06"
    assert status.findtext(f"{{{NS}}}Timestamp") == "2026/11/29 10:00:00"
    with pytest.raises(InvalidDossier, match="01 to 06"):
        export_status(f"{COMMUNE}-261129-0001", POLICE, "07", "", dt.datetime.now(dt.UTC))


def test_hostile_package_is_refused() -> None:
    """A package with a DOCTYPE goes through the hardened parser and is refused."""
    with pytest.raises(InvalidDossier, match="DOCTYPE"):
        import_package(b'<!DOCTYPE x [<!ENTITY a SYSTEM "file:///etc/passwd">]><edXML/>')
