"""Time in the rules, on a small dated district: the district police end on 28 February 2025 (the
commune police take residence registration over, commune by commune), the district and its
communes end on 30 June 2025 (a new commune takes over), and the old birth procedure is replaced.
The engine answers for a moment; ``rules check`` refuses what would leave a day without a route."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from exchange.codes import AgencyCode, ProcedureCode
from exchange.errors import RoutingError, RuleError
from exchange.rules import tools
from exchange.rules.load import load
from exchange.rules.model import RuleSet
from tests.test_rules_cli import run

ICT = dt.timezone(dt.timedelta(hours=7))
DISTRICT, POLICE = AgencyCode("000.00.10.H49"), AgencyCode("000.30.10.H49")
OLD_A, OLD_B = AgencyCode("000.01.10.H49"), AgencyCode("000.02.10.H49")
POLICE_A, POLICE_B = AgencyCode("000.41.10.H49"), AgencyCode("000.42.10.H49")
NEW, NEW_POLICE = AgencyCode("000.50.00.H49"), AgencyCode("000.51.00.H49")
OLD_BIRTH, NEW_BIRTH = ProcedureCode("2.000986"), ProcedureCode("3.000722")

AGENCIES = """<rules xmlns="urn:vn-exchange:rules:1" version="1"><agencies>
  <agency code="000.00.00.H49" level="province" kind="province-committee"><name>UBND tỉnh</name></agency>
  <agency code="000.00.10.H49" level="district" kind="district-committee" parent="000.00.00.H49" until="2025-06-30">
    <name>UBND huyện Đầm Hà</name><successor agency="000.50.00.H49"/></agency>
  <agency code="000.30.10.H49" level="district" kind="police" parent="000.00.10.H49" until="2025-02-28">
    <name>Công an huyện Đầm Hà</name>
    <successor agency="000.41.10.H49" for="000.01.10.H49"/><successor agency="000.42.10.H49" for="000.02.10.H49"/>
  </agency>
  <agency code="000.01.10.H49" level="commune" kind="commune-committee" parent="000.00.10.H49" until="2025-06-30">
    <name>UBND xã Dực Yên</name><successor agency="000.50.00.H49"/></agency>
  <agency code="000.02.10.H49" level="commune" kind="commune-committee" parent="000.00.10.H49" until="2025-06-30">
    <name>UBND xã Quảng An</name><successor agency="000.50.00.H49"/></agency>
  <agency code="000.41.10.H49" level="commune" kind="commune-police" parent="000.01.10.H49" from="2025-03-01"
          until="2025-06-30"><name>Công an xã Dực Yên</name><successor agency="000.51.00.H49"/></agency>
  <agency code="000.42.10.H49" level="commune" kind="commune-police" parent="000.02.10.H49" from="2025-03-01"
          until="2025-06-30"><name>Công an xã Quảng An</name><successor agency="000.51.00.H49"/></agency>
  <agency code="000.50.00.H49" level="commune" kind="commune-committee" parent="000.00.00.H49" from="2025-07-01">
    <name>UBND xã Quảng Tân</name></agency>
  <agency code="000.51.00.H49" level="commune" kind="commune-police" parent="000.50.00.H49" from="2025-07-01">
    <name>Công an xã Quảng Tân</name></agency>
