"""Poison never stops a node at its doors: whatever lies in the drop folder (a FIFO, a directory,
a link, a name that is not UTF-8, a file too large, a date Python cannot hold, garbage, a file
that vanishes, a file whose handling fails) ends in rejected/ with its reason while the daemon
keeps pinging its watchdog and takes the next good file; a door that fails does not stop the
loop; a dossier code submitted again with different content is refused by the drop folder and
by edXML import (the HTTP API's hostile cases are in test_http_api.py)."""

from __future__ import annotations

import itertools
import os
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from lxml import etree
from structlog.testing import capture_logs

from exchange.adapters import dropfolder
from exchange.adapters.dropfolder import MAX_FILE_BYTES, DropFolder
from exchange.adapters.edxml import Organ, export_transfer
from exchange.adapters.embedded import EmbeddedTransport
from exchange.codes import AgencyCode, ProcedureCode
from exchange.demo import samples
from exchange.errors import InvalidDossier
from exchange.node import workflow
from exchange.node.config import NodeConfig
from exchange.node.context import NodeContext
from exchange.node.daemon import Daemon
from exchange.node.doors import Door
from tests.node_cluster import COMMUNE, Cluster, NotifySocket, cli, wait_until

MAX_WATCHDOG_GAP_S = 2.0
GOOD = itertools.count(1000)
"""Sequence numbers of the good dossiers dropped after each hostile file."""


def dossier(sequence: int) -> bytes:
    spec = samples.SampleSpec(AgencyCode(COMMUNE), ProcedureCode("2.000986"), size_kb=2, sequence=sequence)
    return samples.to_bytes(samples.sample_dossier(spec))


def code_of(sequence: int) -> str:
    found = re.search(rb"<Code>([^<]+)</Code>", dossier(sequence))
    assert found
    return found[1].decode()


def with_due_date(data: bytes, date: str) -> bytes:
    return re.sub(rb"<DueDate>[^<]*</DueDate>", f"<DueDate>{date}</DueDate>".encode(), data)


def drop(inbox: Path, name: str, data: bytes) -> None:
    """What an agency system does: write aside, then rename into place."""
    part = inbox / f"{name}.part"
    part.write_bytes(data)
    part.rename(inbox / name)


def codes_at(ctx: NodeContext) -> set[str]:
    with ctx.for_thread() as own:
        return {code for (code,) in own.store.conn.execute("SELECT code FROM dossiers")}


# the drop folder, in a running daemon


@dataclass
class RunningNode:
    """A node's daemon on its own thread, with the drop-folder door, on the embedded transport."""

    ctx: NodeContext
    folder: DropFolder
    daemon: Daemon
    notify: NotifySocket
    transport: EmbeddedTransport
    exits: list[int] = field(default_factory=list)
    thread: threading.Thread | None = None

    @property
    def root(self) -> Path:
        return self.folder.root

    def start(self) -> None:
        self.thread = threading.Thread(target=lambda: self.exits.append(self.daemon.run()), daemon=True)
        self.thread.start()
        wait_until(lambda: bool(self.notify.pings("READY=1")), 20, "READY=1")

    def stop(self) -> int:
        self.daemon.stopping.set()
        assert self.thread is not None
        self.thread.join(30)
        assert not self.thread.is_alive(), "the loop did not stop: something blocks it"
        self.transport.close()
        self.ctx.close()
        self.notify.close()
        return self.exits[0]

    def takes_a_good_file(self, since: float) -> None:
        """A good dossier dropped now is submitted, and the watchdog was pinged all along."""
        sequence = next(GOOD)
        drop(self.root / "inbox", f"good-{sequence}.xml", dossier(sequence))
        wait_until(lambda: (self.root / "accepted" / f"good-{sequence}.xml").is_file(), 20, "the good file accepted")
        assert code_of(sequence) in codes_at(self.ctx)
        assert self.thread is not None
        assert self.thread.is_alive()
        assert not self.exits
        assert self.notify.max_gap(since, time.monotonic()) < MAX_WATCHDOG_GAP_S

    def rejected(self, name: str) -> str:
        """The reason the node gave for rejecting ``name`` (waiting for it), once the entry is in rejected/."""
        stem = name.removesuffix(".xml")
        error = self.root / "rejected" / f"{stem}.error.txt"
        wait_until(lambda: error.is_file() and os.path.lexists(self.root / "rejected" / name), 20, f"{name} rejected")
        assert not os.path.lexists(self.root / "inbox" / name)
        assert not os.path.lexists(self.root / "processing" / name)
        return error.read_text("utf-8")


