"""Realistic sample dossiers for demos, tests and benchmarks.

Names, places and documents are those of a Đầm Hà (Quảng Ninh) reception desk; identity
numbers are random and belong to nobody. Attachments are PDF-shaped bytes that fill the size
asked for, so that benchmarks move the bytes a real dossier would.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import random
from dataclasses import dataclass

from lxml import etree

from exchange.clock import utc
from exchange.codes import AgencyCode, DossierCode, ProcedureCode
from exchange.xml.names import DOSSIER_NS

FAMILY = ["Nguyễn", "Trần", "Lê", "Phạm", "Hoàng", "Vũ", "Đặng", "Bùi", "Đỗ", "Ngô", "Lý", "Đinh"]
MIDDLE = ["Văn", "Thị", "Đức", "Minh", "Thu", "Ngọc", "Quang", "Thanh", "Hữu", "Kim"]
GIVEN = ["An", "Bình", "Chi", "Dũng", "Giang", "Hà", "Hải", "Hương", "Khánh", "Lan", "Linh",
         "Long", "Mai", "Nam", "Phúc", "Quân", "Sơn", "Tâm", "Thảo", "Trang", "Tuấn", "Yến"]
PLACES = ["thị trấn Đầm Hà", "xã Đại Bình", "xã Đầm Hà", "xã Dực Yên", "xã Quảng An",
          "xã Quảng Lâm", "xã Quảng Lợi", "xã Quảng Tân", "xã Tân Bình", "xã Tân Lập"]
HAMLETS = ["thôn Làng Ngang", "thôn Tân Hợp", "thôn Tân Hải", "khu phố 1", "khu phố 3", "thôn Đồng Hải"]

DOCUMENTS: dict[str, list[tuple[str, str]]] = {
    "2.000986": [("to-khai-khai-sinh", "Tờ khai đăng ký khai sinh"),
                 ("giay-chung-sinh", "Giấy chứng sinh"),
                 ("to-khai-bhyt", "Tờ khai tham gia bảo hiểm y tế (TK1-TS)")],
    "2.002622": [("to-khai-khai-tu", "Tờ khai đăng ký khai tử"),
                 ("giay-bao-tu", "Giấy báo tử")],
    "3.000722": [("to-khai-lien-thong", "Tờ khai liên thông đăng ký khai sinh, đăng ký thường trú, cấp thẻ "
                                        "bảo hiểm y tế, cấp thẻ căn cước"),
                 ("giay-chung-sinh", "Giấy chứng sinh")],
    "2.002913": [("to-khai-lien-thong", "Tờ khai liên thông đăng ký khai tử, xóa đăng ký thường trú, "
                                        "giải quyết mai táng phí, tử tuất"),
                 ("giay-bao-tu", "Giấy báo tử")],
    "1.012784": [("don-tach-thua", "Đơn đề nghị tách thửa, hợp thửa đất"),
                 ("giay-chung-nhan", "Giấy chứng nhận quyền sử dụng đất đã cấp")],
}
GENERIC = [("don-de-nghi", "Đơn đề nghị"), ("giay-to-tuy-than", "Bản sao căn cước công dân")]
NAMES = {"2.000986": "Liên thông đăng ký khai sinh, đăng ký thường trú, cấp thẻ BHYT cho trẻ em dưới 6 tuổi",
         "2.002622": "Liên thông đăng ký khai tử, xóa đăng ký thường trú, hưởng chế độ tử tuất",
         "3.000722": "Liên thông điện tử đăng ký khai sinh, đăng ký thường trú, cấp thẻ bảo hiểm y tế, "
                     "cấp thẻ căn cước cho trẻ em dưới 6 tuổi",
         "2.002913": "Liên thông điện tử đăng ký khai tử, xóa đăng ký thường trú, giải quyết mai táng phí, tử tuất",
         "1.012784": "Đăng ký biến động quyền sử dụng đất do tách thửa, hợp thửa"}


def _e(parent: etree._Element, name: str, text: str | None = None) -> etree._Element:
    el = etree.SubElement(parent, f"{{{DOSSIER_NS}}}{name}")
    if text is not None:
        el.text = text
    return el


def _fake_pdf(rng: random.Random, size: int) -> bytes:
    head = b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<< /Type /Catalog >>\nendobj\nstream\n"
    tail = b"\nendstream\n%%EOF\n"
    return head + rng.randbytes(max(0, size - len(head) - len(tail))) + tail


@dataclass(frozen=True)
class SampleSpec:
    """What to make: which desk received it, for which procedure, how big, and when."""

    agency: AgencyCode
    procedure: ProcedureCode
    size_kb: int = 10
    sequence: int = 1
    received_at: dt.datetime | None = None
    seed: int | None = None


def person(rng: random.Random) -> str:
    return f"{rng.choice(FAMILY)} {rng.choice(MIDDLE)} {rng.choice(GIVEN)}"


def sample_dossier(spec: SampleSpec) -> etree._Element:
    """A schema-valid dossier whose base64 attachments make it about ``size_kb`` KiB."""
    rng = random.Random(spec.seed if spec.seed is not None else spec.sequence)
    received = spec.received_at or dt.datetime.now(dt.UTC).replace(microsecond=0)
    root = etree.Element(f"{{{DOSSIER_NS}}}Dossier", nsmap={None: DOSSIER_NS},  # type: ignore[dict-item]
                         version="1")
    _e(root, "Code", str(DossierCode.build(spec.agency, received.date(), spec.sequence)))
    _e(root, "Procedure", str(spec.procedure))
    _e(root, "ProcedureName", NAMES.get(str(spec.procedure), "Thủ tục hành chính liên thông"))
    _e(root, "ReceivingAgency", str(spec.agency))
    _applicant(root, rng)
    _e(root, "ReceivedAt", utc(received))
    _e(root, "DueDate", (received.date() + dt.timedelta(days=5)).isoformat())
    _documents(root, rng, str(spec.procedure), spec.size_kb * 1024)
    control = _e(root, "ProcessingControl")
    _control_row(control, rng, spec.agency, received)
    return root


def _applicant(root: etree._Element, rng: random.Random) -> None:
    applicant = _e(root, "Applicant")
    _e(applicant, "FullName", person(rng))
    _e(applicant, "IdNumber", "022" + "".join(rng.choice("0123456789") for _ in range(9)))
    _e(applicant, "DateOfBirth", dt.date(rng.randint(1960, 2004), rng.randint(1, 12),
                                         rng.randint(1, 28)).isoformat())
    _e(applicant, "Address", f"{rng.choice(HAMLETS)}, {rng.choice(PLACES)}, huyện Đầm Hà, tỉnh Quảng Ninh")
    _e(applicant, "Phone", "09" + "".join(rng.choice("0123456789") for _ in range(8)))


def _documents(root: etree._Element, rng: random.Random, procedure: str, budget: int) -> None:
    kinds = DOCUMENTS.get(procedure, GENERIC)
    documents = _e(root, "Documents")
    # base64 grows bytes by 4/3; the rest of the dossier is about 1.5 KiB.
    per_file = max(0, (budget - 1536) * 3 // 4 // len(kinds))
    for index, (kind, title) in enumerate(kinds, 1):
        document = _e(documents, "Document")
        document.set("kind", kind)
        _e(document, "Title", title)
        if per_file:
            content = _fake_pdf(rng, per_file)
            attachment = _e(document, "Attachment")
            _e(attachment, "FileName", f"{index:02d}-{kind}.pdf")
            _e(attachment, "MediaType", "application/pdf")
            _e(attachment, "Sha256", hashlib.sha256(content).hexdigest())
            _e(attachment, "Content", base64.b64encode(content).decode("ascii"))


def _control_row(control: etree._Element, rng: random.Random, agency: AgencyCode,
                 received: dt.datetime) -> None:
    row = _e(control, "Row")
    _e(row, "Time", utc(received))
    _e(row, "FromUnit", str(agency))
    _e(row, "ToUnit", str(agency))
    _e(row, "HandedOverBy", f"Công dân {person(rng)}")
    _e(row, "ReceivedBy", f"Công chức một cửa {person(rng)}")
    _e(row, "Result", "Tiếp nhận hồ sơ đầy đủ, hợp lệ")


def to_bytes(root: etree._Element) -> bytes:
    return bytes(etree.tostring(root, xml_declaration=True, encoding="UTF-8", pretty_print=True))
