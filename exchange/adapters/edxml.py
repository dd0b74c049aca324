"""edXML (QCVN 102:2016) packages as document-management systems write and read them.

No official XSD was found; the structure is the one the government SDK's ``edoc_new.edxml``
sample, OpenCPS's ``BuildEdXMLUtils`` and their ports agree on (docs/edxml.md, element by
element). A package is ``edXML`` (default namespace ``NS``) holding ``edXMLEnvelope`` (prefix
``edXML``): ``edXMLHeader`` with ``MessageHeader``, ``TraceHeaderList`` (one ``TraceHeader`` per
hop and ``Bussiness`` beside them) and ``DigitalSignature``; ``edXMLBody`` with the
``edXMLManifest``; after the envelope, ``AttachmentEncoded`` with each attachment in base64. A
status package is ``Status``: ``ResponseFor`` the document, ``From``, ``StatusCode``,
``Description``, ``Timestamp``, ``StaffInfo``.

This module knows the format only: ``Package`` and ``StatusPackage`` are what a package says,
``write_*`` give their bytes, ``read`` takes any package through the hardened parser, and the
dossier functions translate between a package and this project's dossier document. What a node
does with them is ``exchange.node.platform``'s job.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from lxml import etree

from exchange.codes import DossierCode, ProcedureCode
from exchange.envelope.dossier import DossierInfo, d, load, media_type
from exchange.errors import InvalidDossier, InvalidEnvelope
from exchange.xml import safexml
from exchange.xml.names import DOSSIER_NS

NS = "http://www.mic.gov.vn/TBT/QCVN_102_2016"
XLINK = "http://www.w3.org/1999/xlink"
SOAP_ENV = "http://schemas.xmlsoap.org/soap/envelope/"
SOAP_ACTOR = "http://schemas.xmlsoap.org/soap/actor/next"
"""The ``actor`` of ``TraceHeaderList`` in the SDK sample and its ports."""
DOSSIER_ATTACHMENT = "dossier.xml"
"""The attachment that carries this project's dossier document, so that an export imports back."""
DATE = "%Y/%m/%d"
TIMESTAMP = "%Y/%m/%d %H:%M:%S"
ICT = dt.timezone(dt.timedelta(hours=7))
"""Dates and timestamps in packages are local (Indochina time), without an offset."""
BUSINESS_NEW = "0"
"""``BussinessDocType``: 0 new, 1 revoke, 2 update, 3 replace."""
DOSSIER_TYPE = ("1", "Hồ sơ thủ tục hành chính liên thông")
"""The ``DocumentType`` (``Type``, ``TypeName``) of a dossier this node exports."""
NO_ID_NUMBER = "000000000000"
"""dossier.xsd needs a 12-digit identity number; a package from an agency has none, so its dossier
carries this one, which no citizen holds (docs/edxml.md)."""

STATUS_CODES: dict[str, str] = {
    "01": "Đã đến (phần mềm đã nhận, văn thư chưa nhận)",
    "02": "Từ chối tiếp nhận",
    "03": "Văn thư đã tiếp nhận",
    "04": "Đã phân công xử lý",
    "05": "Đang xử lý",
    "06": "Đã xử lý xong",
    "13": "Đề nghị lấy lại",
    "15": "Đồng ý lấy lại, cập nhật",
    "16": "Từ chối lấy lại, cập nhật",
}
"""QCVN 102's status codes 01-06 and the national axis's take-back codes 13, 15 and 16."""


def e(name: str) -> str:
    return f"{{{NS}}}{name}"


# What a package says ------------------------------------------------------------------------

@dataclass(frozen=True)
class Organ:
    """An agency as ``From``/``To`` name it: its code (``OrganId``) and Vietnamese name."""

    code: str
    name: str
    in_charge: str = ""
    """``OrganizationInCharge``: the body the agency answers to (its own name when not given)."""


@dataclass(frozen=True)
class Attachment:
    name: str
    content_type: str
    description: str
    content: bytes

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.content).hexdigest()


@dataclass(frozen=True)
class Trace:
    """One hop the document took: the agency that sent it on, and when (local time)."""

    organ: str
    at: dt.datetime


@dataclass(frozen=True)
class Signer:
    competence: str = ""
    position: str = ""
    full_name: str = ""


