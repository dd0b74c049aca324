"""Secrets and files: the broker's password never lands in node.toml nor needs the command line,
the node's database, delivered files and the CA folder are private whatever the umask, and the
demo never empties a folder it did not make."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from exchange.audit.entries import Event
from exchange.cli import main
from exchange.demo import district
from exchange.errors import ConfigError
from exchange.node.config import BROKER_PASSWORD_ENV, NodeConfig, split_password, with_password
from exchange.node.context import NodeContext
from exchange.node.delivery import Deliverer
from exchange.node.metrics import Metrics
from exchange.store.node import InboxRecord
from exchange.store.states import Outcome
from tests.agencies import POLICE
from tests.node_cluster import RULES

BROKER = "amqps://exchange:s3cr%40t@rabbit.example:5671/province"


@pytest.fixture
def no_umask() -> Iterator[None]:
    """Every file the test makes is created under umask 0 (world-writable unless the code says otherwise)."""
    previous = os.umask(0)
    try:
        yield
    finally:
        os.umask(previous)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def init(tmp_path: Path, capsys: pytest.CaptureFixture[str], *extra: str) -> tuple[Path, str]:
    if not (tmp_path / "ca").exists():
        assert main(["pki", "init-ca", "--out", str(tmp_path / "ca")]) == 0
    out = tmp_path / "node"
    code = main(["node", "init", "--agency", str(POLICE), "--ca", str(tmp_path / "ca"), "--rules", str(RULES),
                 "--out", str(out), *extra])
    assert code == 0
    return out, capsys.readouterr().err


def test_a_password_in_the_url_goes_to_a_private_file(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                      monkeypatch: pytest.MonkeyPatch, no_umask: None) -> None:
    """node init with a password in --broker warns, writes node.toml without it and the password to
    a 0600 file, and the loaded configuration has the whole URL again."""
    monkeypatch.delenv(BROKER_PASSWORD_ENV, raising=False)
    out, err = init(tmp_path, capsys, "--broker", BROKER)
    assert "visible to other users" in err
    toml = (out / "node.toml").read_text("utf-8")
    assert "s3cr" not in toml
    assert 'broker = "amqps://exchange@rabbit.example:5671/province"' in toml
    assert mode(out / "broker.secret") == 0o600
    assert (out / "broker.secret").read_text("utf-8") == "s3cr@t\n"
    assert NodeConfig.load(out / "node.toml").broker == BROKER


def test_a_password_file_keeps_the_password_off_the_command_line(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """--broker-password-file gives the password without a warning; it is assembled into the URL at load."""
    monkeypatch.delenv(BROKER_PASSWORD_ENV, raising=False)
    secret = tmp_path / "given.secret"
    secret.write_text("pa:ss/word\n", "utf-8")
    out, err = init(tmp_path, capsys, "--broker", "amqps://exchange@rabbit.example/province",
                    "--broker-password-file", str(secret))
    assert "warning" not in err
    assert NodeConfig.load(out / "node.toml").broker == "amqps://exchange:pa%3Ass%2Fword@rabbit.example/province"


def test_the_password_may_come_from_the_environment(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """EXCHANGE_BROKER_PASSWORD puts the password into the broker URL of a node.toml that has none."""
    out, _ = init(tmp_path, capsys, "--broker", "amqps://exchange@rabbit.example/province")
    config = NodeConfig.load(out / "node.toml", environ={BROKER_PASSWORD_ENV: "from-env"})
    assert config.broker == "amqps://exchange:from-env@rabbit.example/province"


def test_a_password_file_readable_by_others_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """A broker credentials file that others may read stops the node from loading its configuration."""
    monkeypatch.delenv(BROKER_PASSWORD_ENV, raising=False)
    out, _ = init(tmp_path, capsys, "--broker", BROKER)
    (out / "broker.secret").chmod(0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        NodeConfig.load(out / "node.toml")


def test_url_passwords_are_split_and_put_back() -> None:
    """A URL's password is taken out and put back exactly; a URL without a user is left alone."""
    assert split_password(BROKER) == ("amqps://exchange@rabbit.example:5671/province", "s3cr@t")
    assert split_password("amqp://host/vhost") == ("amqp://host/vhost", None)
    assert with_password(split_password(BROKER)[0], "s3cr@t") == BROKER
    assert with_password(BROKER, "other") == BROKER


def test_the_database_and_the_ca_folder_are_private_under_umask_0(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                                  no_umask: None) -> None:
    """Under umask 0, node.db and its -wal/-shm are 0600 and the CA folder 0700."""
    out, _ = init(tmp_path, capsys)
    assert mode(tmp_path / "ca") == 0o700
    with NodeContext.open(NodeConfig.load(out / "node.toml")) as ctx:
        with ctx.store.transaction():
            ctx.record(ctx.entry(Event.NODE_STARTED))
        for name in ("node.db", "node.db-wal", "node.db-shm"):
            assert mode(out / "state" / name) == 0o600, name


def test_an_existing_database_is_made_private(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A node.db left readable by others is made 0600 when the node opens it."""
    out, _ = init(tmp_path, capsys)
    (out / "state" / "node.db").chmod(0o644)
    NodeContext.open(NodeConfig.load(out / "node.toml")).close()
    assert mode(out / "state" / "node.db") == 0o600


def test_delivered_files_are_private_under_umask_0(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                   no_umask: None) -> None:
    """Under umask 0, a dossier delivered to the agency system is 0600 in a 0700 folder."""
    out, _ = init(tmp_path, capsys)
    with NodeContext.open(NodeConfig.load(out / "node.toml")) as ctx:
        with ctx.store.transaction():
            ctx.store.record_inbox(InboxRecord("00000000-0000-4000-8000-000000000001", "000.01.10.H49", "transfer",
                                               "000.01.10.H49-260101-0001", "police", "ab" * 32, Outcome.ACCEPTED,
                                               b"<Dossier/>"), 0.0)
        assert Deliverer(ctx, Metrics()).deliver() == 1
        folder = ctx.config.delivery_dir
    (delivered,) = folder.glob("*.xml")
    assert mode(delivered) == 0o600
    assert mode(folder) == 0o700


def test_the_demo_refuses_a_folder_it_did_not_make(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """exchange demo --out DIR on a non-empty folder without its marker exits 1 and leaves it as it was."""
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "thesis.tex").write_text("years of work", "utf-8")
    assert main(["demo", "--out", str(folder), "--dossiers", "6"]) == 1
    assert "not made by `exchange demo`" in capsys.readouterr().err
    assert (folder / "thesis.tex").read_text("utf-8") == "years of work"


def test_the_demo_replaces_a_folder_it_made(tmp_path: Path) -> None:
    """A folder with the demo's marker (or an empty one) is cleared and set up again."""
    folder = tmp_path / "demo"
    folder.mkdir()
    demo = district.Demo(folder, "", 6, say=lambda _: None)
    demo._clear()
    (folder / district.MARKER).write_text("", "utf-8")
    (folder / "old-report.html").write_text("", "utf-8")
    demo._clear()
    assert not folder.exists()
