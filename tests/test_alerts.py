"""The Prometheus alert rules (monitoring/alerts.yml) are valid for promtool, pass their unit tests
(monitoring/alerts.test.yml), show every alert both firing and quiet, and each names its severity,
what to do, and its section of docs/operations.md."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import yaml

from tests.conftest import require_tool

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "monitoring" / "alerts.yml"
UNIT_TESTS = ROOT / "monitoring" / "alerts.test.yml"
OPERATIONS = ROOT / "docs" / "operations.md"
SEVERITIES = {"critical", "warning", "info"}


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([require_tool("promtool"), *args], capture_output=True, text=True, timeout=120,
                          check=False, cwd=ROOT)


def rules() -> list[dict[str, Any]]:
    loaded = yaml.safe_load(RULES.read_text("utf-8"))
    return [rule for group in loaded["groups"] for rule in group["rules"]]


def test_promtool_checks_the_rules() -> None:
    """`promtool check rules` accepts the rule file without a warning."""
    checked = promtool("check", "rules", str(RULES))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"SUCCESS: {len(rules())} rules found" in checked.stdout
    assert "WARNING" not in checked.stdout + checked.stderr


def test_promtool_unit_tests_pass() -> None:
    """`promtool test rules` passes every case: each alert fires when it should and stays quiet otherwise."""
    tested = promtool("test", "rules", str(UNIT_TESTS))
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "SUCCESS" in tested.stdout


def test_every_alert_is_shown_firing_and_quiet() -> None:
    """Each alert has a unit-test evaluation where it fires and one where it does not."""
    cases = [check for test in yaml.safe_load(UNIT_TESTS.read_text("utf-8"))["tests"]
             for check in test.get("alert_rule_test", [])]
    for rule in rules():
        mine = [check for check in cases if check["alertname"] == rule["alert"]]
        assert any(check.get("exp_alerts") for check in mine), f"{rule['alert']} is never shown firing"
        assert any(not check.get("exp_alerts") for check in mine), f"{rule['alert']} is never shown quiet"


def test_every_alert_says_how_bad_what_to_do_and_where_the_docs_are() -> None:
    """Each rule waits a ``for:`` duration, has a severity, a summary and a description, and its
    runbook names a heading of docs/operations.md."""
    headings = {_anchor(line) for line in OPERATIONS.read_text("utf-8").splitlines() if line.startswith("#")}
    for rule in rules():
        name = rule["alert"]
        assert re.fullmatch(r"\d+[smhd]", rule.get("for", "")), f"{name} has no for: duration"
        assert rule["labels"]["severity"] in SEVERITIES, name
        annotations = rule["annotations"]
        assert annotations["summary"], name
        assert len(annotations["description"]) > 60, name
        page, _, anchor = annotations["runbook"].partition("#")
        assert page == "docs/operations.md", name
        assert anchor in headings, f"{name}: docs/operations.md has no heading #{anchor}"


def _anchor(heading: str) -> str:
    """The anchor GitHub gives a Markdown heading."""
    text = heading.lstrip("#").strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")
