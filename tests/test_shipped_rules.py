"""The shipped rule set, dated: the seed's district until 2025, the two-tier communes since 1 July
2025. Every day of 2025–2027 has routes only through agencies in force that day, a dossier in
flight always lands on an agency in force when a step is performed, the repealed procedures name
their replacements, and the calendar's fixed dates are working days or not as announced."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from exchange.codes import AgencyCode, ProcedureCode
from exchange.rules.load import load
from exchange.rules.model import RuleSet

SHIPPED = Path(__file__).resolve().parent.parent / "exchange" / "routing_rules"
FIRST, LAST = dt.date(2025, 1, 1), dt.date(2027, 12, 31)
RULES: RuleSet = load(SHIPPED)


def origins_on(day: dt.date) -> list[tuple[ProcedureCode, AgencyCode]]:
    """Every (procedure, origin) that can receive a dossier on ``day``."""
    found = []
    for code, versions in RULES.versions.items():
        version = next((v for v in versions if v.in_force(day)), None)
        if version is None:
            continue
        found += [(code, a.code) for a in RULES.agencies.values() if a.in_force(day) and a.kind in version.origins]
    return found


def routes_through_agencies_in_force(day: dt.date) -> None:
    pairs = origins_on(day)
    assert pairs, f"no procedure can be received on {day}"
    for code, origin in pairs:
        for step, agency in RULES.route(code, origin, day).items():
            assert RULES.agencies[agency].in_force(day), f"{code} step {step} from {origin} on {day}: {agency}"


@settings(max_examples=150, deadline=None)
@given(st.dates(min_value=FIRST, max_value=LAST))
def test_every_route_of_a_day_runs_through_agencies_in_force_that_day(day: dt.date) -> None:
    routes_through_agencies_in_force(day)


@settings(max_examples=150, deadline=None)
@given(st.dates(min_value=FIRST, max_value=LAST), st.integers(min_value=0, max_value=400))
def test_a_dossier_in_flight_lands_on_an_agency_in_force_when_each_step_is_performed(
        received: dt.date, later: int) -> None:
    performed = received + dt.timedelta(days=later)
    for code, origin in origins_on(received):
        for step, planned in RULES.route(code, origin, received).items():
            actual = RULES.successor(planned, performed, origin)
            assert RULES.agencies[actual].in_force(performed), (
                f"{code} received {received} at {origin}: step {step} on {performed} goes to {actual}")


@pytest.mark.parametrize("day", [dt.date(2025, 2, 28), dt.date(2025, 3, 1), dt.date(2025, 6, 30),
                                 dt.date(2025, 7, 1)])
def test_the_boundaries_of_the_reform_are_covered(day: dt.date) -> None:
    """The days on which the structure changes are checked too (a random day may miss them)."""
    routes_through_agencies_in_force(day)


def test_at_least_twelve_procedures_are_in_force_on_1_december_2026() -> None:
    day = dt.date(2026, 12, 1)
    assert len({code for code, _ in origins_on(day)}) >= 12


@pytest.mark.parametrize("code", ["2.000986", "2.001023", "2.002622"])
def test_the_repealed_procedures_end_and_name_their_replacements(code: str) -> None:
    last = RULES.versions[ProcedureCode(code)][-1]
    assert last.end is not None
    assert last.end < dt.date(2026, 12, 1)
    assert last.replaced_by
    for replacement in last.replaced_by:
        RULES.procedure(replacement, last.end + dt.timedelta(days=1))


def test_the_district_structure_is_history() -> None:
    day = dt.date(2026, 12, 1)
    assert not [a for a in RULES.agencies.values() if a.in_force(day) and a.level.value == "district"]


def test_quang_loi_merged_in_2020_receives_nothing_after() -> None:
    merged = [a for a in RULES.agencies.values() if "Quảng Lợi" in a.name]
    assert merged
    assert all(a.end is not None and a.end <= dt.date(2019, 12, 31) for a in merged)


def test_the_cut_off_is_the_procedures_own() -> None:
    assert RULES.calendar.cutoff is None
    assert RULES.procedure(ProcedureCode("1.001193"), dt.date(2026, 12, 1)).cutoff == dt.time(15, 0)


@pytest.mark.parametrize(("day", "working"), [
    (dt.date(2026, 1, 2), False),   # the announced swap: Friday 2 January off ...
    (dt.date(2026, 1, 10), True),   # ... Saturday 10 January worked
    (dt.date(2026, 8, 31), False),  # Monday 31 August off ...
    (dt.date(2026, 8, 22), True),   # ... Saturday 22 August worked
    (dt.date(2026, 11, 24), True),  # Vietnamese Culture Day: behind a flag until confirmed
    (dt.date(2026, 12, 1), True),
])
def test_the_fixed_dates_of_2026(day: dt.date, working: bool) -> None:
    assert RULES.calendar.is_working_day(day) is working


def test_tet_2027_is_five_working_days_off() -> None:
    tet = [d for d, name in RULES.calendar.holidays.items()
           if d.year == 2027 and "Tết Nguyên đán" in name and d.weekday() < 5]
    assert len(tet) == 5


@pytest.mark.parametrize("received", [dt.date(2025, 2, 27), dt.date(2025, 6, 30)])
def test_a_dossier_received_before_a_switch_completes_after_it(received: dt.date) -> None:
    """Every dossier receivable the day before a switch, its steps performed after it: each
    hand-off goes to an agency in force and is authorized by the receiver's rules, as a route
    of the dossier's day or as a successor's take-over."""
    ict = dt.timezone(dt.timedelta(hours=7))
    at = dt.datetime.combine(received, dt.time(9), ict)
    crossed = 0
    for code, origin in origins_on(received):
        procedure = RULES.procedure(code, at)
        route = RULES.route(code, origin, at)
        for offset, step in enumerate(procedure.steps):
            now = dt.datetime.combine(received + dt.timedelta(days=2 + offset), dt.time(10), ict)
            receiver = RULES.successor(route[step.id], now, origin)
            assert RULES.agencies[receiver].in_force(RULES.day(now))  # type: ignore[arg-type]
            for before in step.after:
                sender = RULES.successor(route[before], now, origin)
                allowed = (RULES.authorize(sender, receiver, code, step.id, origin, at)
                           or RULES.authorize_successor(sender, receiver, code, step.id, origin, at, now))
                assert allowed, f"{code} from {origin}: {sender} → {receiver} for {step.id}: {allowed.reason}"
                crossed += receiver != route[step.id]
    assert crossed  # some steps really went to successors