@dataclass(frozen=True)
class Business:
    doc_type: str = BUSINESS_NEW
    reason: str = ""
    department: str = ""
    staff: str = ""
    paper: str = "0"


@dataclass(frozen=True)
class Package:
    """An edXML package: the ``MessageHeader``'s fields, the trace and the attachments."""

    sender: Organ
    recipients: tuple[Organ, ...]
    code_number: str
    code_notation: str
    place: str
    promulgated: dt.date
    subject: str
    document_id: str
    type_code: str = DOSSIER_TYPE[0]
    type_name: str = DOSSIER_TYPE[1]
    content: str = ""
    signer: Signer = Signer()
    due: dt.date | None = None
    to_places: tuple[str, ...] = ()
    steering: str = "0"
    traces: tuple[Trace, ...] = ()
    business: Business = Business()
    attachments: tuple[Attachment, ...] = field(default=())

    def attachment(self, name: str) -> Attachment | None:
        return next((a for a in self.attachments if a.name == name), None)


@dataclass(frozen=True)
class StatusPackage:
    """A status package: the status of the document ``document_id`` at ``sender``."""

    organ: str
    """``ResponseFor/OrganId``: the agency that sent the document answered."""
    code: str
    promulgated: dt.date
    document_id: str
    sender: Organ
    status_code: str
    description: str
    at: dt.datetime
    department: str = ""
    staff: str = ""


def document_id(organ: str, day: dt.date, number: str, notation: str) -> str:
    """``DocumentId`` as the SDK builds it: ``organ,yyyy/MM/dd,number/notation``."""
    return f"{organ},{day.strftime(DATE)},{number}/{notation}"


def local_date(moment: dt.datetime) -> dt.date:
    return moment.astimezone(ICT).date()


# Writing ----------------------------------------------------------------------------------

def _sub(parent: etree._Element, name: str, text: str | None = None) -> etree._Element:
    child = etree.SubElement(parent, e(name))
    if text is not None:
        child.text = text
    return child


DECLARATION = b'<?xml version="1.0" encoding="UTF-8"?>\n'


def _serialize(root: etree._Element) -> bytes:
    """UTF-8 with the declaration the SDK writes; Vietnamese as itself, never a character reference."""
    return DECLARATION + bytes(etree.tostring(root, encoding="UTF-8", pretty_print=True))


def write_package(package: Package) -> bytes:
    """The package's bytes: UTF-8 with its declaration, elements in the SDK sample's order."""
    root = etree.Element(e("edXML"), nsmap={None: NS})  # type: ignore[dict-item]
    envelope = etree.SubElement(root, e("edXMLEnvelope"), nsmap={"edXML": NS})
    header = _sub(envelope, "edXMLHeader")
    _message_header(_sub(header, "MessageHeader"), package)
    _trace_list(header, package)
    _sub(header, "DigitalSignature")
    manifest = _sub(_sub(envelope, "edXMLBody"), "edXMLManifest")
    manifest.set("version", "1.0")
    ids = [f"{index:03d}.{a.sha256[:16]}" for index, a in enumerate(package.attachments, 1)]
    for content_id, attachment in zip(ids, package.attachments, strict=True):
        _reference(manifest, content_id, attachment)
    if package.attachments:
        encoded = _sub(root, "AttachmentEncoded")
        for content_id, attachment in zip(ids, package.attachments, strict=True):
            _encoded(encoded, content_id, attachment)
    return _serialize(root)


def _organ(parent: etree._Element, name: str, organ: Organ) -> None:
    el = _sub(parent, name)
    _sub(el, "OrganId", organ.code)
    _sub(el, "OrganizationInCharge", organ.in_charge or organ.name)
    _sub(el, "OrganName", organ.name)


