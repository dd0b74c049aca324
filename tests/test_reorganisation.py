"""A dossier crossing a reorganisation, in process over one embedded transport: received at a
commune before it merged, its residence step ready at that commune's police when the day comes.
``rules migrate`` hands the step to the successor police, the hand-off back to the desk goes to
the new commune, and the dossier completes at every node with each move audited as a re-route.

The rules are written twice: first with the merger ten days ahead (the dossier is received and
handed off), then with the merger today (the day has come), as an administrator's edit would.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from exchange.adapters.embedded import EmbeddedTransport
from exchange.audit.entries import Entry, Event
from exchange.codes import AgencyCode, DossierCode, ProcedureCode
from exchange.demo import samples
from exchange.envelope.model import Header, Kind
from exchange.errors import InvalidDossier
from exchange.node import migrate
from exchange.node.config import NodeConfig
from exchange.node.context import NodeContext
from exchange.node.intake import receive_batch
from exchange.node.workflow import complete, submit
from exchange.store.states import DossierState, Outcome, StepState
from tests.in_process import settle
from tests.node_cluster import Cluster
from tests.test_rules_cli import run

ICT = dt.timezone(dt.timedelta(hours=7))
OLD, OLD_POLICE = AgencyCode("000.01.10.H49"), AgencyCode("000.41.10.H49")
NEW, NEW_POLICE = AgencyCode("000.50.00.H49"), AgencyCode("000.51.00.H49")
NODES = (OLD, OLD_POLICE, NEW, NEW_POLICE)
BIRTH = ProcedureCode("2.000986")


def rules_xml(switch: dt.date) -> dict[str, str]:
    """The commune of Dực Yên and its police until the day before ``switch``; Quảng Tân after."""
    last = switch - dt.timedelta(days=1)
    head = '<rules xmlns="urn:vn-exchange:rules:1" version="1">'
    agencies = f"""{head}<agencies>
      <agency code="000.00.00.H49" level="province" kind="province-committee"><name>UBND tỉnh</name></agency>
      <agency code="000.01.10.H49" level="commune" kind="commune-committee" parent="000.00.00.H49" until="{last}">
        <name>UBND xã Dực Yên</name><successor agency="000.50.00.H49"/></agency>
      <agency code="000.41.10.H49" level="commune" kind="commune-police" parent="000.01.10.H49" until="{last}">
        <name>Công an xã Dực Yên</name><successor agency="000.51.00.H49"/></agency>
      <agency code="000.50.00.H49" level="commune" kind="commune-committee" parent="000.00.00.H49" from="{switch}">
        <name>UBND xã Quảng Tân</name></agency>
      <agency code="000.51.00.H49" level="commune" kind="commune-police" parent="000.50.00.H49" from="{switch}">
        <name>Công an xã Quảng Tân</name></agency>
    </agencies></rules>"""
    years = "".join(f'<year value="{y}"/>' for y in range(switch.year - 1, switch.year + 2))
    calendar = f'{head}<calendar timezone="+07:00" weekend="saturday sunday">{years}</calendar></rules>'

    def birth(code: str, span: str, extra: str = "") -> str:
        return f"""<procedure code="{code}" scope="cross-level" budget="3" origins="commune-committee" {span}>
          <name>Đăng ký khai sinh</name>{extra}
          <step id="receive" action="receive" budget="0"><by origin="true"/></step>
          <step id="residence" action="register-residence" budget="2" after="receive">
            <by kind="commune-police" within="commune"/></step>
          <step id="return" action="return-result" budget="1" after="residence"><by origin="true"/></step>
        </procedure>"""

    procedures = (head + birth("2.000986", f'until="{last}"', '<replaced-by procedure="3.000722"/>')
                  + birth("3.000722", f'from="{switch}"') + "</rules>")
    return {"agencies.xml": agencies, "calendar.xml": calendar, "procedures.xml": procedures}


def write_rules(folder: Path, switch: dt.date) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in rules_xml(switch).items():
        (folder / name).write_text(text, "utf-8")


District = dict[AgencyCode, NodeContext]


@pytest.fixture
def district(tmp_path: Path) -> Iterator[tuple[District, EmbeddedTransport, Path]]:
    folder = tmp_path / "rules"
    write_rules(folder, dt.date.today() + dt.timedelta(days=10))
    cluster = Cluster(tmp_path, rules=folder)
    cluster.init(*(str(a) for a in NODES))
    with ExitStack() as stack:
        nodes = {a: stack.enter_context(NodeContext.open(NodeConfig.load(cluster.config(str(a))))) for a in NODES}
        transport = stack.enter_context(EmbeddedTransport(nodes[OLD].config.embedded_transport))
        for agency in NODES:
            transport.declare(agency)
        yield nodes, transport, folder


def the_day_comes(nodes: District, folder: Path) -> None:
    write_rules(folder, dt.date.today())
    for ctx in nodes.values():
        ctx.rulebook.reload()


def received_yesterday(nodes: District, transport: EmbeddedTransport) -> DossierCode:
    yesterday = dt.datetime.combine(dt.date.today() - dt.timedelta(days=1), dt.time(9), ICT)
    spec = samples.SampleSpec(OLD, BIRTH, size_kb=2, received_at=yesterday.astimezone(dt.UTC))
    code = submit(nodes[OLD], samples.to_bytes(samples.sample_dossier(spec)))
    settle(transport, *nodes.values())
    return code


def state(ctx: NodeContext, code: DossierCode) -> DossierState | None:
    row = ctx.store.dossier(str(code))
    return row.state if row else None


def reroutes(ctx: NodeContext, code: DossierCode) -> list[dict[str, str]]:
    entries = (Entry.decode(data)[1] for _, data in ctx.audit.dossier_entries(str(code)))
    return [dict(e.detail) for e in entries if e.event is Event.REROUTED]


def test_a_dossier_in_flight_crosses_the_merger_and_completes(
        district: tuple[District, EmbeddedTransport, Path]) -> None:
    nodes, transport, folder = district
    code = received_yesterday(nodes, transport)
    assert nodes[OLD_POLICE].store.step(str(code), "residence").state is StepState.READY  # type: ignore[union-attr]
    the_day_comes(nodes, folder)
    moves = migrate.plan(nodes[OLD_POLICE], dt.datetime.now(dt.UTC))
    assert [(m.step, m.successor, m.action) for m in moves] == [("residence", NEW_POLICE, migrate.HANDED_OVER)]
    migrate.apply(nodes[OLD_POLICE], moves, dt.datetime.now(dt.UTC))
    settle(transport, *nodes.values())
    assert nodes[NEW_POLICE].store.step(str(code), "residence").state is StepState.READY  # type: ignore[union-attr]
    complete(nodes[NEW_POLICE], code, "residence")
    settle(transport, *nodes.values())
    # the desk of the commune that took the old one over has the return step to do, and nothing the
    # old desk did before the merger (its receipt of the dossier)
    assert [s.step for s in nodes[NEW].store.ready_steps(str(NEW))] == ["return"]
    complete(nodes[NEW], code, "return")
    settle(transport, *nodes.values())
    assert {a: state(ctx, code) for a, ctx in nodes.items()} == dict.fromkeys(NODES, DossierState.COMPLETED)
    assert reroutes(nodes[OLD_POLICE], code) == [{"from": str(OLD_POLICE), "to": str(NEW_POLICE),
                                                  "how": migrate.HANDED_OVER}]
    assert [r["to"] for r in reroutes(nodes[NEW_POLICE], code)] == [str(NEW)]
    assert nodes[OLD].store.dossier(str(code)).procedure == str(BIRTH)  # type: ignore[union-attr]  # it kept it


def test_an_abolished_desk_takes_no_new_dossier(district: tuple[District, EmbeddedTransport, Path]) -> None:
    nodes, _, folder = district
    the_day_comes(nodes, folder)
    spec = samples.SampleSpec(OLD, BIRTH, size_kb=2)
    with pytest.raises(InvalidDossier, match=r"ended on .*: it takes no new dossier; submit it at 000\.50\.00\.H49"):
        submit(nodes[OLD], samples.to_bytes(samples.sample_dossier(spec)))


def test_migrate_dry_run_lists_and_changes_nothing(district: tuple[District, EmbeddedTransport, Path],
                                                   tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    nodes, transport, folder = district
    code = received_yesterday(nodes, transport)
    the_day_comes(nodes, folder)
    config = str(Cluster(tmp_path).config(str(OLD_POLICE)))
    status, out, _ = run(capsys, "rules", "migrate", "--config", config, "--dry-run")
    assert status == 0
    assert f"{code} step residence: {OLD_POLICE} (Công an xã Dực Yên) → {NEW_POLICE} (Công an xã Quảng Tân), " \
           "would be handed over" in out
    assert "this node takes no new work" in out
    assert nodes[OLD_POLICE].store.step(str(code), "residence").state is StepState.READY  # type: ignore[union-attr]
    assert reroutes(nodes[OLD_POLICE], code) == []


def test_an_abolished_agency_refuses_a_transfer_naming_its_successor(
        district: tuple[District, EmbeddedTransport, Path]) -> None:
    """A transfer that still reaches the merged commune's police (a sender with old rules) is refused
    with the reason code agency-abolished and the successor, and changes nothing there."""
    nodes, _, folder = district
    the_day_comes(nodes, folder)
    yesterday = dt.datetime.combine(dt.date.today() - dt.timedelta(days=1), dt.time(9), ICT)
    spec = samples.SampleSpec(OLD, BIRTH, size_kb=2, sequence=9, received_at=yesterday.astimezone(dt.UTC))
    dossier = samples.sample_dossier(spec)
    header = Header(kind=Kind.TRANSFER, sender=OLD, recipient=OLD_POLICE, dossier=DossierCode(
        f"{OLD}-{yesterday:%y%m%d}-0009"), procedure=BIRTH, step="residence")
    body = nodes[OLD].signer.seal(header, dossier)
    (handled,) = receive_batch(nodes[OLD_POLICE], [(header.message_id, body)])
    assert handled.outcome is Outcome.REFUSED
    assert handled.reason.startswith("agency-abolished: 000.41.10.H49 (Công an xã Dực Yên) ended on ")
    assert "000.51.00.H49 (Công an xã Quảng Tân) does its work" in handled.reason
    assert nodes[OLD_POLICE].store.dossiers() == []
