"""A dossier whose clock stands still, in process over one embedded transport: a step asks the
applicant for more documents (the dossier goes back to the desk, the clock stops, the desk adds the
documents, the step resumes with them, the deadlines move by the paused working days), a fee
pause works the same way, and at a join the next performer gets the dossier once, merged."""

from __future__ import annotations

import base64
import datetime as dt
import json
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from exchange import clock
from exchange.adapters.embedded import EmbeddedTransport
from exchange.adapters.http_api import ApiServer
from exchange.audit.entries import Entry, Event
from exchange.cli import main
from exchange.codes import AgencyCode, DossierCode, ProcedureCode
from exchange.demo import samples
from exchange.envelope.dossier import Supplement, d
from exchange.errors import InvalidInput, StepNotReady
from exchange.node.config import NodeConfig
from exchange.node.context import NodeContext
from exchange.node.status import view
from exchange.node.workflow import complete, submit, supplement
from exchange.store.states import DossierState, StepState
from exchange.xml import safexml
from exchange.xml.names import STATUS_NS, q
from tests import in_process
from tests.agencies import COMMUNE, INSURANCE, POLICE
from tests.in_process import Trio, settle
from tests.node_cluster import Cluster
from tests.test_http_api import TOKEN, call
from tests.test_lifecycle import delivered_once, state, step_state, submitted

MISSING = "Thiếu bản sao giấy chứng nhận kết hôn của cha mẹ"
CERTIFICATE = Supplement("giay-chung-nhan-ket-hon.pdf", "application/pdf", b"%PDF-1.7 marriage certificate")


@pytest.fixture
def trio(tmp_path: Path) -> Iterator[Trio]:
    with in_process.trio(Cluster(tmp_path)) as nodes:
        yield nodes


def asked(trio: Trio) -> DossierCode:
    """A birth dossier whose residence step (the police) asked for the parents' marriage certificate."""
    commune, police, insurance, transport = trio
    code = submitted(trio)
    complete(police, code, "residence", "supplement", MISSING)
    settle(transport, commune, police, insurance)
    return code


def events(ctx: NodeContext, code: DossierCode, event: Event) -> list[Entry]:
    return [e for e in (Entry.decode(data)[1] for _, data in ctx.audit.dossier_entries(str(code)))
            if e.event is event]


def transfers(ctx: NodeContext, code: DossierCode) -> list[Path]:
    return sorted(ctx.config.delivery_dir.glob(f"transfer-{code}-*.xml"))


def titles(path: Path) -> list[str]:
    root = safexml.parse(path.read_bytes())
    return [doc.findtext(d("Title")) or "" for doc in root.iter(d("Document"))]


# Asking ------------------------------------------------------------------------------------

def test_a_supplement_request_needs_the_missing_documents_named(trio: Trio) -> None:
    commune, police, insurance, transport = trio
    code = submitted(trio)
    with pytest.raises(InvalidInput, match="needs a reason"):
        complete(police, code, "residence", "supplement", "  ")
    assert step_state(police, code, "residence") is StepState.READY


def test_a_supplement_request_stops_the_step_and_goes_back_to_the_desk(trio: Trio) -> None:
    commune, police, insurance, _ = trio
    code = asked(trio)
    assert (state(police, code), step_state(police, code, "residence")) == (
        DossierState.SUPPLEMENT_REQUESTED, StepState.WAITING)
    assert (state(commune, code), step_state(commune, code, "residence")) == (
        DossierState.SUPPLEMENT_REQUESTED, StepState.WAITING)
    with pytest.raises(StepNotReady, match="waits for the applicant's supplement"):
        complete(police, code, "residence")
    notice = [safexml.parse(p.read_bytes()) for p in commune.config.delivery_dir.glob(f"status-{code}-*.xml")]
    assert [n.findtext(q("Reason", STATUS_NS)) for n in notice if n.findtext(q("DossierStatus", STATUS_NS)) == "5"
            ] == [MISSING]
    slip = (commune.config.delivery_dir / "slips" / f"phieu-yeu-cau-bo-sung-{code}-residence.html").read_text("utf-8")
    assert "PHIẾU YÊU CẦU BỔ SUNG, HOÀN THIỆN HỒ SƠ" in slip
    assert MISSING in slip
    assert view(commune, str(code))[0]["national_status"] == 5
    assert [e.detail["why"] for e in events(commune, code, Event.PAUSED)] == ["supplement"]


# Supplementing -----------------------------------------------------------------------------