def _message_header(message: etree._Element, p: Package) -> None:
    _organ(message, "From", p.sender)
    for recipient in p.recipients:
        _organ(message, "To", recipient)
    code = _sub(message, "Code")
    _sub(code, "CodeNumber", p.code_number)
    _sub(code, "CodeNotation", p.code_notation)
    promulgation = _sub(message, "PromulgationInfo")
    _sub(promulgation, "Place", p.place)
    _sub(promulgation, "PromulgationDate", p.promulgated.strftime(DATE))
    kind = _sub(message, "DocumentType")
    _sub(kind, "Type", p.type_code)
    _sub(kind, "TypeName", p.type_name)
    _sub(message, "Subject", p.subject)
    _sub(message, "Content", p.content)
    signer = _sub(message, "SignerInfo")
    _sub(signer, "Competence", p.signer.competence)
    _sub(signer, "Position", p.signer.position)
    _sub(signer, "FullName", p.signer.full_name)
    _sub(message, "DueDate", p.due.strftime(DATE) if p.due else "")
    places = _sub(message, "ToPlaces")
    for place in p.to_places:
        _sub(places, "Place", place)
    other = _sub(message, "OtherInfo")
    _sub(other, "Priority", "0")
    _sub(other, "PromulgationAmount", "1")
    _sub(other, "PageAmount", "1")
    _sub(message, "SteeringType", p.steering)
    _sub(message, "DocumentId", p.document_id)


def _trace_list(header: etree._Element, p: Package) -> None:
    traces = _sub(header, "TraceHeaderList")
    for name, value in (("id", "trace"), ("version", "1.0"), ("mustUnderstand", "1"), ("actor", SOAP_ACTOR)):
        traces.set(name, value)
    for hop in p.traces:
        trace = _sub(traces, "TraceHeader")
        _sub(trace, "OrganId", hop.organ)
        _sub(trace, "Timestamp", hop.at.astimezone(ICT).strftime(TIMESTAMP))
    business = _sub(traces, "Bussiness")  # sic: QCVN 102's spelling
    _sub(business, "BussinessDocType", p.business.doc_type)
    _sub(business, "BussinessDocReason", p.business.reason)
    staff = _sub(business, "StaffInfo")
    _sub(staff, "Department", p.business.department)
    _sub(staff, "Staff", p.business.staff)
    _sub(business, "Paper", p.business.paper)


def _reference(manifest: etree._Element, content_id: str, attachment: Attachment) -> None:
    reference = etree.SubElement(manifest, e("Reference"), nsmap={"xlink": XLINK})
    reference.set(f"{{{XLINK}}}href", f"cid:{content_id}")
    reference.set(f"{{{XLINK}}}type", "simple")
    _sub(reference, "Description", attachment.description)
    _sub(reference, "AttachmentName", attachment.name)
    _sub(reference, "ContentType", attachment.content_type)
    _sub(reference, "ContentId", f"cid:{content_id}")


def _encoded(encoded: etree._Element, content_id: str, attachment: Attachment) -> None:
    item = _sub(encoded, "Attachment")
    _sub(item, "ContentType", attachment.content_type)
    _sub(item, "ContentId", content_id)
    _sub(item, "Description", attachment.description)
    _sub(item, "ContentTransferEncoded", "\n" + base64.encodebytes(attachment.content).decode("ascii"))
    _sub(item, "AttachmentName", attachment.name)


def write_status(status: StatusPackage) -> bytes:
    """The status package's bytes (``edXML:Status``), in the SDK's order."""
    if status.status_code not in STATUS_CODES:
        raise InvalidDossier(f"edXML status code {status.status_code!r}: expected one of {', '.join(STATUS_CODES)}")
    root = etree.Element(e("Status"), nsmap={"edXML": NS})
    response = _sub(root, "ResponseFor")
    _sub(response, "OrganId", status.organ)
    _sub(response, "Code", status.code)
    _sub(response, "PromulgationDate", status.promulgated.strftime(DATE))
    _sub(response, "DocumentId", status.document_id)
    sender = _sub(root, "From")
    _sub(sender, "OrganId", status.sender.code)
    _sub(sender, "OrganizationInCharge", status.sender.in_charge or status.sender.name)
    _sub(sender, "OrganName", status.sender.name)
    _sub(root, "StatusCode", status.status_code)
    _sub(root, "Description", status.description)
    _sub(root, "Timestamp", status.at.astimezone(ICT).strftime(TIMESTAMP))
    staff = _sub(root, "StaffInfo")
    _sub(staff, "Department", status.department)
    _sub(staff, "Staff", status.staff)
    return _serialize(root)


# Reading ----------------------------------------------------------------------------------