def running_node(root: Path, monkeypatch: pytest.MonkeyPatch, doors: Callable[[DropFolder], list[Door]] = lambda folder: [],
                 before: Callable[[DropFolder], None] = lambda folder: None) -> RunningNode:
    cluster = Cluster(root)
    cluster.init(COMMUNE)
    notify = NotifySocket()
    monkeypatch.setenv("NOTIFY_SOCKET", notify.address)
    ctx = NodeContext.open(NodeConfig.load(cluster.config(COMMUNE)))
    transport = EmbeddedTransport(ctx.config.embedded_transport)
    folder = DropFolder(ctx.config.dropfolder_dir)
    before(folder)
    node = RunningNode(ctx, folder, Daemon(ctx, transport, doors=[*doors(folder), folder]), notify, transport)
    node.start()
    return node


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningNode]:
    """One daemon for every drop-folder case of this module: each case must leave it running."""
    with pytest.MonkeyPatch.context() as monkeypatch:
        running = running_node(tmp_path_factory.mktemp("dropfolder"), monkeypatch)
        yield running
        assert running.stop() == 0


def fifo(path: Path) -> None:
    os.mkfifo(path)


def directory(path: Path) -> None:
    path.mkdir()
    (path / "inside.xml").write_bytes(dossier(1))


def link_to_pipe(path: Path) -> None:
    target = path.parent.parent / f"{path.stem}.pipe"
    os.mkfifo(target)
    path.symlink_to(target)


def dangling_link(path: Path) -> None:
    path.symlink_to(path.parent / "nowhere.xml")


def unix_socket(path: Path) -> None:
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.close()


def oversized(path: Path) -> None:
    with path.open("wb") as handle:
        handle.truncate(MAX_FILE_BYTES + 1)  # sparse: costs nothing to make, and must cost nothing to refuse


def writing(data: bytes) -> Callable[[Path], None]:
    def write(path: Path) -> None:
        path.write_bytes(data)
    return write


HOSTILE = [
    ("pipe.xml", fifo, "is a named pipe (FIFO), not a regular file; it was not opened"),
    ("folder.xml", directory, "is a directory, not a regular file"),
    ("to-pipe.xml", link_to_pipe, "is a symbolic link, not a regular file; it was not opened"),
    ("dangling.xml", dangling_link, "is a symbolic link"),
    ("socket.xml", unix_socket, "is a socket, not a regular file"),
    ("huge.xml", oversized, f"{MAX_FILE_BYTES + 1} bytes exceeds the cap of {MAX_FILE_BYTES}; it was not read"),
    ("year-10000.xml", writing(with_due_date(dossier(2), "10000-12-04")), "10000"),
    ("negative-year.xml", writing(with_due_date(dossier(3), "-0001-12-04")), "0001"),
    ("garbage.xml", writing(b"\x00\xff\xfe\x89PNG\r\n\x1a\n" + bytes(range(256))), "garbage.xml: line 1"),
    ("empty.xml", writing(b""), "Document is empty"),
    ("html.xml", writing(b"<html><body>not a dossier</body></html>"), "expected {urn:vn-exchange:dossier:1}Dossier"),
]


@pytest.mark.parametrize(("name", "make", "reason"), HOSTILE, ids=[case[0] for case in HOSTILE])
def test_a_hostile_entry_is_rejected_and_the_node_goes_on(node: RunningNode, name: str,
                                                          make: Callable[[Path], None], reason: str) -> None:
    """The entry ends in rejected/ beside an error file giving the reason, nothing is opened that
    is not a regular file, and the daemon keeps its watchdog and takes the next good file."""
    since = time.monotonic()
    make(node.root / "inbox" / name)
    error = node.rejected(name)
    assert error.startswith(f"{name} was not submitted:\n")
    assert reason in error
    node.takes_a_good_file(since)


