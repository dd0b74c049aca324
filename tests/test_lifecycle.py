"""The end of a dossier, in process over one embedded transport: a refusal and a withdrawal stop it
at every node that holds it, and every participant learns its final state (completed, refused,
withdrawn) from the origin, once."""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from exchange.adapters.http_api import ApiServer
from exchange.audit.entries import Entry, Event
from exchange.codes import DossierCode
from exchange.demo import samples
from exchange.errors import InvalidInput, StepNotReady
from exchange.node.config import NodeConfig
from exchange.node.context import NodeContext
from exchange.node.workflow import complete, submit, withdraw
from exchange.store.states import DossierState, StepState
from exchange.xml import safexml
from exchange.xml.names import STATUS_NS, q
from tests import in_process
from tests.agencies import BIRTH, COMMUNE, INSURANCE, POLICE
from tests.in_process import Trio, settle
from tests.node_cluster import Cluster
from tests.test_http_api import TOKEN, call


@pytest.fixture
def trio(tmp_path: Path) -> Iterator[Trio]:
    """The commune (origin), the police and the social insurance as contexts over one embedded transport."""
    with in_process.trio(Cluster(tmp_path)) as nodes:
        yield nodes


def submitted(trio: Trio) -> DossierCode:
    """A birth dossier submitted at the commune and taken in by the police and the insurance."""
    commune, police, insurance, transport = trio
    spec = samples.SampleSpec(COMMUNE, BIRTH, size_kb=2, sequence=7)
    code = submit(commune, samples.to_bytes(samples.sample_dossier(spec)))
    settle(transport, commune, police, insurance)
    return code


def completed(trio: Trio) -> DossierCode:
    """A birth dossier taken the whole route: each step done, the result returned at the commune."""
    commune, police, insurance, transport = trio
    code = submitted(trio)
    complete(police, code, "residence")
    complete(insurance, code, "insurance")
    settle(transport, commune, police, insurance)
    complete(commune, code, "return")
    settle(transport, commune, police, insurance)
    return code


def state(ctx: NodeContext, code: DossierCode) -> DossierState:
    row = ctx.store.dossier(str(code))
    assert row is not None
    return row.state


def step_state(ctx: NodeContext, code: DossierCode, step: str) -> StepState:
    row = ctx.store.step(str(code), step)
    assert row is not None
    return row.state


def final_notices(ctx: NodeContext, code: DossierCode) -> list[tuple[str, str | None]]:
    """(final state, reason) of every status file the agency system got that ends the dossier."""
    found = []
    for path in sorted(ctx.config.delivery_dir.glob(f"status-{code}-*.xml")):
        root = safexml.parse(path.read_bytes())
        final = root.findtext(q("FinalState", STATUS_NS))
        if final:
            found.append((final, root.findtext(q("Reason", STATUS_NS))))
    return found


def delivered_once(*nodes: NodeContext) -> bool:
    """No node handed any envelope (by message id) or slip (by file) to its agency system twice."""
    for ctx in nodes:
        entries = [Entry.decode(data)[1] for _, data in ctx.audit.entries()]
        counts = Counter(e.message_id or e.detail.get("file") for e in entries if e.event is Event.DELIVERED)
        if any(n > 1 for n in counts.values()):
            return False
    return True


def test_refusal_at_the_police_ends_the_dossier_everywhere(trio: Trio) -> None:
    """A step refused at the police makes the dossier refused at every node, cancels the insurance
    step and the return, and gives the commune's agency system the refusal with its reason, once."""
    commune, police, insurance, transport = trio
    code = submitted(trio)
    complete(police, code, "residence", "refused", "Người khai không cư trú tại địa phương")
    settle(transport, commune, police, insurance)
    assert [state(ctx, code) for ctx in (commune, police, insurance)] == [DossierState.REFUSED] * 3
    assert step_state(insurance, code, "insurance") is StepState.CANCELLED
    assert step_state(commune, code, "return") is StepState.CANCELLED
    assert final_notices(commune, code) == [("refused", "Người khai không cư trú tại địa phương")]
    assert final_notices(insurance, code) == [("refused", "Người khai không cư trú tại địa phương")]
    assert delivered_once(commune, police, insurance)
    with pytest.raises(StepNotReady, match="cancelled"):
        complete(insurance, code, "insurance")