class _Reader:
    """Required and optional fields of one package, each refusal naming the file and element."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, where: etree._Element | None, text: str) -> InvalidDossier:
        line = f":{where.sourceline}" if where is not None and where.sourceline else ""
        return InvalidDossier(f"{self.source}{line}: {text}")

    def child(self, parent: etree._Element, path: str, what: str) -> etree._Element:
        found = parent.find("/".join(e(p) for p in path.split("/")))
        if found is None:
            raise self.fail(parent, f"{_local(parent)} has no {path} (expected {what})")
        return found

    def text(self, parent: etree._Element, path: str, what: str) -> str:
        value = (self.child(parent, path, what).text or "").strip()
        if not value:
            raise self.fail(parent, f"{_local(parent)}/{path} is empty (expected {what})")
        return value

    def date(self, parent: etree._Element, path: str) -> dt.date:
        value = self.text(parent, path, "a date yyyy/MM/dd")
        try:
            return dt.datetime.strptime(value, DATE).date()
        except ValueError:
            raise self.fail(parent, f"{_local(parent)}/{path} is {value!r} (expected a date yyyy/MM/dd)") from None

    def timestamp(self, parent: etree._Element, path: str) -> dt.datetime:
        value = self.text(parent, path, "a local time yyyy/MM/dd HH:mm:ss")
        try:
            return dt.datetime.strptime(value, TIMESTAMP).replace(tzinfo=ICT)
        except ValueError:
            raise self.fail(parent, f"{_local(parent)}/{path} is {value!r} "
                                    "(expected a local time yyyy/MM/dd HH:mm:ss)") from None


def _local(el: etree._Element) -> str:
    return etree.QName(el).localname


def _opt(parent: etree._Element | None, path: str) -> str:
    if parent is None:
        return ""
    return (parent.findtext("/".join(e(p) for p in path.split("/"))) or "").strip()


def read(data: bytes, source: str = "edXML package") -> Package | StatusPackage:
    """A package or a status package, read through the hardened parser; InvalidDossier names the
    file, the element and what was expected when it is neither or lacks what a package needs."""
    try:
        root = safexml.parse(data, source=source)
    except InvalidEnvelope as exc:
        raise InvalidDossier(exc.message) from None
    reader = _Reader(source)
    if root.tag == e("edXML"):
        return _read_package(reader, root)
    status = root if root.tag == e("Status") else root.find(f"{{{SOAP_ENV}}}Header/{e('Status')}")
    if status is not None:
        return _read_status(reader, status)
    raise reader.fail(root, f"the root element is {root.tag}, expected {e('edXML')} (a package) or "
                            f"{e('Status')} (a status package, bare or in a SOAP header)")


def _read_organ(reader: _Reader, el: etree._Element) -> Organ:
    code = reader.text(el, "OrganId", "the agency's code")
    return Organ(code, _opt(el, "OrganName") or code, _opt(el, "OrganizationInCharge"))


def _read_package(reader: _Reader, root: etree._Element) -> Package:
    header = reader.child(root, "edXMLEnvelope/edXMLHeader", "the envelope's header")
    message = reader.child(header, "MessageHeader", "From, To, Code, PromulgationInfo, Subject…")
    recipients = tuple(_read_organ(reader, to) for to in message.iterfind(e("To")))
    if not recipients:
        raise reader.fail(message, "MessageHeader has no To (expected at least one recipient agency)")
    sender = _read_organ(reader, reader.child(message, "From", "the sending agency"))
    number = reader.text(message, "Code/CodeNumber", "the document's number")
    notation = reader.text(message, "Code/CodeNotation", "the document's notation")
    promulgated = reader.date(message, "PromulgationInfo/PromulgationDate")
    due = reader.date(message, "DueDate") if _opt(message, "DueDate") else None
    traces = reader.child(header, "TraceHeaderList", "one TraceHeader per hop")
    return Package(
        sender=sender, recipients=recipients, code_number=number, code_notation=notation,
        place=_opt(message, "PromulgationInfo/Place"), promulgated=promulgated,
        subject=reader.text(message, "Subject", "the document's subject"),
        document_id=_opt(message, "DocumentId") or document_id(sender.code, promulgated, number, notation),
        type_code=_opt(message, "DocumentType/Type"), type_name=_opt(message, "DocumentType/TypeName"),
        content=_opt(message, "Content"),
        signer=Signer(_opt(message, "SignerInfo/Competence"), _opt(message, "SignerInfo/Position"),
                      _opt(message, "SignerInfo/FullName")),
        due=due, to_places=tuple((p.text or "").strip() for p in message.iterfind(f"{e('ToPlaces')}/{e('Place')}")),
        steering=_opt(message, "SteeringType") or "0",
        traces=tuple(Trace(reader.text(t, "OrganId", "the agency's code"), reader.timestamp(t, "Timestamp"))
                     for t in traces.iterfind(e("TraceHeader"))),
        business=_read_business(_first(traces.find(e("Bussiness")), header.find(e("Bussiness")))),
        attachments=_read_attachments(reader, root),
    )


def _read_business(el: etree._Element | None) -> Business:
    if el is None:
        return Business()
    return Business(_opt(el, "BussinessDocType") or BUSINESS_NEW, _opt(el, "BussinessDocReason"),
                    _opt(el, "StaffInfo/Department"), _opt(el, "StaffInfo/Staff"), _opt(el, "Paper") or "0")


def _read_attachments(reader: _Reader, root: etree._Element) -> tuple[Attachment, ...]:
    found: dict[str, Attachment] = {}
    for item in root.iterfind(f"{e('AttachmentEncoded')}/{e('Attachment')}"):
        content_id = _strip_cid(reader.text(item, "ContentId", "the attachment's content id"))
        name = reader.text(item, "AttachmentName", "the attachment's file name")
        text = "".join((reader.child(item, "ContentTransferEncoded", "the content in base64").text or "").split())
        try:
            content = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise reader.fail(item, f"attachment {name!r} (ContentId {content_id}): ContentTransferEncoded "
                                    f"is not base64 ({exc})") from None
        if content_id in found:
            raise reader.fail(item, f"attachment {name!r}: ContentId {content_id} is used twice")
        found[content_id] = Attachment(name, _opt(item, "ContentType") or media_type(name),
                                       _opt(item, "Description"), content)
    _check_manifest(reader, root, found)
    return tuple(found.values())


def _check_manifest(reader: _Reader, root: etree._Element, found: dict[str, Attachment]) -> None:
    body = root.find(f"{e('edXMLEnvelope')}/{e('edXMLBody')}")
    manifest = None if body is None else _first(body.find(e("edXMLManifest")), body.find(e("Manifest")))
    for reference in [] if manifest is None else manifest.iterfind(e("Reference")):
        cid = _strip_cid(reference.get(f"{{{XLINK}}}href") or _opt(reference, "ContentId"))
        if cid and cid not in found:
            raise reader.fail(reference, f"the manifest references cid:{cid} "
                                         f"({_opt(reference, 'AttachmentName') or 'no name'}), which no "
                                         "AttachmentEncoded/Attachment carries "
                                         f"(they carry {', '.join(found) or 'none'})")


def _first(*found: etree._Element | None) -> etree._Element | None:
    return next((el for el in found if el is not None), None)


def _strip_cid(value: str) -> str:
    value = value.strip()
    return value[4:] if value.lower().startswith("cid:") else value


def _read_status(reader: _Reader, status: etree._Element) -> StatusPackage:
    response = reader.child(status, "ResponseFor", "the document this status answers")
    code = reader.text(status, "StatusCode", "a status code")
    if code not in STATUS_CODES:
        raise reader.fail(status, f"StatusCode is {code!r} (expected one of {', '.join(STATUS_CODES)})")
    staff = status.find(e("StaffInfo"))
    return StatusPackage(
        organ=reader.text(response, "OrganId", "the code of the agency that sent the document"),
        code=_opt(response, "Code"), promulgated=reader.date(response, "PromulgationDate"),
        document_id=reader.text(response, "DocumentId", "the DocumentId of the package answered"),
        sender=_read_organ(reader, reader.child(status, "From", "the agency reporting the status")),
        status_code=code, description=_opt(status, "Description"), at=reader.timestamp(status, "Timestamp"),
        department=_opt(staff, "Department"), staff=_opt(staff, "Staff"))


# Dossiers as packages, packages as dossiers ------------------------------------------------

def dossier_notation(code: DossierCode) -> tuple[str, str]:
    """``CodeNumber`` and ``CodeNotation`` of a dossier: its daily sequence and its code, as OpenCPS
    makes the dossier number the document's code."""
    return str(code.sequence), str(code)


