"""The routing engine on the real Quảng Ninh rule set: routes, parallel steps, joins, deadlines,
authorization, and the properties that must hold for every origin and every receipt time."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from exchange.codes import AgencyCode, ProcedureCode
from exchange.errors import RoutingError
from exchange.rules.load import load
from exchange.rules.model import RuleSet
from tests.agencies import BIRTH, DAM_HA_CENTRE, DAM_HA_INSURANCE, DAM_HA_POLICE, DUC_YEN, HAI_HA_POLICE, QUANG_LONG

RULES_DIR = Path(__file__).resolve().parent / "rules" / "seed-2019"
ICT = dt.timezone(dt.timedelta(hours=7))
SPLIT_PLOT = ProcedureCode("1.012784")


@pytest.fixture(scope="module")
def rules() -> RuleSet:
    return load(RULES_DIR)


def communes(rules: RuleSet) -> list[AgencyCode]:
    return sorted(a.code for a in rules.agencies.values() if a.kind == "commune-committee")


def test_real_rule_set_is_complete(rules: RuleSet) -> None:
    """The shipped rules cover both districts' communes and at least 12 procedures."""
    assert len(rules.procedures) >= 12
    assert {p.scope for p in rules.procedures.values()} == {"same-level", "cross-level"}
    assert len([c for c in communes(rules) if c.value.endswith(".10.H49")]) == 10
    assert rules.calendar.years == (2025, 2026, 2027)


def test_selector_picks_the_origin_districts_police(rules: RuleSet) -> None:
    """One rule serves every commune: each is routed to its own district's police."""
    for commune in communes(rules):
        police = rules.route(BIRTH, commune)["residence"]
        district = rules.agencies[commune].parent
        assert rules.agencies[police].kind == "police"
        assert rules.agencies[police].parent == district


def test_parallel_branches_then_join(rules: RuleSet) -> None:
    """Birth registration goes to police and social insurance at once; the result waits for both."""
    received = dt.datetime(2026, 3, 2, 9, tzinfo=ICT)
    first = rules.next_steps(BIRTH, DUC_YEN, received, {})
    assert [s.step.id for s in first] == ["receive"]
    done = {"receive": received}
    branches = rules.next_steps(BIRTH, DUC_YEN, received, done)
    assert {(s.step.id, s.agency) for s in branches} == {("residence", DAM_HA_POLICE),
                                                         ("insurance", DAM_HA_INSURANCE)}
    assert {s.due for s in branches} == {dt.date(2026, 3, 4)}
    done["residence"] = dt.datetime(2026, 3, 3, 10, tzinfo=ICT)
    assert [s.step.id for s in rules.next_steps(BIRTH, DUC_YEN, received, done)] == ["insurance"]
    done["insurance"] = dt.datetime(2026, 3, 4, 16, tzinfo=ICT)  # after the cut-off
    (join,) = rules.next_steps(BIRTH, DUC_YEN, received, done)
    assert (join.step.id, join.agency, join.due) == ("return", DUC_YEN, dt.date(2026, 3, 6))


def test_paused_step_has_no_due_date_and_restarts_the_clock(rules: RuleSet) -> None:
    """While the applicant pays the clock stops; the next step counts from the payment."""
    received = dt.datetime(2026, 3, 2, 9, tzinfo=ICT)
    done = {"receive": received, "appraise": received, "tax": received}
    (payment,) = rules.next_steps(SPLIT_PLOT, DAM_HA_CENTRE, received, done)
    assert payment.step.paused
    assert payment.due is None
    done["payment"] = dt.datetime(2026, 4, 1, 9, tzinfo=ICT)
    (register,) = rules.next_steps(SPLIT_PLOT, DAM_HA_CENTRE, received, done)
    assert register.due == dt.date(2026, 4, 6)


def test_plan_ends_on_the_procedure_due_date(rules: RuleSet) -> None:
    """For 2.000986 received on a Monday morning the plan ends on Thursday, the procedure's due date."""
    received = dt.datetime(2026, 3, 2, 9, tzinfo=ICT)
    plan = rules.plan(BIRTH, DUC_YEN, received)
    assert plan[-1].due == rules.due_date(BIRTH, received) == dt.date(2026, 3, 5)


