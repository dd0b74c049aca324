"""edXML status packages: a code for every state a dossier can be in (01-06, 13, 15, 16), with the
portal's code beside it, ResponseFor naming the package's DocumentId, and status packages from the
platform updating the dossier they answer."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from exchange.adapters.edxml import STATUS_CODES, Organ, StatusPackage, write_status
from exchange.demo import samples
from exchange.errors import InvalidDossier
from exchange.node.config import NodeConfig
from exchange.node.context import NodeContext
from exchange.node.platform import STATE_TO_STATUS, export_stored_status
from exchange.node.status import NATIONAL_STATUS
from exchange.node.workflow import submit
from exchange.store.states import DossierState
from tests import edxml_builder as sdk
from tests import edxml_reader as reader
from tests.agencies import BIRTH, COMMUNE
from tests.node_cluster import Cluster, cli

HERE, POLICE = str(COMMUNE), "000.30.10.H49"


def test_every_state_has_an_edxml_and_a_portal_code() -> None:
    """Each DossierState maps to an edXML status code and a portal code; the ends map as decided."""
    assert set(STATE_TO_STATUS) == set(DossierState)
    assert set(STATE_TO_STATUS.values()) <= set(STATUS_CODES)
    assert set(NATIONAL_STATUS) == set(DossierState)
    assert set(STATUS_CODES) == {"01", "02", "03", "04", "05", "06", "13", "15", "16"}
    assert STATE_TO_STATUS[DossierState.COMPLETED] == "06"
    assert STATE_TO_STATUS[DossierState.REFUSED] == "02"
    assert STATE_TO_STATUS[DossierState.PROCESSING] == "05"
    assert STATE_TO_STATUS[DossierState.PAUSED] == "05"
    assert STATE_TO_STATUS[DossierState.SUPPLEMENT_REQUESTED] == "05"
    assert STATE_TO_STATUS[DossierState.WITHDRAWN] == "15"


def test_a_stored_dossiers_status_package_carries_both_codes(tmp_path: Path) -> None:
    """The status package of a dossier in each final state has its edXML code and says its portal code."""
    cluster = Cluster(tmp_path)
    cluster.init(HERE)
    with NodeContext.open(NodeConfig.load(cluster.config(HERE))) as ctx:
        code = submit(ctx, samples.to_bytes(samples.sample_dossier(samples.SampleSpec(COMMUNE, BIRTH, size_kb=2))))
        for state in (DossierState.COMPLETED, DossierState.REFUSED, DossierState.WITHDRAWN):
            with ctx.store.transaction():
                ctx.store.set_dossier_state(str(code), state)
            status, package = export_stored_status(ctx, str(code))
            assert status == STATE_TO_STATUS[state]
            assert reader.text(package, "Status/StatusCode") == status
            assert f"TrangThaiHoSo {int(NATIONAL_STATUS[state])}" in reader.text(package, "Status/Description")


def exported(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[Path, str, bytes, bytes]:
    cluster = Cluster(tmp_path)
    cluster.init(HERE)
    config = cluster.config(HERE)
    (tmp_path / "d.xml").write_bytes(samples.to_bytes(samples.sample_dossier(samples.SampleSpec(COMMUNE, BIRTH, 2, 5))))
    capsys.readouterr()
    assert cli("submit", "--config", config, tmp_path / "d.xml") == 0
    code = capsys.readouterr().out.strip()
    assert cli("edxml", "export", "--config", config, "--dossier", code, "--to", POLICE, "--out", tmp_path / "p") == 0
    assert cli("edxml", "status", "--config", config, "--dossier", code, "--out", tmp_path / "s") == 0
    capsys.readouterr()
    return config, code, (tmp_path / "p").read_bytes(), (tmp_path / "s").read_bytes()


def test_status_package_answers_the_package_element_by_element(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """ResponseFor carries OrganId, Code, PromulgationDate and the package's own DocumentId, in the SDK's order."""
    _, code, package, status = exported(tmp_path, capsys)
    assert status.startswith(b'<?xml version="1.0" encoding="UTF-8"?>\n<')
    assert reader.children(status, "Status") == [
        "ResponseFor", "From", "StatusCode", "Description", "Timestamp", "StaffInfo"]
    assert reader.children(status, "Status/ResponseFor") == ["OrganId", "Code", "PromulgationDate", "DocumentId"]
    message = "edXML/edXMLEnvelope/edXMLHeader/MessageHeader"
    assert reader.text(status, "Status/ResponseFor/DocumentId") == reader.text(package, f"{message}/DocumentId")
    assert reader.text(status, "Status/ResponseFor/PromulgationDate") == reader.text(
        package, f"{message}/PromulgationInfo/PromulgationDate")
    assert reader.text(status, "Status/ResponseFor/Code") == f"5/{code}"
    assert reader.text(status, "Status/ResponseFor/OrganId") == HERE
    assert reader.text(status, "Status/From/OrganName") == "Ủy ban nhân dân xã Dực Yên"
    assert reader.text(status, "Status/StatusCode") == "05"


@pytest.mark.parametrize("code", ["01", "03", "04", "13", "16"])
def test_a_platform_status_updates_the_dossiers_status(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], code: str) -> None:
    """A status package from the platform is recorded, and the dossier's status package then says it."""
    config, dossier, package, _ = exported(tmp_path, capsys)
    message = "edXML/edXMLEnvelope/edXMLHeader/MessageHeader"
    incoming = sdk.status(HERE, f"5/{dossier}", reader.text(package, f"{message}/PromulgationInfo/PromulgationDate"),
                          reader.text(package, f"{message}/DocumentId"), POLICE, "Công an huyện Đầm Hà", code,
                          "Trạng thái từ trục liên thông", "2026/11/29 10:15:00")
    (tmp_path / "in.edxml").write_bytes(incoming)
    assert cli("edxml", "import", "--config", config, tmp_path / "in.edxml") == 0
    assert capsys.readouterr().out.strip() == f"{dossier}: status {code} recorded"
    assert cli("edxml", "status", "--config", config, "--dossier", dossier, "--out", tmp_path / "s2") == 0
    status = (tmp_path / "s2").read_bytes()
    assert reader.text(status, "Status/StatusCode") == code
    assert reader.text(status, "Status/Description").startswith("Trạng thái từ trục liên thông")


