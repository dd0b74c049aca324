"""`exchange demo` as a newcomer runs it: an area's nodes on today's rules, a mix of dossiers, one
dossier crossing a merger, a report."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from exchange.cli import main


def test_demo_runs_the_district_and_reports(tmp_path: Path) -> None:
    """The demo exits 0, leaves a node.toml per node that the other commands accept, and writes a
    report with the route pictures and every dossier's timeline. Twelve dossiers of the mix, and one
    received at xã Đường Hoa before the rehearsed merger that completes at xã Quảng Hà after it, its
    moves audited as re-routes."""
    out = tmp_path / "demo"
    result = subprocess.run([sys.executable, "-m", "exchange", "demo", "--out", str(out), "--dossiers", "12"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "submitted 12 dossiers of 6 procedures at 5 desks" in result.stdout
    assert "13 dossiers finished" in result.stdout
    assert "11 completed, 1 refused, 1 withdrawn; 1 supplement round(s)" in result.stdout
    assert "1 refusals" in result.stdout
    assert "0 gaps" in result.stdout
    assert not re.search(r"[1-9]\d* gaps", result.stdout)
    assert "this node's agency" not in result.stdout + result.stderr  # no desk of an abolished agency
    assert "the day has come" in result.stdout
    assert "rules reloaded by 15 nodes" in result.stdout
    assert "step residence: 000.01.24.H49 (Công an xã Đường Hoa) → 000.01.23.H49 (Công an xã Quảng Hà), " \
           "handed over" in result.stdout
    crossed = re.search(r"dossier (000\.00\.24\.H49-\S+) crossed the merger of xã Đường Hoa into xã Quảng Hà: "
                        r"completed; (\d+) re-route\(s\) audited, of step\(s\) ([^;]+); residence done by "
                        r"000\.01\.23\.H49, the result returned by 000\.00\.23\.H49", result.stdout)
    assert crossed, result.stdout[-3000:]
    assert int(crossed[2]) >= 2
    assert {"residence", "return"} <= set(crossed[3].split(", "))
    nodes = sorted(p.parent.name for p in (out / "nodes").glob("*/node.toml"))
    assert {"000.00.21.H49", "000.01.21.H49", "000.00.08.H49", "000.01.09.H49", "000.01.24.H49"} <= set(nodes)
    assert not any(code.endswith(".10.H49") for code in nodes)  # no agency of the former district
    assert len(nodes) == 16
    report = (out / "report.html").read_text("utf-8")
    assert report.count("class='timeline'") == 13
    assert "<svg" in report or "digraph" in report
    assert "re-routed" in report
    assert main(["audit", "verify", "--config", str(out / "nodes" / "000.01.23.H49" / "node.toml")]) == 0
    assert main(["status", "--config", str(out / "nodes" / "000.00.21.H49" / "node.toml")]) == 0
    assert main(["status", "--config", str(out / "nodes" / "000.00.24.H49" / "node.toml"),
                 "--dossier", crossed[1]]) == 0


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
    assert dom.count('class="timeline"') == 7  # six of the mix, one crossing the merger
    assert dom.count("<svg") >= 6
    assert "Routes" in dom
    assert "holds" in dom
