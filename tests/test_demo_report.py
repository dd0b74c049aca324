"""The demo's report leads with one row per dossier, every column has a header, route pictures fit
the page, and the demo's progress arrives line by line through a pipe."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from lxml import etree


def test_the_report_leads_with_a_row_per_dossier_and_progress_streams(tmp_path: Path) -> None:
    """Piped, the demo's first progress line arrives long before it exits; its report's first table
    has one row per dossier (six of the mix and the one crossing the merger; state, due, on time or
    late, apology sent) before the timelines, and every table's columns all have a header."""
    out = tmp_path / "demo"
    with subprocess.Popen([sys.executable, "-m", "exchange", "demo", "--out", str(out), "--dossiers", "6"],
                          stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True) as process:
        assert process.stdout is not None
        first = process.stdout.readline()
        first_at = time.monotonic()
        rest = process.stdout.read()
        assert process.wait(timeout=300) == 0, rest[-3000:]
    assert first.startswith("set up a provincial CA")
    assert time.monotonic() - first_at > 1.0  # the first line came while the demo was still running
    report = (out / "report.html").read_text("utf-8")
    assert report.index("<h2>Dossiers</h2>") < report.index("<h2>Routes</h2>") < report.index("<h2>Timelines</h2>")
    assert ".route svg,.route img{max-width:100%" in report
    page = etree.fromstring(report.encode(), etree.HTMLParser())
    tables = page.findall(".//table")
    summary = tables[0]
    headers = [th.text for th in summary.iter("th")]
    assert headers == ["dossier", "procedure", "state", "due", "on time or late", "apology sent"]
    rows = summary.findall("./tbody/tr")
    assert len(rows) == 7
    assert sorted(row[2].text or "" for row in rows) == ["completed"] * 5 + ["refused", "withdrawn"]
    crossing = [row for row in rows if (row[0].text or "").startswith("000.00.24.H49-")]
    assert len(crossing) == 1
    assert crossing[0][2].text == "completed"
    assert "crossed the merger of xã Đường Hoa into xã Quảng Hà: completed" in rest
    assert {row[4].text for row in rows} <= {"on time", "late"}
    late = [row for row in rows if row[4].text == "late"]
    assert late
    assert all(row[5].text == "yes" for row in late)
    for table in tables:
        first_row = table.find(".//tr")
        assert first_row is not None
        assert all(cell.tag == "th" and (cell.text or "").strip() for cell in first_row)
        widest = max(len(tr) for tr in table.iter("tr"))
        assert len(first_row) == widest