def test_a_link_is_never_followed(node: RunningNode) -> None:
    """A symbolic link to a genuine dossier outside the folder is rejected as a link; the dossier
    it points to is not submitted and the target is left as it was."""
    since = time.monotonic()
    target = node.root.parent / "elsewhere.xml"
    genuine = dossier(4)
    target.write_bytes(genuine)
    (node.root / "inbox" / "link.xml").symlink_to(target)
    assert "is a symbolic link" in node.rejected("link.xml")
    assert code_of(4) not in codes_at(node.ctx)
    assert target.read_bytes() == genuine
    node.takes_a_good_file(since)


def test_a_name_that_is_not_utf8_is_rejected_readably(node: RunningNode) -> None:
    """A file named with Latin-1 bytes is rejected unopened under its own name, and the reason
    shows the name readably (the odd byte as \\xe9)."""
    since = time.monotonic()
    inbox = os.fsencode(node.root / "inbox")
    with open(inbox + b"/caf\xe9.xml", "wb") as handle:
        handle.write(dossier(5))
    error_file = os.fsencode(node.root / "rejected") + b"/caf\xe9.error.txt"
    rejected = os.fsencode(node.root / "rejected") + b"/caf\xe9.xml"
    wait_until(lambda: os.path.isfile(error_file) and os.path.isfile(rejected), 20, "the file rejected")
    with open(error_file, "rb") as handle:
        error = handle.read().decode("utf-8")
    assert "the file name 'caf\\xe9.xml' is not valid UTF-8" in error
    assert code_of(5) not in codes_at(node.ctx)
    node.takes_a_good_file(since)


def test_a_file_that_vanishes_is_noted(node: RunningNode, monkeypatch: pytest.MonkeyPatch) -> None:
    """A file removed between the listing and the reading leaves a note in rejected/ saying so,
    and the node goes on."""
    since = time.monotonic()
    real_read = DropFolder._read

    def vanishing(folder: DropFolder, path: Path) -> bytes:
        if path.name == "vanishing.xml":
            path.unlink()  # the agency system took it back at the worst moment
        return real_read(folder, path)

    monkeypatch.setattr(DropFolder, "_read", vanishing)
    drop(node.root / "inbox", "vanishing.xml", dossier(6))
    error = (node.root / "rejected" / "vanishing.error.txt")
    wait_until(error.is_file, 20, "the note")
    assert "it disappeared before the node could read it" in error.read_text("utf-8")
    node.takes_a_good_file(since)


def test_any_failure_in_one_file_rejects_that_file_only(node: RunningNode, monkeypatch: pytest.MonkeyPatch) -> None:
    """Whatever one file makes fail (an unexpected exception, a refusal without a message, an
    exception whose text is not UTF-8, each injected into its submission), that file is rejected
    with the exception as the reason and the others of its pass are taken."""
    since = time.monotonic()
    real_submit = workflow.submit
    faults = {"boom.xml": RuntimeError("injected fault"), "quiet.xml": InvalidDossier(""),
              "odd.xml": ValueError("odd \udce9 byte")}

    def failing(ctx: NodeContext, data: bytes, source: str = "dossier") -> Any:
        if source in faults:
            raise faults[source]
        return real_submit(ctx, data, source)

    monkeypatch.setattr(dropfolder, "submit", failing)
    sequence = next(GOOD)
    with capture_logs() as events:
        for number, name in enumerate(faults, 14):
            drop(node.root / "inbox", name, dossier(number))
        drop(node.root / "inbox", f"pass-{sequence}.xml", dossier(sequence))
        errors = {name: node.rejected(name) for name in faults}
        wait_until(lambda: (node.root / "accepted" / f"pass-{sequence}.xml").is_file(), 20, "the other file")
    assert "the node could not process it (RuntimeError: injected fault)" in errors["boom.xml"]
    assert errors["quiet.xml"] == "quiet.xml was not submitted:\nInvalidDossier\n"
    assert "(ValueError: odd \\udce9 byte)" in errors["odd.xml"]
    assert sorted(e["file"] for e in events if e["event"] == "dropfolder.failed") == ["boom.xml", "odd.xml"]
    node.takes_a_good_file(since)


def test_a_name_used_again_keeps_both_rejections(node: RunningNode) -> None:
    """A second bad file under a name already in rejected/ is filed beside the first, each with
    its own reason; neither overwrites the other."""
    since = time.monotonic()
    drop(node.root / "inbox", "again.xml", b"<first/>")
    node.rejected("again.xml")
    drop(node.root / "inbox", "again.xml", b"second")
    wait_until(lambda: len(list((node.root / "rejected").glob("again.*.error.txt"))) == 1, 20, "the second")
    (second,) = (node.root / "rejected").glob("again.*.error.txt")
    assert "Start tag expected" in second.read_text("utf-8") or "line 1" in second.read_text("utf-8")
    assert (node.root / "rejected" / "again.xml").read_bytes() == b"<first/>"
    node.takes_a_good_file(since)