def dossier_document_id(code: DossierCode, received_at: dt.datetime) -> str:
    """The ``DocumentId`` of a dossier: the receiving agency, the day received, number/code. The same
    wherever the dossier is exported from, and in every status package answering it."""
    number, notation = dossier_notation(code)
    return document_id(str(code.agency), local_date(received_at), number, notation)


def export_transfer(dossier: etree._Element, sender: Organ, recipient: Organ, subject: str, *,
                    place: str = "", at: dt.datetime | None = None, staff: str = "") -> bytes:
    """An edXML package carrying ``dossier`` from ``sender`` to ``recipient``: its attachments, and
    the dossier itself as ``dossier.xml`` so that the package imports back to the same dossier."""
    info = DossierInfo.of(dossier)
    number, notation = dossier_notation(info.code)
    at = at or dt.datetime.now(dt.UTC)
    package = Package(
        sender=sender, recipients=(recipient,), code_number=number, code_notation=notation,
        place=place or sender.name, promulgated=local_date(info.received_at), subject=subject,
        document_id=dossier_document_id(info.code, info.received_at),
        content=f"Hồ sơ {info.code} của {info.applicant}, thủ tục {info.procedure}",
        signer=Signer("Trực tiếp", "Công chức một cửa", staff or sender.name), due=info.due_date,
        to_places=(recipient.name,), traces=(*hops(dossier), Trace(sender.code, at)),
        business=Business(BUSINESS_NEW, "Hồ sơ liên thông mới", sender.name, staff or sender.name),
        attachments=(Attachment(DOSSIER_ATTACHMENT, "application/xml", f"Hồ sơ {info.code} (exchange dossier)",
                                etree.tostring(dossier, encoding="UTF-8", xml_declaration=True)),
                     *dossier_attachments(dossier)))
    return write_package(package)


