"""Slips for the desk and the applicant: the appointment slip at receipt, the apology slip when a
step is late, each as XML and printable HTML, delivered once; ``done --new-date`` checked."""

from __future__ import annotations

import datetime as dt
import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from lxml import etree

from exchange.audit.entries import Entry, Event
from exchange.codes import DossierCode
from exchange.demo import samples
from exchange.node import slips
from exchange.node.config import NodeConfig
from exchange.node.context import NodeContext
from exchange.node.workflow import complete, submit
from exchange.xml import safexml
from tests import in_process
from tests.agencies import BIRTH, COMMUNE
from tests.in_process import Trio, settle
from tests.node_cluster import Cluster, cli


@pytest.fixture
def cluster(tmp_path: Path) -> Cluster:
    cluster = Cluster(tmp_path)
    cluster.init(*(str(a) for a in in_process.BIRTH_ROUTE))
    return cluster


@pytest.fixture
def trio(cluster: Cluster) -> Iterator[Trio]:
    """The commune (origin), the police and the social insurance over one embedded transport."""
    with in_process.trio(cluster) as nodes:
        yield nodes


def submit_sample(ctx: NodeContext, received_at: dt.datetime | None = None) -> DossierCode:
    spec = samples.SampleSpec(COMMUNE, BIRTH, size_kb=2, sequence=3, received_at=received_at)
    return submit(ctx, samples.to_bytes(samples.sample_dossier(spec)))


def slip_files(ctx: NodeContext) -> list[str]:
    return sorted(p.name for p in slips.folder(ctx).glob("phieu-*"))


def test_the_desk_gets_an_appointment_slip_once_as_xml_and_html(trio: Trio) -> None:
    """Submitting a dossier delivers one appointment slip, XML and HTML, with its code, procedure,
    applicant and due date, Vietnamese unescaped; publishing again delivers nothing more."""
    commune = trio[0]
    code = submit_sample(commune)
    assert slip_files(commune) == [f"phieu-hen-{code}.html", f"phieu-hen-{code}.xml"]
    data = (slips.folder(commune) / f"phieu-hen-{code}.xml").read_bytes()
    assert data.startswith(b"<?xml version='1.0' encoding='UTF-8'?>")
    assert b"&#" not in data
    root = safexml.parse(data)
    dossier = safexml.parse(commune.store.dossier_payload(str(code)) or b"")
    assert root.findtext(f"{{{slips.SLIP_NS}}}DossierCode") == str(code)
    assert root.findtext(f"{{{slips.SLIP_NS}}}ProcedureCode") == str(BIRTH)
    assert root.findtext(f"{{{slips.SLIP_NS}}}Applicant") == slips.applicant_of(dossier) != ""
    assert root.findtext(f"{{{slips.SLIP_NS}}}Title") == "PHIẾU HẸN TRẢ KẾT QUẢ"
    assert root.findtext(f"{{{slips.SLIP_NS}}}DueDate")
    assert slips.publish(commune) == 0
    assert slip_files(commune) == [f"phieu-hen-{code}.html", f"phieu-hen-{code}.xml"]
    audited = [Entry.decode(e)[1] for _, e in commune.audit.dossier_entries(str(code))]
    assert sum(e.event is Event.DELIVERED and e.detail.get("via") == "slip" for e in audited) == 2


def test_the_html_slip_is_one_printable_page_whose_table_has_a_header(trio: Trio) -> None:
    """The HTML slip is UTF-8, A5, Vietnamese as itself, and its table has a header row."""
    commune = trio[0]
    code = submit_sample(commune)
    page = (slips.folder(commune) / f"phieu-hen-{code}.html").read_text("utf-8")
    assert '<meta charset="utf-8">' in page
    assert "size: A5" in page
    assert "<thead><tr><th>Mục</th><th>Nội dung</th></tr></thead>" in page
    assert "Ngày hẹn trả kết quả" in page
    assert "&#" not in page
    tree = etree.fromstring(page.encode(), etree.HTMLParser())
    assert all(table.find("thead/tr/th") is not None for table in tree.iter("table"))


def test_a_slip_whose_transaction_rolled_back_is_never_delivered(trio: Trio) -> None:
    """A slip written aside inside a transaction that rolls back stays pending and is never
    renamed into the desk's folder."""
    commune = trio[0]
    code = submit_sample(commune)
    row = commune.store.dossier(str(code))
    assert row is not None
    dossier = safexml.parse(commune.store.dossier_payload(str(code)) or b"")
    other = DossierCode(str(code)[:-4] + "9999")
    slip = replace(slips.appointment(commune, code, dossier, dt.datetime.now(dt.UTC)), dossier=str(other))

    def crash() -> None:
        with commune.store.transaction():
            slips.issue(commune, slip)
            raise RuntimeError("crash before the commit")

    with pytest.raises(RuntimeError):
        crash()
    assert slips.publish(commune) == 0
    assert f"phieu-hen-{other}.xml" not in slip_files(commune)
    assert list((slips.folder(commune) / slips.PENDING).glob(f"phieu-hen-{other}.xml{slips.COPY}*"))