def test_a_refusal_needs_its_reason(trio: Trio) -> None:
    """Refusing a step without a reason is refused, and nothing changes."""
    commune, police, insurance, _ = trio
    code = submitted(trio)
    with pytest.raises(InvalidInput, match="reason"):
        complete(police, code, "residence", "refused")
    assert step_state(police, code, "residence") is StepState.READY


def test_withdrawal_after_the_police_finished(trio: Trio) -> None:
    """A withdrawal at the commune after the police's step is done makes every node's dossier
    withdrawn, cancels the insurance step and keeps the police's step done."""
    commune, police, insurance, transport = trio
    code = submitted(trio)
    complete(police, code, "residence")
    settle(transport, commune, police, insurance)
    told = withdraw(commune, code, "Người nộp rút hồ sơ")
    assert set(told) == {str(POLICE), str(INSURANCE)}
    settle(transport, commune, police, insurance)
    assert [state(ctx, code) for ctx in (commune, police, insurance)] == [DossierState.WITHDRAWN] * 3
    assert step_state(insurance, code, "insurance") is StepState.CANCELLED
    assert step_state(police, code, "residence") is StepState.DONE
    assert final_notices(police, code) == [("withdrawn", "Người nộp rút hồ sơ")]
    assert delivered_once(commune, police, insurance)
    with pytest.raises(StepNotReady, match="cancelled"):
        complete(insurance, code, "insurance")
    with pytest.raises(InvalidInput, match="already withdrawn"):
        withdraw(commune, code, "again")


def test_completion_reaches_every_participant(trio: Trio) -> None:
    """When the commune returns the result, the police and the insurance learn the dossier is completed."""
    commune, police, insurance, transport = trio
    code = completed(trio)
    assert [state(ctx, code) for ctx in (commune, police, insurance)] == [DossierState.COMPLETED] * 3
    assert final_notices(police, code) == [("completed", None)]
    assert final_notices(insurance, code) == [("completed", None)]
    assert delivered_once(commune, police, insurance)
    with pytest.raises(InvalidInput, match="already completed"):
        withdraw(commune, code, "too late")


def test_a_status_between_participants_is_not_authorized(trio: Trio) -> None:
    """Only the origin may tell a participant a dossier's state: the same notice from the police to
    the insurance is refused as not authorized."""
    commune, police, insurance, transport = trio
    code = submitted(trio)
    from exchange.envelope.messages import DossierStatus, ExchangeStatus, StatusUpdate, status_element
    from exchange.envelope.model import Header, Kind
    from exchange.node.workflow import enqueue

    update = StatusUpdate(code, police.agency, ExchangeStatus.REFUSED, DossierStatus.NOT_ACCEPTED,
                          step="residence", reason="forged", final="refused")
    header = Header(kind=Kind.STATUS, sender=police.agency, recipient=insurance.agency, dossier=code,
                    procedure=BIRTH, step="residence")
    with police.store.transaction():
        enqueue(police, header, status_element(update), None)
    settle(transport, police, insurance, rounds=1)
    assert state(insurance, code) is DossierState.PROCESSING
    refused = [Entry.decode(data)[1] for _, data in insurance.audit.entries()
               if Entry.decode(data)[1].event is Event.REFUSED]
    assert [e.detail.get("reason") for e in refused] == ["not-authorized"]


@pytest.fixture
def api(tmp_path: Path) -> Iterator[str]:
    """The commune's HTTP API, with the token configured."""
    cluster = Cluster(tmp_path)
    cluster.init(str(COMMUNE))
    config = NodeConfig.load(cluster.config(str(COMMUNE)), environ={"EXCHANGE_AGENCY_SYSTEM_TOKEN": TOKEN})
    with NodeContext.open(config) as ctx:
        server = ApiServer(ctx)
        server.start()
        yield f"http://127.0.0.1:{server.server_address[1]}"
        server.stop()


