"""Loading rules: every kind of mistake is reported with its file, line and column, all at once,
and a reload keeps the rules in force when the new ones are not whole."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from exchange.errors import Problem, RuleError
from exchange.rules.load import RuleBook, load

RULES_DIR = Path(__file__).resolve().parent / "rules" / "seed-2019"

AGENCIES = """<?xml version="1.0" encoding="UTF-8"?>
<rules xmlns="urn:vn-exchange:rules:1" version="1">
  <agencies>
    <agency code="000.00.00.H49" level="province" kind="province-committee"><name>Tỉnh</name></agency>
    <agency code="000.00.10.H49" level="district" kind="district-committee" parent="000.00.00.H49"><name>Huyện A</name></agency>
    <agency code="000.30.10.H49" level="district" kind="police" parent="000.00.10.H49"><name>Công an A</name></agency>
    <agency code="000.01.10.H49" level="commune" kind="commune-committee" parent="000.00.10.H49"><name>Xã 1</name></agency>
    <agency code="000.00.11.H49" level="district" kind="district-committee" parent="000.00.00.H49"><name>Huyện B</name></agency>
    <agency code="000.01.11.H49" level="commune" kind="commune-committee" parent="000.00.11.H49"><name>Xã 2</name></agency>
    <agency code="000.30.11.H49" level="district" kind="police" parent="000.00.11.H49"><name>Công an B</name></agency>
  </agencies>
</rules>
"""

CALENDAR = """<?xml version="1.0" encoding="UTF-8"?>
<rules xmlns="urn:vn-exchange:rules:1" version="1">
  <calendar timezone="+07:00" cutoff="15:00" weekend="saturday sunday">
    <year value="2026"><holiday date="2026-09-02" name="Quốc khánh"/></year>
  </calendar>
</rules>
"""

PROCEDURE = """<?xml version="1.0" encoding="UTF-8"?>
<rules xmlns="urn:vn-exchange:rules:1" version="1">
  <procedure code="1.004194" scope="cross-level" budget="3" origins="commune-committee">
    <name>Đăng ký tạm trú</name>
    <step id="receive" action="receive" budget="0">
      <by origin="true"/>
    </step>
    <step id="appraise" action="appraise" budget="2" after="receive">
      <by kind="police" within="district"/>
    </step>
    <step id="return" action="return-result" budget="1" after="appraise">
      <by origin="true"/>
    </step>
  </procedure>
