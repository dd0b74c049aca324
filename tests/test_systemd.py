"""The systemd unit passes `systemd-analyze verify` and keeps its sandbox and notify settings."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.conftest import require_tool

REPO = Path(__file__).resolve().parent.parent
UNIT = REPO / "systemd" / "exchange@.service"
INSTALLED = "/usr/local/bin/exchange"
"""Where packaging/install.sh puts the command (tests/test_install.py runs the unit from there)."""


def verify(text: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    # systemd-analyze checks that ExecStart exists: point it at this environment's exchange.
    exe = str(Path(sys.executable).parent / "exchange")
    unit = tmp_path / "exchange@000.04.10.H49.service"
    unit.write_text(text.replace(INSTALLED, exe), "utf-8")
    return subprocess.run([require_tool("systemd-analyze"), "verify", "--man=no", str(unit)],
                          capture_output=True, text=True, timeout=60)


def test_unit_verifies(tmp_path: Path) -> None:
    """systemd-analyze verify finds nothing to say about the instantiated unit."""
    result = verify(UNIT.read_text("utf-8"), tmp_path)
    assert result.returncode == 0
    assert result.stderr.strip() == ""


def test_verify_would_catch_a_typo(tmp_path: Path) -> None:
    """The same check complains about a misspelt directive, so the test above can fail."""
    result = verify(UNIT.read_text("utf-8").replace("ProtectSystem=strict", "ProtectSystm=strict"), tmp_path)
    assert "ProtectSystm" in result.stderr


def test_unit_is_sandboxed_and_notifies() -> None:
    """Type=notify with a watchdog, a dedicated user, a state directory and a strict sandbox."""
    text = UNIT.read_text("utf-8")
    for line in ("Type=notify", "WatchdogSec=", "User=exchange", "StateDirectory=exchange/%i",
                 "ProtectSystem=strict", "NoNewPrivileges=yes", "ExecReload=/bin/kill -HUP $MAINPID"):
        assert line in text


def test_unit_starts_the_command_where_install_links_it() -> None:
    """ExecStartPre and ExecStart name the command packaging/install.sh links, and nothing else does."""
    text = UNIT.read_text("utf-8")
    assert f"ExecStartPre={INSTALLED} rules check /etc/exchange/rules" in text
    assert f"ExecStart={INSTALLED} run --config /etc/exchange/%i/node.toml" in text
    assert f"ln -sfn /opt/exchange/bin/exchange \"$root{INSTALLED}\"" in (REPO / "packaging" / "install.sh").read_text()
    assert "/usr/bin/exchange" not in text
