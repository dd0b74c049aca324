"""`exchange rules check|explain|graph|diff` as a contract: output, files and exit codes."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from exchange.cli import main
from tests.conftest import require_tool

RULES_DIR = Path(__file__).resolve().parent / "rules" / "seed-2019"


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_check_real_rules(capsys: pytest.CaptureFixture[str]) -> None:
    """The shipped rules check clean with a summary and their digest."""
    code, out, _ = run(capsys, "rules", "check", str(RULES_DIR))
    assert code == 0
    assert "12 procedures" in out
    assert "digest sha256:" in out


def test_check_reports_every_problem_and_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Two typos in two files give two file:line:col lines and exit 1."""
    copy = tmp_path / "rules"
    shutil.copytree(RULES_DIR, copy)
    for name, old, new in (("land.xml", 'scope="same-level"', 'scope="same-levle"'),
                           ("agencies.xml", 'level="commune"', 'level="comune"')):
        path = copy / name
        path.write_text(path.read_text("utf-8").replace(old, new, 1), "utf-8")
    code, out, err = run(capsys, "rules", "check", str(copy))
    assert code == 1
    assert out == ""
    assert "land.xml:" in err
    assert "agencies.xml:" in err
    assert "same-levle" in err


def test_explain_prints_the_route_with_due_dates(capsys: pytest.CaptureFixture[str]) -> None:
    """explain prints each step with its agency, name, budget and due date."""
    code, out, _ = run(capsys, "rules", "explain", str(RULES_DIR), "--procedure", "2.000986",
                       "--origin", "000.04.10.H49", "--received-at", "2026-03-02T09:00+07:00")
    assert code == 0
    assert "Công an huyện Đầm Hà" in out
    assert "2026-03-04 Wed" in out
    assert "the whole procedure is due 2026-03-05 Thu" in out


def test_explain_unknown_origin_exits_1(capsys: pytest.CaptureFixture[str]) -> None:
    """An origin that does not receive the procedure exits 1 with the kinds that do."""
    code, _, err = run(capsys, "rules", "explain", str(RULES_DIR), "--procedure", "2.000986",
                       "--origin", "000.30.10.H49", "--received-at", "2026-03-02T09:00+07:00")
    assert code == 1
    assert "commune-committee" in err


def test_explain_naive_time_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    """A receipt time without an offset is a usage error (exit 2)."""
    code, _, err = run(capsys, "rules", "explain", str(RULES_DIR), "--procedure", "2.000986",
                       "--origin", "000.04.10.H49", "--received-at", "2026-03-02T09:00")
    assert code == 2
    assert "no zone offset" in err


def test_graph_dot_names_steps_and_edges(capsys: pytest.CaptureFixture[str]) -> None:
    """The DOT picture has every step and the join's two incoming edges."""
    code, out, _ = run(capsys, "rules", "graph", str(RULES_DIR), "--procedure", "2.000986")
    assert code == 0
    assert out.startswith('digraph "2.000986"')
    assert '"residence" -> "return"' in out
    assert '"insurance" -> "return"' in out


def test_graph_svg_through_graphviz(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """With Graphviz installed, --format svg writes an SVG that shows the resolved agencies."""
    require_tool("dot")
    out = tmp_path / "route.svg"
    code, _, _ = run(capsys, "rules", "graph", str(RULES_DIR), "--procedure", "1.012784",
                     "--origin", "000.20.10.H49", "--format", "svg", "--out", str(out))
    assert code == 0
    svg = out.read_text("utf-8")
    assert "<svg" in svg
    assert "Chi cục Thuế huyện Đầm Hà" in svg


def test_diff_in_words(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """An edited budget, a new holiday and a moved agency are each described in a sentence."""
    copy = tmp_path / "rules"
    shutil.copytree(RULES_DIR, copy)
    civil = copy / "civil-status.xml"
    civil.write_text(civil.read_text("utf-8").replace(
        '<step id="residence" action="register-residence" budget="2"',
        '<step id="residence" action="register-residence" budget="1"', 1), "utf-8")
    calendar = copy / "calendar.xml"
    calendar.write_text(calendar.read_text("utf-8").replace(
        '<holiday date="2026-01-01" name="Tết Dương lịch"/>',
        '<holiday date="2026-01-01" name="Tết Dương lịch"/>\n      <holiday date="2026-01-02" name="Nghỉ bù"/>'),
        "utf-8")
    code, out, _ = run(capsys, "rules", "diff", str(RULES_DIR), str(copy))
    assert code == 0
    assert "procedure 2.000986 step 'residence': budget 2 → 1" in out
    assert "calendar: 2026-01-02 Fri is now a day off (Nghỉ bù)" in out


def test_diff_of_identical_rules(capsys: pytest.CaptureFixture[str]) -> None:
    """Comparing the rules with themselves says there is no change."""
    code, out, _ = run(capsys, "rules", "diff", str(RULES_DIR), str(RULES_DIR))
    assert code == 0
    assert out.startswith("no change")


def test_check_through_the_installed_script() -> None:
    """`exchange rules check routing_rules/` exits 0 as a separate process."""
    exe = Path(sys.executable).parent / "exchange"
    result = subprocess.run([str(exe), "rules", "check", str(RULES_DIR)], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