def hops(dossier: etree._Element) -> list[Trace]:
    """The hand-offs between agencies the dossier's control slip records, oldest first."""
    found = []
    for row in dossier.iterfind(f"{d('ProcessingControl')}/{d('Row')}"):
        sender, receiver = row.findtext(d("FromUnit")) or "", row.findtext(d("ToUnit")) or ""
        if sender != receiver:
            found.append(Trace(sender, _parse_utc(row.findtext(d("Time")) or "")))
    return found


def _parse_utc(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))


def dossier_attachments(dossier: etree._Element) -> list[Attachment]:
    found = []
    for document in dossier.iterfind(f"{d('Documents')}/{d('Document')}"):
        title = document.findtext(d("Title")) or ""
        for item in document.iterfind(d("Attachment")):
            content = base64.b64decode("".join((item.findtext(d("Content")) or "").split()))
            found.append(Attachment(item.findtext(d("FileName")) or "", item.findtext(d("MediaType")) or "",
                                    title, content))
    return found


def carried_dossier(package: Package, source: str) -> tuple[etree._Element, DossierInfo] | None:
    """The dossier a package carries as ``dossier.xml``, checked against the package's header and
    attachments; None when it carries none (a document-management system's package)."""
    carried = package.attachment(DOSSIER_ATTACHMENT)
    if carried is None:
        return None
    root, info = load(carried.content, f"{source} ({DOSSIER_ATTACHMENT})")
    number, notation = dossier_notation(info.code)
    said = {"Code/CodeNumber": (package.code_number, number), "Code/CodeNotation": (package.code_notation, notation),
            "DocumentId": (package.document_id, dossier_document_id(info.code, info.received_at))}
    for where, (header, expected) in said.items():
        if header != expected:
            raise InvalidDossier(f"{source}: MessageHeader/{where} is {header!r} but the {DOSSIER_ATTACHMENT} it "
                                 f"carries is dossier {info.code} (expected {expected!r})")
    _check_same_files(package, root, info, source)
    return root, info