def test_a_code_reused_with_other_content_is_refused(node: RunningNode) -> None:
    """A second file with a known dossier code but different content is rejected as already
    submitted with different content; the stored dossier is the first one."""
    since = time.monotonic()
    sequence = next(GOOD)
    first = dossier(sequence)
    drop(node.root / "inbox", f"first-{sequence}.xml", first)
    wait_until(lambda: (node.root / "accepted" / f"first-{sequence}.xml").is_file(), 20, "the first file")
    other = re.sub(rb"<FullName>[^<]*</FullName>", "<FullName>Người Khác</FullName>".encode(), first)
    drop(node.root / "inbox", f"other-{sequence}.xml", other)
    error = node.rejected(f"other-{sequence}.xml")
    assert f"dossier {code_of(sequence)} was already submitted with different content" in error
    with node.ctx.for_thread() as own:
        stored = own.store.dossier_payload(code_of(sequence))
    assert stored is not None
    assert "Người Khác".encode() not in stored
    node.takes_a_good_file(since)


# restarts and other doors


def test_poison_left_in_processing_does_not_stop_a_restart(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A FIFO, a directory and a dossier with a date Python cannot hold, left in processing/ by a
    node that died on them, are rejected when the node starts again, which then takes good files."""
    poison = {"pipe.xml": fifo, "folder.xml": directory,
              "date.xml": writing(with_due_date(dossier(8), "10000-12-04"))}

    def left_behind(folder: DropFolder) -> None:
        for name, make in poison.items():
            make(folder.root / "processing" / name)

    node = running_node(tmp_path, monkeypatch, before=left_behind)
    try:
        since = time.monotonic()
        for name in poison:
            assert "was not submitted" in node.rejected(name)
        node.takes_a_good_file(since)
    finally:
        assert node.stop() == 0


class BrokenDoor(Door):
    """A door whose every poll fails."""

    def poll(self, ctx: NodeContext) -> int:
        raise RuntimeError("the door broke")


def test_a_failing_door_does_not_stop_the_loop(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A door that raises on every poll is logged as one event per poll, with its name, and the
    loop goes on: the other doors are polled, the watchdog pinged, and the node stops cleanly."""
    with capture_logs() as events:
        node = running_node(tmp_path, monkeypatch, doors=lambda folder: [BrokenDoor()])
        try:
            since = time.monotonic()
            node.takes_a_good_file(since)
            time.sleep(1.0)
            assert node.notify.max_gap(since, time.monotonic()) < MAX_WATCHDOG_GAP_S
        finally:
            assert node.stop() == 0
    failed = [e for e in events if e["event"] == "door.poll_failed"]
    assert len(failed) >= 2
    assert {e["door"] for e in failed} == {"BrokenDoor"}
    assert "the door broke" in failed[0]["error"]


# edXML import


def test_a_code_reused_with_other_content_is_refused_by_edxml_import(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """An edXML package carrying a different dossier under a code the node knows is refused
    (exit 1, already submitted); the stored dossier stays the first one."""
    cluster = Cluster(tmp_path)
    cluster.init(COMMUNE)
    config = cluster.config(COMMUNE)
    first = dossier(13)
    (tmp_path / "first.xml").write_bytes(first)
    assert cli("submit", "--config", config, tmp_path / "first.xml") == 0
    other = etree.fromstring(re.sub(rb"<FullName>[^<]*</FullName>", "<FullName>Người Khác</FullName>".encode(),
                                    first))
    package = tmp_path / "other.edxml"
    package.write_bytes(export_transfer(other, Organ("A", "A"), Organ(COMMUNE, "commune"), "birth"))
    capsys.readouterr()
    assert cli("edxml", "import", "--config", config, package) == 1
    assert f"dossier {code_of(13)} was already submitted" in capsys.readouterr().err
    with NodeContext.open(NodeConfig.load(config)) as ctx:
        stored = ctx.store.dossier_payload(code_of(13))
    assert stored is not None
    assert "Người Khác".encode() not in stored