</rules>
"""


def rule_dir(tmp_path: Path, **files: str) -> Path:
    """A rule directory holding the three base files, with some replaced or added."""
    contents = {"agencies": AGENCIES, "calendar": CALENDAR, "procedure": PROCEDURE, **files}
    directory = tmp_path / "rules"
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in contents.items():
        if text:
            (directory / f"{name}.xml").write_text(text, "utf-8")
    return directory


def problems(directory: Path) -> list[Problem]:
    with pytest.raises(RuleError) as info:
        load(directory)
    return list(info.value.problems)


def line_of(text: str, needle: str) -> int:
    return next(i for i, line in enumerate(text.splitlines(), 1) if needle in line)


def only(found: list[Problem], file: str, needle: str, text: str, message: str) -> Problem:
    """The one problem in ``file`` at the line holding ``needle``, whose message matches."""
    line = line_of(text, needle)
    matching = [p for p in found if p.file.endswith(file) and p.line == line and message in p.message]
    assert matching, f"no {message!r} at {file}:{line} in {found}"
    return matching[0]


def test_base_rules_load(tmp_path: Path) -> None:
    """The fixture rule set itself is sound."""
    rules = load(rule_dir(tmp_path))
    assert len(rules.routes) == 2


def test_schema_error_names_file_line_and_column(tmp_path: Path) -> None:
    """A misspelt attribute is reported at its line with the column of the element."""
    text = PROCEDURE.replace('budget="2"', 'budgett="2"')
    found = problems(rule_dir(tmp_path, procedure=text))
    problem = only(found, "procedure.xml", 'budgett="2"', text, "budgett")
    assert problem.column > 1


def test_malformed_xml_names_line(tmp_path: Path) -> None:
    """Broken XML is reported at the line and column where the parser stopped."""
    text = PROCEDURE.replace("</step>\n    <step id=\"return\"", "</stp>\n    <step id=\"return\"")
    found = problems(rule_dir(tmp_path, procedure=text))
    only(found, "procedure.xml", "</stp>", text, "mismatch")


def test_every_file_is_checked_not_only_the_first(tmp_path: Path) -> None:
    """Schema errors in two files are both reported in one run."""
    agencies = AGENCIES.replace('level="commune"', 'level="village"', 1)
    procedure = PROCEDURE.replace('scope="cross-level"', 'scope="sideways"')
    found = problems(rule_dir(tmp_path, agencies=agencies, procedure=procedure))
    assert {Path(p.file).name for p in found if "note:" not in p.message} == {"agencies.xml", "procedure.xml"}


def test_unknown_parent(tmp_path: Path) -> None:
    """A parent that is not in the directory is reported at the parent attribute."""
    text = AGENCIES.replace('parent="000.00.11.H49"><name>Xã 2', 'parent="000.00.12.H49"><name>Xã 2')
    found = problems(rule_dir(tmp_path, agencies=text))
    problem = only(found, "agencies.xml", "Xã 2", text, "parent 000.00.12.H49 is not in the directory")
    assert problem.column == line_text(text, "Xã 2").index('parent="') + 1


def line_text(text: str, needle: str) -> str:
    return text.splitlines()[line_of(text, needle) - 1]


def test_duplicate_agency_across_files(tmp_path: Path) -> None:
    """The same agency code in a second file is reported there, naming the first place."""
    extra = AGENCIES.replace("Huyện A", "Huyện A lặp")
    found = problems(rule_dir(tmp_path, zz_extra=extra))
    problem = only(found, "zz_extra.xml", "Huyện A lặp", extra, "duplicate agency code 000.00.10.H49")
    assert "agencies.xml" in problem.message


def test_selector_resolving_to_nothing_for_one_origin(tmp_path: Path) -> None:
    """A district without police leaves the selector unresolved for its communes, and says which."""
    text = "\n".join(line for line in AGENCIES.splitlines() if "Công an B" not in line)
    found = problems(rule_dir(tmp_path, agencies=text))
    problem = only(found, "procedure.xml", 'kind="police"', PROCEDURE, "resolves to nothing")
    assert "000.01.11.H49" in problem.message
    assert "000.01.10.H49" not in problem.message


def test_selector_resolving_to_several(tmp_path: Path) -> None:
    """Two police units in one district make the selector ambiguous."""
    text = AGENCIES.replace("</agencies>", '  <agency code="000.31.10.H49" level="district" kind="police" '
                            'parent="000.00.10.H49"><name>Công an A2</name></agency>\n  </agencies>')
    found = problems(rule_dir(tmp_path, agencies=text))
    only(found, "procedure.xml", 'kind="police"', PROCEDURE, "resolves to 2 agencies")


def test_cycle(tmp_path: Path) -> None:
    """Steps that wait on each other are reported as a cycle."""
    text = PROCEDURE.replace('id="receive" action="receive" budget="0"',
                             'id="receive" action="receive" budget="0" after="appraise"')
    found = problems(rule_dir(tmp_path, procedure=text))
    assert any("cycle" in p.message and p.file.endswith("procedure.xml") for p in found)


def test_unknown_prerequisite(tmp_path: Path) -> None:
    """after= naming a step that does not exist is reported at that attribute."""
    text = PROCEDURE.replace('after="appraise"', 'after="apraise"')
    found = problems(rule_dir(tmp_path, procedure=text))
    only(found, "procedure.xml", 'after="apraise"', text, "names no step")


def test_unreachable_step(tmp_path: Path) -> None:
    """A second step without prerequisites is unreachable from the first."""
    text = PROCEDURE.replace('action="appraise" budget="2" after="receive"', 'action="appraise" budget="2"')
    found = problems(rule_dir(tmp_path, procedure=text))
    only(found, "procedure.xml", 'id="appraise"', text, "unreachable from the first step")


def test_step_that_leads_nowhere(tmp_path: Path) -> None:
    """A step nothing comes after, besides the final one, is reported."""
    text = PROCEDURE.replace("  </procedure>", '    <step id="archive" action="archive" budget="1" '
                             'after="receive">\n      <by origin="true"/>\n    </step>\n  </procedure>')
    found = problems(rule_dir(tmp_path, procedure=text))
    assert any("leads nowhere" in p.message for p in found)


def test_budget_that_cannot_fit(tmp_path: Path) -> None:
    """Steps whose budgets add up past the procedure's total are reported at the total."""
    text = PROCEDURE.replace('budget="2" after="receive"', 'budget="5" after="receive"')
    found = problems(rule_dir(tmp_path, procedure=text))
    problem = only(found, "procedure.xml", 'code="1.004194"', text, "take 6 working days")
    assert problem.column == line_text(text, 'code="1.004194"').index('budget="') + 1


def test_unknown_fixed_agency(tmp_path: Path) -> None:
    """A selector naming an agency code that is not in the directory is reported."""
    text = PROCEDURE.replace('<by kind="police" within="district"/>', '<by agency="000.99.10.H49"/>')
    found = problems(rule_dir(tmp_path, procedure=text))
    only(found, "procedure.xml", "000.99.10.H49", text, "is not in the directory")