def test_unknown_questions_are_routing_errors(rules: RuleSet) -> None:
    """Unknown procedures, origins that do not receive a procedure and unknown steps are refused."""
    received = dt.datetime(2026, 3, 2, 9, tzinfo=ICT)
    with pytest.raises(RoutingError, match="no routing rules for procedure 9.999999"):
        rules.route(ProcedureCode("9.999999"), DUC_YEN)
    with pytest.raises(RoutingError, match="not received at 000.30.10.H49"):
        rules.route(BIRTH, DAM_HA_POLICE)
    with pytest.raises(RoutingError, match="no step 'payment'"):
        rules.next_steps(BIRTH, DUC_YEN, received, {"payment": received})


def test_every_route_transfer_is_authorized(rules: RuleSet) -> None:
    """Every hand-off of every route from every origin is allowed, for that origin and overall."""
    checked = 0
    for (code, origin, _), route in rules.routes.items():
        for step in rules.procedures[code].steps:
            for before in step.after:
                sender, receiver = route[before], route[step.id]
                assert rules.authorize(sender, receiver, code, step.id, origin)
                assert rules.authorize(sender, receiver, code, step.id)
                checked += 1
    assert checked > 200


@pytest.mark.parametrize(("sender", "receiver", "procedure", "step", "origin", "reason"), [
    (HAI_HA_POLICE, DUC_YEN, BIRTH, "return", DUC_YEN, "may come from"),
    (DUC_YEN, HAI_HA_POLICE, BIRTH, "residence", DUC_YEN, "performed by 000.30.10.H49"),
    (DUC_YEN, DAM_HA_POLICE, BIRTH, "insurance", DUC_YEN, "performed by 000.31.10.H49"),
    (DAM_HA_INSURANCE, DAM_HA_POLICE, BIRTH, "residence", None, "does not perform a step before"),
    (DUC_YEN, DUC_YEN, BIRTH, "receive", DUC_YEN, "first step"),
    (DUC_YEN, DAM_HA_POLICE, ProcedureCode("9.999999"), "residence", None, "no routing rules"),
    (DUC_YEN, DAM_HA_POLICE, BIRTH, "nonsense", None, "no step 'nonsense'"),
    (QUANG_LONG, DAM_HA_POLICE, BIRTH, "residence", None, "does not perform a step before"),
    (DUC_YEN, DAM_HA_POLICE, BIRTH, "residence", DAM_HA_POLICE, "not received at"),
])
def test_refused_transfers_say_why(rules: RuleSet, sender: AgencyCode, receiver: AgencyCode,
                                   procedure: ProcedureCode, step: str, origin: AgencyCode | None,
                                   reason: str) -> None:
    """Off-route senders and receivers are refused with a reason an operator can act on."""
    decision = rules.authorize(sender, receiver, procedure, step, origin)
    assert not decision
    assert reason in decision.reason


def test_hai_ha_police_cannot_answer_for_a_dam_ha_dossier(rules: RuleSet) -> None:
    """Narrowed to the dossier's origin, another district's police is refused even for its own step."""
    assert rules.authorize(QUANG_LONG, HAI_HA_POLICE, BIRTH, "residence")
    assert not rules.authorize(DUC_YEN, HAI_HA_POLICE, BIRTH, "residence", DUC_YEN)


RECEIPT_TIMES = st.datetimes(min_value=dt.datetime(2025, 1, 1), max_value=dt.datetime(2027, 10, 31),
                             timezones=st.just(ICT))


@settings(max_examples=300, deadline=None)
@given(data=st.data(), received=RECEIPT_TIMES)
def test_every_route_resolves_within_budget_on_working_days(rules: RuleSet, data: st.DataObject,
                                                            received: dt.datetime) -> None:
    """For any origin and receipt time: the route resolves, no due date falls on a day off, and
    the last step is due no later than the procedure (pauses aside)."""
    code = data.draw(st.sampled_from(sorted(rules.procedures)))
    procedure = rules.procedures[code]
    origins = sorted(a.code for a in rules.agencies.values() if a.kind in procedure.origins)
    origin = data.draw(st.sampled_from(origins))
    plan = rules.plan(code, origin, received)
    assert [item.step.id for item in plan] == [s.id for s in procedure.steps]
    for item in plan:
        if item.due is not None:
            assert rules.calendar.is_working_day(item.due)
    assert plan[-1].due is not None
    assert plan[-1].due <= rules.due_date(code, received)  # payment taken as same-day in plans
    assert rules.calendar.is_working_day(rules.due_date(code, received))
