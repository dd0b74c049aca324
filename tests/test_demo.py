"""`exchange demo` as a newcomer runs it: a district's nodes, a mix of dossiers, a report."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from exchange.cli import main


def test_demo_runs_the_district_and_reports(tmp_path: Path) -> None:
    """The demo exits 0, leaves a node.toml per node that the other commands accept, and writes a
    report with the route pictures and every dossier's timeline."""
    out = tmp_path / "demo"
    result = subprocess.run([sys.executable, "-m", "exchange", "demo", "--out", str(out), "--dossiers", "12"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "12 dossiers finished" in result.stdout
    assert "10 completed, 1 refused, 1 withdrawn; 1 supplement round(s)" in result.stdout
    assert "1 refusals" in result.stdout
    assert "0 gaps" in result.stdout
    assert not re.search(r"[1-9]\d* gaps", result.stdout)
    nodes = sorted(p.parent.name for p in (out / "nodes").glob("*/node.toml"))
    assert "000.30.10.H49" in nodes
    assert len(nodes) == 12
    report = (out / "report.html").read_text("utf-8")
    assert report.count("class='timeline'") == 12
    assert "<svg" in report or "digraph" in report
    assert main(["audit", "verify", "--config", str(out / "nodes" / "000.30.10.H49" / "node.toml")]) == 0
    assert main(["status", "--config", str(out / "nodes" / "000.01.10.H49" / "node.toml")]) == 0


def test_report_renders_in_a_browser(tmp_path: Path) -> None:
    """Headless Chromium opens the demo's report and finds the route pictures and every timeline."""
    from tests.conftest import require_tool

    browser = require_tool("chromium")
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--dossiers", "6"]) == 0
    result = subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom", (out / "report.html").as_uri()],
        capture_output=True, text=True, timeout=120)
    dom = result.stdout
    assert dom.count('class="timeline"') == 6
    assert dom.count("<svg") >= 6
    assert "Routes" in dom
    assert "holds" in dom