def test_withdrawal_and_refusal_over_the_http_api(api: str) -> None:
    """The HTTP API withdraws a dossier with the applicant's reason (400 without one, or once it has
    ended), and refuses a refusal without its reason and a done on a cancelled step."""
    spec = samples.SampleSpec(COMMUNE, BIRTH, size_kb=2, sequence=3)
    code = json.loads(call(f"{api}/dossiers", "POST", samples.to_bytes(samples.sample_dossier(spec)))[1])["code"]
    status, body = call(f"{api}/dossiers/{code}/steps/return/done", "POST", b'{"result": "refused"}')
    assert (status, "reason" in json.loads(body)["error"]) == (400, True)
    assert call(f"{api}/dossiers/{code}/withdraw", "POST", b"{}")[0] == 400
    status, body = call(f"{api}/dossiers/{code}/withdraw", "POST", '{"reason": "Người nộp rút hồ sơ"}'.encode())
    assert status == 200
    assert json.loads(body)["told"] == [str(POLICE), str(INSURANCE)]
    (document,) = json.loads(call(f"{api}/dossiers/{code}")[1])
    assert document["state"] == "withdrawn"
    assert {s["step"]: s["state"] for s in document["steps"]} == {
        "receive": "done", "residence": "cancelled", "insurance": "cancelled", "return": "cancelled"}
    status, body = call(f"{api}/dossiers/{code}/steps/return/done", "POST", b'{"result": "accepted"}')
    assert (status, "cancelled" in json.loads(body)["error"]) == (400, True)
    status, body = call(f"{api}/dossiers/{code}/withdraw", "POST", b'{"reason": "again"}')
    assert (status, "already withdrawn" in json.loads(body)["error"]) == (400, True)


def test_a_notice_that_overtakes_its_transfer(trio: Trio) -> None:
    """A withdrawal notice that reaches the insurance before the dossier's transfer leaves the dossier
    known there as withdrawn, and the transfer, when it comes, is taken in with its step cancelled."""
    commune, police, insurance, transport = trio
    spec = samples.SampleSpec(COMMUNE, BIRTH, size_kb=2, sequence=9)
    code = submit(commune, samples.to_bytes(samples.sample_dossier(spec)))
    held = ("acknowledged", str(INSURANCE), "transfer")
    with commune.store.transaction() as conn:  # the transfer to the insurance is held back
        conn.execute("UPDATE outbox SET state = ? WHERE recipient = ? AND kind = ?", held)
    withdraw(commune, code, "Người nộp rút hồ sơ")
    settle(transport, commune, police, insurance, rounds=2)
    assert state(insurance, code) is DossierState.WITHDRAWN
    with commune.store.transaction() as conn:
        conn.execute("UPDATE outbox SET state = 'pending' WHERE state = ? AND recipient = ? AND kind = ?", held)
    settle(transport, commune, police, insurance, rounds=2)
    assert state(insurance, code) is DossierState.WITHDRAWN
    assert step_state(insurance, code, "insurance") is StepState.CANCELLED
    assert insurance.store.dossier_payload(str(code))
    assert delivered_once(commune, police, insurance)


def test_every_question_about_one_dossier_uses_its_key(trio: Trio) -> None:
    """Each statement a dossier's whole life asks about that dossier searches by its key, not by
    an index on state (which holds every dossier the node ever had: a search that grows with its
    history). Judged by SQLite's own plan of each statement as run, unanalysed as a node runs."""
    commune, police, insurance, transport = trio
    statements: set[str] = set()
    for ctx in (commune, police, insurance):
        ctx.store.conn.set_trace_callback(statements.add)
    completed(trio)
    for ctx in (commune, police, insurance):
        ctx.store.conn.set_trace_callback(None)
    keyed = [sql for sql in statements if re.search(r"\bWHERE dossier = ", sql)]
    assert len(keyed) >= 3
    for sql in keyed:
        plan = " ".join(str(row[-1]) for row in commune.store.conn.execute(f"EXPLAIN QUERY PLAN {sql}"))
        assert "(dossier=" in plan, f"{sql}\n  -> {plan}"