def test_the_supplement_resumes_the_step_with_the_new_documents(trio: Trio) -> None:
    commune, police, insurance, transport = trio
    code = asked(trio)
    before = transfers(police, code)
    assert supplement(commune, code, [CERTIFICATE]) == [f"residence → {POLICE}"]
    settle(transport, commune, police, insurance)
    assert (state(police, code), step_state(police, code, "residence")) == (DossierState.PROCESSING, StepState.READY)
    assert state(commune, code) is DossierState.PROCESSING
    after = transfers(police, code)
    assert len(after) == len(before) + 1  # the dossier again, once, with the new document
    newest = next(p for p in after if p not in before)
    assert "giay-chung-nhan-ket-hon.pdf" in titles(newest)
    complete(police, code, "residence")
    complete(insurance, code, "insurance")
    settle(transport, commune, police, insurance)
    complete(commune, code, "return")
    settle(transport, commune, police, insurance)
    assert {state(n, code) for n in (commune, police, insurance)} == {DossierState.COMPLETED}
    assert delivered_once(commune, police, insurance)


def test_the_deadlines_move_by_the_working_days_the_dossier_waited(trio: Trio) -> None:
    commune, police, insurance, transport = trio
    code = asked(trio)
    due_before = police.store.step(str(code), "residence").due  # type: ignore[union-attr]
    dossier_due = view(commune, str(code))[0]["due"]
    three_days_ago = _working_days_ago(commune, 3)
    for ctx in (commune, police):
        with ctx.store.transaction() as conn:
            conn.execute("UPDATE dossiers SET paused_since = ? WHERE code = ?", (clock.utc(three_days_ago), str(code)))
    supplement(commune, code, [CERTIFICATE])
    settle(transport, commune, police, insurance)
    calendar = police.rules.calendar
    moved = police.store.step(str(code), "residence").due  # type: ignore[union-attr]
    assert due_before is not None
    assert moved == calendar.add(dt.date.fromisoformat(due_before), 3).isoformat()
    for ctx in (commune, police):
        document = view(ctx, str(code))[0]
        assert (document["paused_days"], document["due"]) == (
            3, calendar.add(dt.date.fromisoformat(dossier_due), 3).isoformat())
    assert [e.detail["paused_days"] for e in events(police, code, Event.RESUMED)] == ["3"]


def _working_days_ago(ctx: NodeContext, days: int) -> dt.datetime:
    calendar = ctx.rules.calendar
    today = dt.datetime.now(calendar.timezone).date()
    day = today
    while calendar.working_days_between(day, today) < days:
        day -= dt.timedelta(days=1)
    return dt.datetime.combine(day, dt.time(9, 0), calendar.timezone)


def test_a_supplement_is_refused_when_no_step_asked(trio: Trio) -> None:
    commune, police, *_ = trio
    code = submitted(trio)
    with pytest.raises(InvalidInput, match="no step asked for more documents"):
        supplement(commune, code, [CERTIFICATE])
    with pytest.raises(InvalidInput, match="at least one file"):
        supplement(commune, code, [])
    assert state(commune, code) is DossierState.PROCESSING


def test_only_the_origins_desk_supplements(trio: Trio) -> None:
    commune, police, *_ = trio
    code = asked(trio)
    with pytest.raises(InvalidInput, match="the applicant supplements it there"):
        supplement(police, code, [CERTIFICATE])
    assert step_state(police, code, "residence") is StepState.WAITING


def test_a_file_the_dossier_cannot_hold_changes_nothing(trio: Trio) -> None:
    commune, *_ = trio
    code = asked(trio)
    stored = commune.store.dossier_payload(str(code))
    with pytest.raises(InvalidInput, match="MediaType"):
        supplement(commune, code, [Supplement("scan", "not a media type", b"x")])
    assert commune.store.dossier_payload(str(code)) == stored
    assert state(commune, code) is DossierState.SUPPLEMENT_REQUESTED


