"""Packages written the way the QCVN 102:2016 SDK sample (``edoc_new.edxml``) and its ports write
them, from the published structure alone: text templates, ``edXML`` with a default namespace, the
envelope's elements under the ``edXML`` prefix, the attachments after the envelope unprefixed and
their base64 wrapped at 76 columns. Independent of ``exchange.adapters.edxml`` on purpose."""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from xml.sax.saxutils import escape

NS = "http://www.mic.gov.vn/TBT/QCVN_102_2016"
XLINK = "http://www.w3.org/1999/xlink"


@dataclass(frozen=True)
class File:
    name: str
    content_type: str
    description: str
    content: bytes


@dataclass
class Sdk:
    """The fields a document-management system fills in."""

    from_id: str
    from_name: str
    to_id: str
    to_name: str
    number: str = "125"
    notation: str = "UBND-VP"
    date: str = "2026/11/27"
    place: str = "xã Dực Yên"
    type_code: str = "18"
    type_name: str = "Công văn"
    subject: str = "Về việc liên thông hồ sơ đăng ký khai sinh cho cháu Nguyễn Thị Hồng Nhung"
    files: list[File] = field(default_factory=list)
    document_id: str | None = None
    traces: list[tuple[str, str]] = field(default_factory=list)


def wrap76(data: bytes) -> str:
    text = base64.b64encode(data).decode("ascii")
    return "\r\n".join(text[i:i + 76] for i in range(0, len(text), 76))


def _organ(tag: str, organ_id: str, name: str) -> str:
    return (f"<edXML:{tag}><edXML:OrganId>{escape(organ_id)}</edXML:OrganId>"
            f"<edXML:OrganizationInCharge>{escape(name)}</edXML:OrganizationInCharge>"
            f"<edXML:OrganName>{escape(name)}</edXML:OrganName><edXML:OrganAdd/><edXML:Email/>"
            f"<edXML:Telephone/><edXML:Fax/><edXML:Website/></edXML:{tag}>")


