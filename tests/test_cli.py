"""The command line as a contract: names, flags, files written and exit codes 0, 1 and 2."""

from __future__ import annotations

import stat
import subprocess
import sys
from pathlib import Path

import pytest

from exchange.cli import main


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def world(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    """A CA, a commune identity and a sample dossier made with the CLI itself."""
    assert run(capsys, "pki", "init-ca", "--out", str(tmp_path / "ca"))[0] == 0
    assert run(capsys, "pki", "issue", "--ca", str(tmp_path / "ca"), "--agency", "000.01.10.H49",
               "--out", str(tmp_path / "commune"))[0] == 0
    assert run(capsys, "dossier", "sample", "--agency", "000.01.10.H49", "--procedure", "2.000986",
               "--size-kb", "20", "--out", str(tmp_path / "dossier.xml"))[0] == 0
    return tmp_path


def seal(capsys: pytest.CaptureFixture[str], world: Path, *extra: str) -> tuple[int, str, str]:
    return run(capsys, "envelope", "seal", "--cert", str(world / "commune/cert.pem"),
               "--key", str(world / "commune/key.pem"), "--to", "000.30.10.H49",
               "--procedure", "2.000986", "--step", "police", str(world / "dossier.xml"),
               "--out", str(world / "envelope.xml"), *extra)


def test_pki_files_and_modes(world: Path) -> None:
    """init-ca and issue write the files the contract names, keys with mode 0600."""
    for name in ("ca/ca.pem", "ca/ca-key.pem", "commune/cert.pem", "commune/key.pem"):
        assert (world / name).is_file()
    assert stat.S_IMODE((world / "ca/ca-key.pem").stat().st_mode) == 0o600
    assert stat.S_IMODE((world / "commune/key.pem").stat().st_mode) == 0o600


def test_sample_dossier_has_about_the_size_asked(world: Path) -> None:
    """A 20 KiB sample is within 15% of 20 KiB."""
    size = (world / "dossier.xml").stat().st_size
    assert 0.85 * 20 * 1024 < size < 1.15 * 20 * 1024


def test_seal_then_verify(world: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A sealed dossier verifies with exit 0 and a summary naming sender, recipient and step."""
    assert seal(capsys, world)[0] == 0
    code, out, _ = run(capsys, "envelope", "verify", "--trust", str(world / "ca/ca.pem"),
                       str(world / "envelope.xml"))
    assert code == 0
    assert "from      000.01.10.H49" in out
    assert "step police" in out


def test_verify_refusal_exit_1_with_reason_code(world: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A tampered envelope exits 1 with its reason code and text on stderr."""
    seal(capsys, world)
    path = world / "envelope.xml"
    path.write_bytes(path.read_bytes().replace(b"<Step>police</Step>", b"<Step>tax</Step>"))
    code, out, err = run(capsys, "envelope", "verify", "--trust", str(world / "ca"), str(path))
    assert code == 1
    assert out == ""
    assert err.startswith("refused: bad-signature: ")


def test_revoke_and_crl(world: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """After revoke and a new CRL, verify with --crl exits 1 with reason revoked."""
    seal(capsys, world)
    assert run(capsys, "pki", "revoke", "--ca", str(world / "ca"), str(world / "commune/cert.pem"))[0] == 0
    assert run(capsys, "pki", "crl", "--ca", str(world / "ca"), "--out", str(world / "crl.pem"))[0] == 0
    code, _, err = run(capsys, "envelope", "verify", "--trust", str(world / "ca/ca.pem"),
                       "--crl", str(world / "crl.pem"), str(world / "envelope.xml"))
    assert code == 1
    assert "revoked" in err


def test_seal_refuses_procedure_other_than_the_dossiers(world: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    """Sealing a birth dossier as a land procedure exits 1 and writes nothing."""
    code, _, err = run(capsys, "envelope", "seal", "--cert", str(world / "commune/cert.pem"),
                       "--key", str(world / "commune/key.pem"), "--to", "000.30.10.H49",
                       "--procedure", "1.012784", "--step", "police", str(world / "dossier.xml"),
                       "--out", str(world / "envelope.xml"))
    assert code == 1
    assert "not 1.012784" in err
    assert not (world / "envelope.xml").exists()


def test_invalid_dossier_names_file_and_line(world: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A dossier with a bad field is refused with the file, the line and what was expected."""
    path = world / "dossier.xml"
    path.write_text(path.read_text("utf-8").replace("<IdNumber>", "<IdNumber>x"), "utf-8")
    code, _, err = run(capsys, "dossier", "check", str(path))
    assert code == 1
    assert f"{path}:" in err
    assert "IdNumber" in err


def test_tampered_attachment_is_named(world: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """An attachment whose content no longer matches its Sha256 is reported by file name."""
    path = world / "dossier.xml"
    text = path.read_text("utf-8")
    start = text.index("<Content>") + len("<Content>")
    path.write_text(text[:start] + ("B" if text[start] != "B" else "C") + text[start + 1:], "utf-8")
    code, _, err = run(capsys, "dossier", "check", str(path))
    assert code == 1
    assert ".pdf'" in err
    assert "hashes to" in err


@pytest.mark.parametrize("argv", [
    ["pki", "issue", "--ca", "x", "--agency", "not-a-code", "--out", "y"],
    ["dossier", "sample", "--agency", "000.01.10.H49", "--procedure", "2.986", "--out", "f"],
    ["envelope", "verify"],
    ["nonsense"],
    [],
])
def test_usage_errors_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    """Malformed command lines exit 2 with a usage message."""
    code, _, err = run(capsys, *argv)
    assert code == 2
    assert "usage:" in err


def test_missing_ca_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Issuing from a directory with no CA exits 1 and names the missing file."""
    code, _, err = run(capsys, "pki", "issue", "--ca", str(tmp_path), "--agency", "000.01.10.H49",
                       "--out", str(tmp_path / "a"))
    assert code == 1
    assert "ca.pem: no such certificate file" in err


def test_python_dash_m_and_console_script(world: Path) -> None:
    """`python -m exchange` and the `exchange` script run the same command line."""
    for argv in ([sys.executable, "-m", "exchange"], [str(Path(sys.executable).parent / "exchange")]):
        result = subprocess.run([*argv, "dossier", "check", str(world / "dossier.xml")],
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith("valid: 000.01.10.H49-")