def test_a_take_back_accepted_withdraws_the_dossier(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Status 15 (take-back accepted) from the platform withdraws the dossier at its origin; its status is then 15."""
    config, dossier, package, _ = exported(tmp_path, capsys)
    message = "edXML/edXMLEnvelope/edXMLHeader/MessageHeader"
    (tmp_path / "in.edxml").write_bytes(sdk.status(
        HERE, f"5/{dossier}", reader.text(package, f"{message}/PromulgationInfo/PromulgationDate"),
        reader.text(package, f"{message}/DocumentId"), POLICE, "Công an", "15", "Đồng ý lấy lại", "2026/11/29 10:20:00"))
    assert cli("edxml", "import", "--config", config, tmp_path / "in.edxml") == 0
    assert capsys.readouterr().out.strip() == f"{dossier}: withdrawn"
    with NodeContext.open(NodeConfig.load(config)) as ctx:
        row = ctx.store.dossier(dossier)
        assert row is not None
        assert row.state is DossierState.WITHDRAWN
        assert export_stored_status(ctx, dossier)[0] == "15"


def test_a_status_for_no_dossier_here_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A status whose DocumentId names no dossier held here exits 1 and records nothing."""
    config, dossier, _, _ = exported(tmp_path, capsys)
    (tmp_path / "in.edxml").write_bytes(sdk.status(HERE, "1/x", "2026/11/29", f"{HERE},2026/11/29,77/UBND-VP",
                                                   POLICE, "Công an", "03", "", "2026/11/29 10:20:00"))
    assert cli("edxml", "import", "--config", config, tmp_path / "in.edxml") == 1
    assert "ResponseFor/DocumentId '000.04.10.H49,2026/11/29,77/UBND-VP' names no dossier" in capsys.readouterr().err
    with NodeContext.open(NodeConfig.load(config)) as ctx:
        assert ctx.store.statuses(dossier) == []


def test_a_status_code_outside_the_standard_is_refused() -> None:
    """Writing or reading a status code that is not 01-06, 13, 15 or 16 is refused."""
    status = StatusPackage(HERE, "1/x", dt.date(2026, 11, 29), "x", Organ(POLICE, "Công an"), "07", "",
                           dt.datetime(2026, 11, 29, 3, tzinfo=dt.UTC))
    with pytest.raises(InvalidDossier, match="expected one of 01, 02, 03, 04, 05, 06, 13, 15, 16"):
        write_status(status)
