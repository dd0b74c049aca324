"""edXML status packages carry a national code for every state a dossier can be in (01-06, 13,
15, 16), with the portal's code (1-10) from the one table of portal codes beside it."""

from __future__ import annotations

from pathlib import Path

from exchange.adapters.edxml import STATE_TO_STATUS, STATUS_CODES, export_stored_status
from exchange.demo import samples
from exchange.node.config import NodeConfig
from exchange.node.context import NodeContext
from exchange.node.status import NATIONAL_STATUS
from exchange.node.workflow import submit
from exchange.store.states import DossierState
from tests.agencies import BIRTH, COMMUNE
from tests.node_cluster import Cluster

EDXML_CODES = STATUS_CODES


def test_every_state_has_an_edxml_and_a_portal_code() -> None:
    """Each DossierState maps to an edXML status code and a portal code; the ends map as decided."""
    assert set(STATE_TO_STATUS) == set(DossierState)
    assert set(STATE_TO_STATUS.values()) <= EDXML_CODES
    assert set(NATIONAL_STATUS) == set(DossierState)
    assert STATE_TO_STATUS[DossierState.COMPLETED] == "06"
    assert STATE_TO_STATUS[DossierState.REFUSED] == "02"
    assert STATE_TO_STATUS[DossierState.PROCESSING] == "05"
    assert STATE_TO_STATUS[DossierState.PAUSED] == "05"
    assert STATE_TO_STATUS[DossierState.SUPPLEMENT_REQUESTED] == "05"
    assert STATE_TO_STATUS[DossierState.WITHDRAWN] == "15"


def test_a_stored_dossiers_status_package_carries_both_codes(tmp_path: Path) -> None:
    """The status package of a dossier in each final state has its edXML code and says its portal code."""
    cluster = Cluster(tmp_path)
    cluster.init(str(COMMUNE))
    with NodeContext.open(NodeConfig.load(cluster.config(str(COMMUNE)))) as ctx:
        code = submit(ctx, samples.to_bytes(samples.sample_dossier(samples.SampleSpec(COMMUNE, BIRTH, size_kb=2))))
        for state in (DossierState.COMPLETED, DossierState.REFUSED, DossierState.WITHDRAWN):
            with ctx.store.transaction():
                ctx.store.set_dossier_state(str(code), state)
            status, package = export_stored_status(ctx, str(code))
            assert status == STATE_TO_STATUS[state]
            assert f"<edXML:StatusCode>{status}</edXML:StatusCode>".encode() in package
            assert f"TrangThaiHoSo {int(NATIONAL_STATUS[state])}".encode() in package