def test_the_command_line_supplements(trio: Trio, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    commune, police, insurance, transport = trio
    code = asked(trio)
    scan = tmp_path / "giay-chung-nhan-ket-hon.pdf"
    scan.write_bytes(b"%PDF-1.7")
    config = str(Cluster(tmp_path).config(str(COMMUNE)))
    assert main(["supplement", "--config", config, "--dossier", str(code), "--title", "Giấy chứng nhận kết hôn",
                 str(scan)]) == 0
    assert f"residence → {POLICE}" in capsys.readouterr().out
    settle(transport, commune, police, insurance)
    assert any("Giấy chứng nhận kết hôn" in titles(path) for path in transfers(police, code))
    assert main(["supplement", "--config", config, "--dossier", str(code), str(scan)]) == 1
    assert "no step asked for more documents" in capsys.readouterr().err


def test_the_http_api_supplements(trio: Trio, tmp_path: Path) -> None:
    commune, police, insurance, transport = trio
    code = asked(trio)
    config = NodeConfig.load(Cluster(tmp_path).config(str(COMMUNE)), environ={"EXCHANGE_AGENCY_SYSTEM_TOKEN": TOKEN})
    with NodeContext.open(config) as ctx:
        server = ApiServer(ctx)
        server.start()
        url = f"http://127.0.0.1:{server.server_address[1]}/dossiers/{code}/supplement"
        try:
            status, body = call(url, "POST", json.dumps({"documents": [{
                "file_name": "scan.pdf", "content_base64": "not base64!"}]}).encode())
            assert status == 400
            assert "documents[0].content_base64 is not base64" in json.loads(body)["error"]
            status, body = call(url, "POST", json.dumps({"documents": [{
                "file_name": "scan.pdf", "content_base64": base64.b64encode(b"%PDF").decode()}]}).encode())
            assert (status, json.loads(body)["resumed"]) == (200, [f"residence → {POLICE}"])
        finally:
            server.stop()
    settle(transport, commune, police, insurance)
    assert step_state(police, code, "residence") is StepState.READY


# A join --------------------------------------------------------------------------------------

def test_at_a_join_the_next_performer_gets_the_dossier_once_merged(trio: Trio) -> None:
    commune, police, insurance, transport = trio
    code = submitted(trio)
    complete(police, code, "residence")
    settle(transport, commune, police, insurance)
    assert transfers(commune, code) == []  # the first branch's transfer waits for the other
    complete(insurance, code, "insurance")
    settle(transport, commune, police, insurance)
    delivered = transfers(commune, code)
    assert len(delivered) == 1
    rows = safexml.parse(delivered[0].read_bytes()).iter(d("Row"))
    senders = [row.findtext(d("FromUnit")) for row in rows]
    assert str(POLICE) in senders
    assert str(INSURANCE) in senders
    held = [e.detail.get("held") for e in events(commune, code, Event.RECEIVED)]
    assert held.count(None) == 1
    assert len(held) == 2


# A fee ---------------------------------------------------------------------------------------

LAND = ProcedureCode("1.012784")
CENTRE, LAND_OFFICE, TAX = AgencyCode("000.20.10.H49"), AgencyCode("000.32.10.H49"), AgencyCode("000.33.10.H49")


def test_a_fee_stops_the_clock_as_a_supplement_does(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path)
    cluster.init(*(str(a) for a in (CENTRE, LAND_OFFICE, TAX)))
    with ExitStack() as stack:
        centre, office, tax = (stack.enter_context(NodeContext.open(NodeConfig.load(cluster.config(str(a)))))
                               for a in (CENTRE, LAND_OFFICE, TAX))
        transport = stack.enter_context(EmbeddedTransport(centre.config.embedded_transport))
        for agency in (CENTRE, LAND_OFFICE, TAX):
            transport.declare(agency)
        code = submit(centre, samples.to_bytes(samples.sample_dossier(samples.SampleSpec(CENTRE, LAND, size_kb=2))))
        settle(transport, centre, office, tax)
        complete(office, code, "appraise")
        settle(transport, centre, office, tax)
        complete(tax, code, "tax")
        settle(transport, centre, office, tax)
        assert state(centre, code) is DossierState.PAUSED
        assert view(centre, str(code))[0]["national_status"] == 6
        complete(centre, code, "payment")
        assert state(centre, code) is DossierState.PROCESSING
        assert [e.detail["why"] for e in events(centre, code, Event.RESUMED)] == ["fee"]


def test_an_apology_is_for_a_late_step_only(trio: Trio) -> None:
    from exchange.node import slips

    commune, police, *_ = trio
    code = submitted(trio)
    with pytest.raises(InvalidInput, match="done on time"):
        complete(police, code, "residence", late=slips.Late("Cần thêm thời gian", None))
    assert step_state(police, code, "residence") is StepState.READY



def test_a_second_request_at_the_same_step_has_its_own_slip(trio: Trio) -> None:
    commune, police, insurance, transport = trio
    code = asked(trio)
    supplement(commune, code, [CERTIFICATE])
    settle(transport, commune, police, insurance)
    complete(police, code, "residence", "supplement", "Thiếu bản sao giấy khai sinh của mẹ")
    settle(transport, commune, police, insurance)
    folder = commune.config.delivery_dir / "slips"
    first = (folder / f"phieu-yeu-cau-bo-sung-{code}-residence.html").read_text("utf-8")
    second = (folder / f"phieu-yeu-cau-bo-sung-{code}-residence-lan-2.html").read_text("utf-8")
    assert MISSING in first
    assert "Thiếu bản sao giấy khai sinh của mẹ" in second