def _check_same_files(package: Package, root: etree._Element, info: DossierInfo, source: str) -> None:
    inside = sorted((a.name, a.sha256) for a in dossier_attachments(root))
    outside = sorted((a.name, a.sha256) for a in package.attachments if a.name != DOSSIER_ATTACHMENT)
    if inside != outside:
        extra = sorted(set(outside) - set(inside))
        missing = sorted(set(inside) - set(outside))
        listed = _files("in the package only", extra) + _files("in dossier.xml only", missing)
        raise InvalidDossier(f"{source}: the package's attachments are not dossier {info.code}'s: "
                             + listed.rstrip("; "))


def _files(label: str, files: Iterable[tuple[str, str]]) -> str:
    names = [f"{name} (sha256 {digest[:12]}…)" for name, digest in files]
    return f"{label}: {', '.join(names)}; " if names else ""


@dataclass(frozen=True)
class Intake:
    """What this node decided about a package it takes in as a new dossier."""

    code: DossierCode
    procedure: ProcedureCode
    procedure_name: str
    received_at: dt.datetime
    due: dt.date


def package_dossier(package: Package, intake: Intake) -> etree._Element:
    """A dossier document from a document-management system's package: the sender as the applicant,
    the subject as the first document, one document per attachment (its SHA-256 recorded), the
    package's ``DocumentId`` and trace in the control slip's first row."""
    root = etree.Element(d("Dossier"), nsmap={None: DOSSIER_NS}, version="1")  # type: ignore[dict-item]
    agency = str(intake.code.agency)
    for name, text in (("Code", str(intake.code)), ("Procedure", str(intake.procedure)),
                       ("ProcedureName", intake.procedure_name[:500]), ("ReceivingAgency", agency)):
        etree.SubElement(root, d(name)).text = text
    applicant = etree.SubElement(root, d("Applicant"))
    for name, text in (("FullName", package.sender.name), ("IdNumber", NO_ID_NUMBER),
                       ("Address", package.place or package.sender.name)):
        etree.SubElement(applicant, d(name)).text = text[:500]
    etree.SubElement(root, d("ReceivedAt")).text = intake.received_at.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    etree.SubElement(root, d("DueDate")).text = intake.due.isoformat()
    _package_documents(etree.SubElement(root, d("Documents")), package)
    row = etree.SubElement(etree.SubElement(root, d("ProcessingControl")), d("Row"))
    for name, text in (("Time", intake.received_at.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")),
                       ("FromUnit", agency), ("ToUnit", agency),
                       ("HandedOverBy", f"{package.sender.name} ({package.sender.code})"),
                       ("ReceivedBy", "exchange edxml import"), ("Result", "Tiếp nhận gói edXML"),
                       ("Note", _note(package))):
        etree.SubElement(row, d(name)).text = text[:10000] if name == "Note" else text[:500]
    return root


_MEDIA = re.compile(r"[a-z]+/[a-zA-Z0-9.+\-]+")
"""The media types dossier.xsd takes; others become what the file's name suggests."""


def _package_documents(documents: etree._Element, package: Package) -> None:
    subject = etree.SubElement(documents, d("Document"), kind="edxml-document")
    etree.SubElement(subject, d("Title")).text = package.subject[:500]
    for attachment in package.attachments:
        document = etree.SubElement(documents, d("Document"), kind="edxml-attachment")
        etree.SubElement(document, d("Title")).text = (attachment.description or attachment.name)[:500]
        item = etree.SubElement(document, d("Attachment"))
        kind = attachment.content_type if _MEDIA.fullmatch(attachment.content_type) else media_type(attachment.name)
        for name, text in (("FileName", attachment.name[:500]), ("MediaType", kind), ("Sha256", attachment.sha256),
                           ("Content", base64.b64encode(attachment.content).decode("ascii"))):
            etree.SubElement(item, d(name)).text = text


def _note(package: Package) -> str:
    hops_taken = "; ".join(f"{t.organ} {t.at.strftime(TIMESTAMP)}" for t in package.traces)
    return (f"edXML DocumentId {package.document_id}; số {package.code_number}/{package.code_notation}; "
            f"từ {package.sender.code} {package.sender.name}; trích yếu: {package.subject}"
            + (f"; vết: {hops_taken}" if hops_taken else ""))