def test_a_late_step_gives_the_applicant_an_apology_slip_at_both_nodes(
        trio: Trio, past: Callable[[int], dt.datetime]) -> None:
    """A step done after its due date writes an apology slip with the late agency's reason and new
    date at the late node, and the origin's desk gets the same slip when the status arrives."""
    commune, police, insurance, transport = trio
    code = submit_sample(commune, received_at=past(20))
    settle(transport, commune, police, insurance)
    new_date = dt.date.today() + dt.timedelta(days=7)
    complete(police, code, "residence", late=slips.Late("Chờ xác minh nơi cư trú.", new_date))
    slips.publish(police)
    name = f"phieu-xin-loi-{code}-residence"
    assert slip_files(police) == [f"{name}.html", f"{name}.xml"]
    settle(transport, commune, police, insurance)
    assert {f"{name}.xml", f"{name}.html"} <= set(slip_files(commune))
    for ctx in (police, commune):
        root = safexml.parse((slips.folder(ctx) / f"{name}.xml").read_bytes())
        assert root.findtext(f"{{{slips.SLIP_NS}}}NewDueDate") == new_date.isoformat()
        assert "Chờ xác minh nơi cư trú." in (root.findtext(f"{{{slips.SLIP_NS}}}Reason") or "")
    page = (slips.folder(commune) / f"{name}.html").read_text("utf-8")
    assert "Kính gửi" in page
    assert f"{new_date:%d/%m/%Y}" in page


def test_a_step_on_time_writes_no_apology(trio: Trio) -> None:
    """A step done before its due date writes no apology slip."""
    commune, police, insurance, transport = trio
    code = submit_sample(commune)
    settle(transport, commune, police, insurance)
    complete(police, code, "residence")
    slips.publish(police)
    assert not [n for n in slip_files(police) if n.startswith("phieu-xin-loi")]


@pytest.mark.parametrize(("text", "message"), [("2020-01-01", "in the past"), ("31/12/2030", "YYYY-MM-DD"),
                                               ("tomorrow", "YYYY-MM-DD")])
def test_done_refuses_a_new_date_in_the_past_or_not_a_date(
        cluster: Cluster, capsys: pytest.CaptureFixture[str], text: str, message: str) -> None:
    """`exchange done --new-date` in the past or not a date exits with a clear error, nothing done."""
    with NodeContext.open(NodeConfig.load(cluster.config(str(COMMUNE)))) as commune:
        code = submit_sample(commune)
    capsys.readouterr()
    assert cli("done", "--config", cluster.config(str(COMMUNE)), "--dossier", str(code), "--step", "return",
               "--new-date", text) != 0
    err = capsys.readouterr().err
    assert "--new-date" in err
    assert message in err


def test_parse_new_date_takes_today_and_later() -> None:
    """A new date of today or later is taken; none given means the default."""
    today = dt.date(2026, 11, 30)
    assert slips.parse_new_date("2026-11-30", today) == today
    assert slips.parse_new_date("2026-12-02", today) == dt.date(2026, 12, 2)
    assert slips.parse_new_date(None, today) is None


def test_publishing_a_slip_another_process_published_first_is_no_error(
        trio: Trio, monkeypatch: pytest.MonkeyPatch) -> None:
    """`exchange submit` and the running node's housekeeping both publish pending slips: the one
    that renames second finds the file gone, which must not end the node (it did: the daemon
    exited on FileNotFoundError)."""
    commune = trio[0]
    spec = samples.SampleSpec(COMMUNE, BIRTH, size_kb=2, sequence=5)
    root = samples.sample_dossier(spec)
    code = submit(commune, samples.to_bytes(root))
    with commune.store.transaction():  # a second slip of that dossier, committed, not yet published
        names = slips.issue(commune, slips.apology(commune, code, root, dt.datetime.now(dt.UTC), "residence",
                                                   dt.date.today(), "Cần thêm thời gian", commune.agency))
    committed = slips._committed

    def committed_then_taken(ctx: NodeContext, name: str, copy: str) -> bool:
        found = committed(ctx, name, copy)
        pending = slips.folder(ctx) / slips.PENDING / f"{name}{slips.COPY}{copy}"
        pending.replace(slips.folder(ctx) / name)  # the other process won
        return found

    monkeypatch.setattr(slips, "_committed", committed_then_taken)
    assert slips.publish(commune) == 0
    assert all((slips.folder(commune) / name).exists() for name in names)


def test_only_the_copy_whose_delivery_committed_is_published(trio: Trio) -> None:
    """Two copies of one slip written aside (a repeated or racing issue): the one whose delivery
    entry committed is published, the other stays pending, whatever it says."""
    commune = trio[0]
    code = submit_sample(commune)
    root = safexml.parse(commune.store.dossier_payload(str(code)) or b"")
    slip = slips.apology(commune, code, root, dt.datetime.now(dt.UTC), "residence", dt.date.today(),
                         "Lý do thật", commune.agency)
    with commune.store.transaction():
        names = slips.issue(commune, slip)
    loser = slips.prepare(commune, replace(slip, reason="Bản không được ghi nhận"))
    assert slips.publish(commune) == 2
    published = (slips.folder(commune) / names[0]).read_text("utf-8")
    assert "Lý do thật" in published
    assert "Bản không được ghi nhận" not in published
    assert (slips.folder(commune) / slips.PENDING / f"{names[0]}{slips.COPY}{loser.copy}").exists()


def test_a_submission_writes_its_slip_before_taking_the_write_lock(
        trio: Trio, monkeypatch: pytest.MonkeyPatch) -> None:
    """The appointment slip's files (two fsyncs) are written while another writer, the running
    node, can still take the database's write lock: the lock is held only for the records."""
    commune = trio[0]
    other = sqlite3.connect(commune.config.database, timeout=0)
    free: list[bool] = []
    write = slips.write_atomic

    def probing(path: Path, data: bytes, **kwargs: int) -> None:
        try:
            other.execute("BEGIN IMMEDIATE")
            other.execute("ROLLBACK")
            free.append(True)
        except sqlite3.OperationalError:
            free.append(False)
        write(path, data, **kwargs)

    monkeypatch.setattr(slips, "write_atomic", probing)
    try:
        submit_sample(commune)
    finally:
        other.close()
    assert free == [True, True]