def package(sdk: Sdk) -> bytes:
    """The package's bytes, as the SDK sample lays it out."""
    document_id = sdk.document_id or f"{sdk.from_id},{sdk.date},{sdk.number}/{sdk.notation}"
    traces = sdk.traces or [(sdk.from_id, f"{sdk.date} 08:30:00")]
    ids = [f"{index}@edoc" for index in range(1, len(sdk.files) + 1)]
    refs = "".join(
        f'<edXML:Reference xmlns:xlink="{XLINK}" xlink:href="cid:{cid}" xlink:type="simple">'
        f"<edXML:Description>{escape(f.description)}</edXML:Description>"
        f"<edXML:AttachmentName>{escape(f.name)}</edXML:AttachmentName>"
        f"<edXML:ContentType>{f.content_type}</edXML:ContentType>"
        f"<edXML:ContentId>cid:{cid}</edXML:ContentId></edXML:Reference>\n"
        for cid, f in zip(ids, sdk.files, strict=True))
    attachments = "".join(
        f"<Attachment><ContentType>{f.content_type}</ContentType><ContentId>{cid}</ContentId>"
        f"<Description>{escape(f.description)}</Description>"
        f"<ContentTransferEncoded>{wrap76(f.content)}</ContentTransferEncoded>"
        f"<AttachmentName>{escape(f.name)}</AttachmentName></Attachment>\n"
        for cid, f in zip(ids, sdk.files, strict=True))
    hops = "".join(f"<edXML:TraceHeader><edXML:OrganId>{o}</edXML:OrganId><edXML:Timestamp>{t}</edXML:Timestamp>"
                   "</edXML:TraceHeader>" for o, t in traces)
    return f"""<?xml version="1.0" encoding="utf-8"?>
<edXML xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xmlns:xsd="http://www.w3.org/2001/XMLSchema" xmlns="{NS}">
  <edXML:edXMLEnvelope xmlns:edXML="{NS}">
    <edXML:edXMLHeader>
      <edXML:MessageHeader>
        {_organ("From", sdk.from_id, sdk.from_name)}
        {_organ("To", sdk.to_id, sdk.to_name)}
        <edXML:Code><edXML:CodeNumber>{sdk.number}</edXML:CodeNumber><edXML:CodeNotation>{escape(sdk.notation)}</edXML:CodeNotation></edXML:Code>
        <edXML:PromulgationInfo><edXML:Place>{escape(sdk.place)}</edXML:Place><edXML:PromulgationDate>{sdk.date}</edXML:PromulgationDate></edXML:PromulgationInfo>
        <edXML:DocumentType><edXML:Type>{sdk.type_code}</edXML:Type><edXML:TypeName>{escape(sdk.type_name)}</edXML:TypeName></edXML:DocumentType>
        <edXML:Subject>{escape(sdk.subject)}</edXML:Subject>
        <edXML:Content>{escape(sdk.subject)}</edXML:Content>
        <edXML:SignerInfo><edXML:Competence>Trực tiếp</edXML:Competence><edXML:Position>Chủ tịch</edXML:Position><edXML:FullName>Trần Văn Bình</edXML:FullName></edXML:SignerInfo>
        <edXML:DueDate>2026/12/04</edXML:DueDate>
        <edXML:ToPlaces><edXML:Place>{escape(sdk.to_name)}</edXML:Place></edXML:ToPlaces>
        <edXML:OtherInfo><edXML:Priority>0</edXML:Priority><edXML:SphereOfPromulgation>Liên thông văn bản</edXML:SphereOfPromulgation><edXML:TyperNotation>TVC</edXML:TyperNotation><edXML:PromulgationAmount>1</edXML:PromulgationAmount><edXML:PageAmount>2</edXML:PageAmount></edXML:OtherInfo>
        <edXML:SteeringType>0</edXML:SteeringType>
        <edXML:DocumentId>{escape(document_id)}</edXML:DocumentId>
      </edXML:MessageHeader>
      <edXML:TraceHeaderList id="a1b2c3d4" version="1.0" mustUnderstand="1" actor="http://schemas.xmlsoap.org/soap/actor/next">
        {hops}
        <edXML:Bussiness><edXML:BussinessDocType>0</edXML:BussinessDocType><edXML:BussinessDocReason>Văn bản mới</edXML:BussinessDocReason><edXML:StaffInfo><edXML:Department>Văn phòng</edXML:Department><edXML:Staff>Lê Thị Hoa</edXML:Staff></edXML:StaffInfo><edXML:Paper>0</edXML:Paper></edXML:Bussiness>
      </edXML:TraceHeaderList>
      <edXML:DigitalSignature/>
    </edXML:edXMLHeader>
    <edXML:edXMLBody>
      <edXML:edXMLManifest version="1.0">
{refs}      </edXML:edXMLManifest>
    </edXML:edXMLBody>
  </edXML:edXMLEnvelope>
  <AttachmentEncoded>
{attachments}  </AttachmentEncoded>
</edXML>
""".encode()


def status(organ: str, code: str, date: str, document_id: str, from_id: str, from_name: str, status_code: str,
           description: str, timestamp: str) -> bytes:
    """A status package as the SDK writes one: ``edXML:Status`` in the QCVN 102 namespace."""
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<edXML:Status xmlns:edXML="{NS}">
  <edXML:ResponseFor><edXML:OrganId>{organ}</edXML:OrganId><edXML:Code>{escape(code)}</edXML:Code><edXML:PromulgationDate>{date}</edXML:PromulgationDate><edXML:DocumentId>{escape(document_id)}</edXML:DocumentId></edXML:ResponseFor>
  <edXML:From><edXML:OrganId>{from_id}</edXML:OrganId><edXML:OrganName>{escape(from_name)}</edXML:OrganName><edXML:OrganizationInCharge/><edXML:OrganAdd/><edXML:Email/><edXML:Telephone/><edXML:Fax/><edXML:Website/></edXML:From>
  <edXML:StatusCode>{status_code}</edXML:StatusCode>
  <edXML:Description>{escape(description)}</edXML:Description>
  <edXML:Timestamp>{timestamp}</edXML:Timestamp>
  <edXML:StaffInfo><edXML:Department>Văn phòng</edXML:Department><edXML:Staff>Lê Thị Hoa</edXML:Staff></edXML:StaffInfo>
</edXML:Status>
""".encode()