def test_selector_needs_exactly_one_form(tmp_path: Path) -> None:
    """<by> with both origin= and kind= is ambiguous and reported."""
    text = PROCEDURE.replace('<by kind="police" within="district"/>', '<by origin="true" kind="police"/>')
    found = problems(rule_dir(tmp_path, procedure=text))
    only(found, "procedure.xml", 'origin="true" kind="police"', text, "exactly one of")


def test_duplicate_procedure_and_step(tmp_path: Path) -> None:
    """A procedure defined twice and a step id used twice are both reported, each at its place."""
    found = problems(rule_dir(tmp_path / "a", zz_again=PROCEDURE))
    assert any("duplicate procedure 1.004194" in p.message and p.file.endswith("zz_again.xml") for p in found)
    twice = PROCEDURE.replace('<step id="return"', '<step id="appraise"')
    found = problems(rule_dir(tmp_path / "b", procedure=twice))
    only(found, "procedure.xml", '<step id="appraise" action="return-result"', twice, "duplicate step 'appraise'")


def test_missing_calendar(tmp_path: Path) -> None:
    """Without a calendar no due date can be computed: refused."""
    found = problems(rule_dir(tmp_path, calendar=""))
    assert any("no <calendar>" in p.message for p in found)


def test_year_gap_in_calendar(tmp_path: Path) -> None:
    """A calendar that skips a year is refused."""
    text = CALENDAR.replace('</year>', '</year>\n    <year value="2028"/>')
    found = problems(rule_dir(tmp_path, calendar=text))
    assert any("skips 2027" in p.message for p in found)


def test_holiday_outside_its_year(tmp_path: Path) -> None:
    """A holiday filed under the wrong year is reported at its line."""
    text = CALENDAR.replace('date="2026-09-02"', 'date="2025-09-02"')
    found = problems(rule_dir(tmp_path, calendar=text))
    only(found, "calendar.xml", "2025-09-02", text, "not in year 2026")


def test_several_semantic_problems_at_once(tmp_path: Path) -> None:
    """Independent mistakes in different files are all reported by one load."""
    agencies = AGENCIES.replace('parent="000.00.11.H49"><name>Xã 2', 'parent="000.00.12.H49"><name>Xã 2')
    procedure = PROCEDURE.replace('budget="2" after="receive"', 'budget="5" after="receive"')
    found = problems(rule_dir(tmp_path, agencies=agencies, procedure=procedure))
    assert any("parent 000.00.12.H49" in p.message for p in found)
    assert any("take 6 working days" in p.message for p in found)


def test_digest_ignores_layout_but_not_meaning(tmp_path: Path) -> None:
    """Comments, spacing and file names do not change the digest; a budget does."""
    base = load(rule_dir(tmp_path)).digest
    relaid = tmp_path / "relaid"
    relaid.mkdir()
    (relaid / "all-agencies.xml").write_text(AGENCIES.replace("<agencies>", "<!-- note -->\n<agencies>"))
    (relaid / "cal.xml").write_text(CALENDAR)
    (relaid / "p.xml").write_text(PROCEDURE.replace("    <step", "        <step"))
    assert load(relaid).digest == base
    (relaid / "p.xml").write_text(PROCEDURE.replace('budget="1" after="appraise"', 'budget="0" after="appraise"'))
    assert load(relaid).digest != base


def test_reload_keeps_old_rules_on_a_bad_edit(tmp_path: Path) -> None:
    """A bad edit leaves the rules in force untouched; a good edit replaces them whole."""
    directory = rule_dir(tmp_path)
    book = RuleBook(directory)
    before = book.current
    (directory / "procedure.xml").write_text(PROCEDURE.replace('after="appraise"', 'after="nothing"'))
    with pytest.raises(RuleError):
        book.reload()
    assert book.current is before
    (directory / "procedure.xml").write_text(PROCEDURE.replace('budget="2" after', 'budget="1" after'))
    fresh = book.reload()
    assert book.current is fresh
    assert fresh.digest != before.digest


def test_real_rules_with_a_typo_fail_at_its_line(tmp_path: Path) -> None:
    """A typo in the shipped rule files is reported at its file and line."""
    copy = tmp_path / "routing_rules"
    shutil.copytree(RULES_DIR, copy)
    path = copy / "civil-status.xml"
    text = path.read_text("utf-8").replace('<by kind="social-insurance" within="district"/>',
                                           '<by kind="social-insurance" within="distrct"/>', 1)
    path.write_text(text, "utf-8")
    found = problems(copy)
    only(found, "civil-status.xml", 'within="distrct"', text, "distrct")