</agencies></rules>"""

CALENDAR = """<rules xmlns="urn:vn-exchange:rules:1" version="1">
  <calendar timezone="+07:00" weekend="saturday sunday" flags="{flags}">
    <year value="2024"/><year value="2025"/>
    <year value="2026"><holiday date="2026-11-24" name="Ngày Văn hóa Việt Nam" status="provisional" flag="culture-day"/>
    </year><year value="2027"/>
  </calendar></rules>"""


def _birth(code: str, span: str, by: str, extra: str = "", cutoff: str = "") -> str:
    return f"""<procedure code="{code}" scope="cross-level" budget="3" origins="commune-committee" {span} {cutoff}>
    <name>Đăng ký khai sinh</name>{extra}
    <step id="receive" action="receive" budget="0"><by origin="true"/></step>
    <step id="residence" action="register-residence" budget="2" after="receive"><by {by}/></step>
    <step id="return" action="return-result" budget="1" after="residence"><by origin="true"/></step>
  </procedure>"""


PROCEDURES = ("<rules xmlns=\"urn:vn-exchange:rules:1\" version=\"1\">"
              + _birth("2.000986", 'until="2025-02-28"', 'kind="police" within="district"')
              + _birth("2.000986", 'from="2025-03-01" until="2025-06-30"', 'kind="commune-police" within="commune"',
                       '<replaced-by procedure="3.000722"/>')
              + _birth("3.000722", 'from="2025-07-01"', 'kind="commune-police" within="commune"',
                       "<source>Quyết định công bố TTHC liên thông (illustrative)</source>", 'cutoff="15:00"')
              + "</rules>")


def write(folder: Path, agencies: str = AGENCIES, procedures: str = PROCEDURES, flags: str = "") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "agencies.xml").write_text(agencies, "utf-8")
    (folder / "calendar.xml").write_text(CALENDAR.format(flags=flags), "utf-8")
    (folder / "procedures.xml").write_text(procedures, "utf-8")
    return folder


@pytest.fixture
def rules(tmp_path: Path) -> RuleSet:
    return load(write(tmp_path / "rules"))


def day(text: str, hour: int = 9) -> dt.datetime:
    return dt.datetime.combine(dt.date.fromisoformat(text), dt.time(hour), ICT)


def problems(tmp_path: Path, **files: str) -> str:
    with pytest.raises(RuleError) as caught:
        load(write(tmp_path / "broken", **files))
    return "\n".join(str(p) for p in caught.value.problems)


# Answers for a moment ----------------------------------------------------------------------

def test_a_route_is_the_one_in_force_when_the_dossier_was_received(rules: RuleSet) -> None:
    assert rules.route(OLD_BIRTH, OLD_A, day("2025-01-15"))["residence"] == POLICE
    assert rules.route(OLD_BIRTH, OLD_A, day("2025-04-01"))["residence"] == POLICE_A
    assert rules.route(OLD_BIRTH, OLD_B, day("2025-04-01"))["residence"] == POLICE_B
    assert rules.route(NEW_BIRTH, NEW, day("2026-12-01"))["residence"] == NEW_POLICE


def test_a_procedure_not_in_force_is_refused_naming_its_replacement(rules: RuleSet) -> None:
    with pytest.raises(RoutingError, match=r"not in force on 2025-08-01: it ended on 2025-06-30; it was replaced "
                                           r"by 3\.000722"):
        rules.procedure(OLD_BIRTH, day("2025-08-01"))
    with pytest.raises(RoutingError, match="starts on 2025-07-01"):
        rules.procedure(NEW_BIRTH, day("2025-06-30"))


def test_an_origin_that_no_longer_exists_is_named(rules: RuleSet) -> None:
    with pytest.raises(RoutingError, match="000.01.10.H49 .* is not in force on 2025-08-01: it ended on 2025-06-30"):
        rules.route(NEW_BIRTH, OLD_A, day("2025-08-01"))


def test_successors_follow_the_origin_and_the_chain(rules: RuleSet) -> None:
    assert rules.successor(POLICE, day("2025-04-01"), OLD_B) == POLICE_B
    assert rules.successor(POLICE, day("2025-04-01"), OLD_A) == POLICE_A
    assert rules.successor(POLICE, day("2025-08-01"), OLD_A) == NEW_POLICE
    assert rules.successor(POLICE_A, day("2025-06-30"), OLD_A) == POLICE_A  # still in force


def test_a_dossier_received_before_the_switch_keeps_its_procedure_and_deadline(rules: RuleSet) -> None:
    received = day("2025-06-30")
    assert rules.procedure(OLD_BIRTH, received).end == dt.date(2025, 6, 30)
    assert rules.route(OLD_BIRTH, OLD_A, received)["residence"] == POLICE_A
    assert rules.due_date(OLD_BIRTH, received) == dt.date(2025, 7, 3)
    assert rules.successor(POLICE_A, day("2025-07-02"), OLD_A) == NEW_POLICE  # who does it if not started


def test_the_cut_off_belongs_to_the_procedure(rules: RuleSet) -> None:
    late = day("2026-12-01", hour=16)
    assert rules.due_date(NEW_BIRTH, late) == dt.date(2026, 12, 7)  # counts from Wednesday 2 December
    assert rules.due_date(OLD_BIRTH, day("2025-04-01", hour=16)) == dt.date(2025, 4, 4)  # no cut-off: from Tuesday


def test_a_flagged_holiday_counts_only_once_switched_on(tmp_path: Path) -> None:
    unconfirmed = load(write(tmp_path / "off"))
    confirmed = load(write(tmp_path / "on", flags="culture-day"))
    assert unconfirmed.calendar.is_working_day(dt.date(2026, 11, 24))
    assert not confirmed.calendar.is_working_day(dt.date(2026, 11, 24))


def test_an_undated_rule_set_answers_the_same_whatever_the_moment(tmp_path: Path) -> None:
    seed = load(Path(__file__).resolve().parent / "rules" / "seed-2019")
    assert seed.epochs == (dt.date.min,)
    code = ProcedureCode("2.000986")
    origin = AgencyCode("000.04.10.H49")
    assert seed.route(code, origin, day("2019-01-02")) == seed.route(code, origin, day("2027-06-01"))


# What rules check refuses -----------------------------------------------------------------

def test_a_route_to_an_agency_not_in_force_is_refused_with_its_first_day(tmp_path: Path) -> None:
    stretched = PROCEDURES.replace('until="2025-02-28"', 'until="2025-03-31"', 1).replace(
        'from="2025-03-01" until="2025-06-30"', 'from="2025-04-01" until="2025-06-30"')
    found = problems(tmp_path, procedures=stretched)
    assert "step 'residence': police within the origin's district resolves to nothing in force on 2025-03-01" \
        in found


def test_an_abolished_agency_without_a_successor_is_refused(tmp_path: Path) -> None:
    found = problems(tmp_path, agencies=AGENCIES.replace('<successor agency="000.50.00.H49"/></agency>\n  <agency '
                                                         'code="000.30.10.H49"', '</agency>\n  <agency '
                                                         'code="000.30.10.H49"'))
    assert "agency 000.00.10.H49 (UBND huyện Đầm Hà) ends on 2025-06-30 and names no <successor" in found


def test_a_successor_must_exist_the_next_day(tmp_path: Path) -> None:
    found = problems(tmp_path, agencies=AGENCIES.replace('<successor agency="000.41.10.H49" for="000.01.10.H49"/>',
                                                         '<successor agency="000.51.00.H49" for="000.01.10.H49"/>'))
    assert "agency 000.30.10.H49 ends on 2025-02-28 but its successor 000.51.00.H49 is not in force on 2025-03-01" \
        in found


def test_every_origin_of_an_ended_agency_has_somewhere_to_go(tmp_path: Path) -> None:
    found = problems(tmp_path, agencies=AGENCIES.replace(
        '<successor agency="000.42.10.H49" for="000.02.10.H49"/>', ""))
    assert ("dossiers received at 000.02.10.H49 in flight through 000.30.10.H49 have nowhere to go after "
            "2025-02-28") in found


def test_overlapping_versions_are_refused(tmp_path: Path) -> None:
    found = problems(tmp_path, procedures=PROCEDURES.replace('from="2025-03-01" until="2025-06-30"',
                                                             'from="2025-02-01" until="2025-06-30"'))
    assert "duplicate procedure 2.000986: this version and the one at" in found


def test_an_ended_procedure_names_its_replacement(tmp_path: Path) -> None:
    found = problems(tmp_path, procedures=PROCEDURES.replace('<replaced-by procedure="3.000722"/>', ""))
    assert "procedure 2.000986 ends on 2025-06-30 and names no <replaced-by" in found


# The command line ----------------------------------------------------------------------------

def test_explain_answers_for_the_moment_and_refuses_a_repealed_procedure(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = write(tmp_path / "rules")
    code, out, _ = run(capsys, "rules", "explain", str(folder), "--procedure", "2.000986", "--origin",
                       str(OLD_A), "--received-at", "2025-04-01T09:00+07:00")
    assert code == 0
    assert "000.41.10.H49" in out
    assert "in force 2025-03-01 – 2025-06-30" in out
    code, _, err = run(capsys, "rules", "explain", str(folder), "--procedure", "2.000986", "--origin",
                       str(NEW), "--received-at", "2026-12-01T09:00+07:00")
    assert code == 1
    assert "replaced by 3.000722" in err


def test_diff_on_a_day_tells_the_reorganisation_successor_by_successor(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = write(tmp_path / "rules")
    code, out, _ = run(capsys, "rules", "diff", str(folder), "--on", "2025-03-01")
    assert code == 0
    assert "agency 000.30.10.H49 (Công an huyện Đầm Hà) ends on 2025-02-28" in out
    assert "→ 000.42.10.H49 (Công an xã Quảng An) for dossiers of 000.02.10.H49 (UBND xã Quảng An)" in out
    assert ("procedure 2.000986 step 'residence' received at 000.01.10.H49: 000.30.10.H49 (Công an huyện Đầm Hà) "
            "→ 000.41.10.H49 (Công an xã Dực Yên)") in out
    code, out, _ = run(capsys, "rules", "diff", str(folder), "--on", "2025-07-01")
    assert "procedure 2.000986 (Đăng ký khai sinh) ends on 2025-06-30; replaced by 3.000722" in out
    assert tools.reorganisation(load(folder), dt.date(2025, 7, 2)) == []


def test_a_take_over_is_authorized_and_nothing_else(rules: RuleSet) -> None:
    """Received before the district police ended, performed after: the commune police take residence
    over, hand the return step back to the desk, and no agency off the route may do either."""
    received, now = day("2025-02-27"), day("2025-03-03")
    take_over = rules.authorize_successor(OLD_A, POLICE_A, OLD_BIRTH, "residence", OLD_A, received, now)
    back = rules.authorize_successor(POLICE_A, OLD_A, OLD_BIRTH, "return", OLD_A, received, now)
    assert take_over
    assert back
    assert not rules.authorize_successor(OLD_A, POLICE_B, OLD_BIRTH, "residence", OLD_A, received, now)
    assert not rules.authorize_successor(POLICE_B, OLD_A, OLD_BIRTH, "return", OLD_A, received, now)
    assert not rules.authorize(POLICE_A, OLD_A, OLD_BIRTH, "return", OLD_A, received)  # not on that day's route
