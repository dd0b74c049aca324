"""Poison never stops a node at its doors: whatever lies in the drop folder (a FIFO, a directory,
a link, a name that is not UTF-8, a file too large, a date Python cannot hold, garbage, a file
that vanishes, a file whose handling fails) ends in rejected/ with its reason while the daemon
keeps pinging its watchdog and takes the next good file; a door that fails does not stop the
loop; and the HTTP API outlives idle and slow clients, hostile lengths, failing routes and an
occupied port. A dossier code submitted twice with different content is refused at every door."""

from __future__ import annotations

import itertools
import json
import os
import re
import select
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest
from lxml import etree
from structlog.testing import capture_logs

from exchange.adapters import dropfolder
from exchange.adapters import http_api as http_api_module
from exchange.adapters.dropfolder import MAX_FILE_BYTES, DropFolder
from exchange.adapters.edxml import Organ, export_transfer
from exchange.adapters.embedded import EmbeddedTransport
from exchange.adapters.http_api import ApiServer
from exchange.codes import AgencyCode, ProcedureCode
from exchange.demo import samples
from exchange.errors import InvalidDossier
from exchange.node import workflow
from exchange.node.config import NodeConfig
from exchange.node.context import NodeContext
from exchange.node.daemon import Daemon
from exchange.node.doors import Door
from tests.node_cluster import COMMUNE, EXE, Cluster, NotifySocket, cli, wait_until

MAX_WATCHDOG_GAP_S = 2.0
TOKEN = "s3cret-token"
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


# the HTTP API


@pytest.fixture
def api_node(tmp_path: Path) -> Iterator[NodeContext]:
    """The commune's context, as the daemon holds it, with the API token configured."""
    district = Cluster(tmp_path)
    district.init(COMMUNE)
    config = NodeConfig.load(district.config(COMMUNE), environ={"EXCHANGE_AGENCY_SYSTEM_TOKEN": TOKEN})
    with NodeContext.open(config) as ctx:
        yield ctx


@pytest.fixture
def server(api_node: NodeContext) -> Iterator[ApiServer]:
    """An API that drops a connection after one second of silence or slowness, serving 8 at once."""
    api_node.config = replace(api_node.config, http_max_connections=8)
    server = ApiServer(api_node, read_timeout=1.0)
    server.start()
    yield server
    server.stop()


def connect(server: ApiServer, timeout: float = 10) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.server_address[1]), timeout=timeout)


def response_to(server: ApiServer, request: bytes, timeout: float = 10) -> bytes:
    """Send ``request`` and read until the server closes the connection."""
    with connect(server, timeout) as client:
        client.sendall(request)
        return read_all(client)


def read_all(client: socket.socket) -> bytes:
    chunks = []
    try:
        while chunk := client.recv(65536):
            chunks.append(chunk)
    except ConnectionResetError:
        pass
    return b"".join(chunks)


def status_of(response: bytes) -> int:
    return int(response.split(b" ", 2)[1])


def error_of(response: bytes) -> str:
    head, _, body = response.partition(b"\r\n\r\n")
    assert b"Content-Type: application/json" in head
    message: str = json.loads(body)["error"]
    return message


def post(path: str, headers: str = "", body: bytes = b"") -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n{headers}\r\n").encode() + body


def get(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n\r\n".encode()


def still_answers(server: ApiServer) -> None:
    response = response_to(server, get("/dossiers"))
    assert status_of(response) == 200, response


def open_descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


def closed_by_server(client: socket.socket, within: float) -> bool:
    """Whether the server closed (or refused) ``client`` within ``within`` seconds."""
    readable, _, _ = select.select([client], [], [], within)
    if not readable:
        return False
    try:
        data = client.recv(65536)
    except ConnectionResetError:
        return True
    return data == b"" or data.startswith(b"HTTP/1.0 503") and read_all(client) is not None


def test_idle_connections_past_the_cap_hold_no_descriptors(server: ApiServer) -> None:
    """Two hundred idle connections take at most the cap of 8 descriptors on the node's side (the
    others are answered 503 and closed at once); once the idle ones time out, a real request is
    answered while the attacker still holds its sockets."""
    before = open_descriptors()
    with capture_logs() as events:
        clients = [connect(server) for _ in range(200)]
        try:
            time.sleep(0.5)
            assert open_descriptors() - before <= 200 + 8 + 4
            refused = [c for c in clients if closed_by_server(c, 0.01)]
            assert len(refused) >= 200 - 8
            time.sleep(1.5)  # the read timeout (1 s) and the next cut have passed
            wait_until(lambda: response_to(server, get("/dossiers")).startswith(b"HTTP/1.0 200 "), 5,
                       "a real request answered")
        finally:
            for client in clients:
                client.close()
    refusals = [e for e in events if e["event"] == "http.too_many_connections"]
    assert {e["limit"] for e in refusals} == {8}
    assert sum(e["refused"] for e in refusals) >= 100  # counted in a few events, not one per connection
    assert len(refusals) <= 5


def test_a_silent_client_is_dropped(server: ApiServer) -> None:
    """A client that connects and sends nothing is disconnected after the read timeout."""
    with connect(server) as client:
        started = time.monotonic()
        assert closed_by_server(client, 5)
        assert 0.8 < time.monotonic() - started < 3
    still_answers(server)


def test_a_slowloris_client_is_cut_at_the_deadline(server: ApiServer) -> None:
    """A client that trickles a header line every 0.2 s (never silent for a whole read timeout)
    is cut once its request is not whole after the read timeout; the API answers others meanwhile."""
    with capture_logs() as events, connect(server) as client:
        started = time.monotonic()
        client.sendall(b"GET /dossiers HTTP/1.1\r\nHost: x\r\n")
        cut = False
        while not cut and time.monotonic() - started < 8:
            try:
                client.sendall(b"X-Slow: 1\r\n")
            except (BrokenPipeError, ConnectionResetError):
                cut = True
                break
            cut = closed_by_server(client, 0.2)
        elapsed = time.monotonic() - started
    assert cut
    assert elapsed < 4.0  # the read timeout (1 s), the next cut (0.5 s) and room for a loaded machine
    assert any(e["event"] == "http.too_slow" for e in events)
    still_answers(server)


def test_half_a_body_is_dropped_not_submitted(server: ApiServer, api_node: NodeContext) -> None:
    """A request whose body stops halfway is dropped after its deadline, and nothing of it is submitted."""
    data = dossier(9)
    with connect(server) as client:
        started = time.monotonic()
        client.sendall(post("/dossiers", f"Content-Length: {len(data)}\r\n", data[: len(data) // 2]))
        assert closed_by_server(client, 5)
        assert time.monotonic() - started < 3
    assert codes_at(api_node) == set()
    still_answers(server)


@pytest.mark.parametrize(("length", "status", "says"), [
    ("-1", 400, "Content-Length must be a number of bytes, not '-1'"),
    ("abc", 400, "not 'abc'"),
    ("+5", 400, "not '+5'"),
    ("5, 6", 400, "not '5, 6'"),
    (str(200 * 1024 * 1024), 413, f"is more than {16 * 1024 * 1024}"),
    ("99999999999999999999", 400, "not '99999999999999999999'"),
])
def test_a_hostile_length_is_answered_without_reading(server: ApiServer, length: str, status: int, says: str) -> None:
    """A negative, non-numeric, signed, doubled or oversized Content-Length is answered at once
    with a JSON error; the body is never waited for."""
    started = time.monotonic()
    response = response_to(server, post("/dossiers", f"Content-Length: {length}\r\n"))
    assert time.monotonic() - started < 0.9  # less than the read timeout: nothing was read
    assert status_of(response) == status
    assert says in error_of(response)
    still_answers(server)


def test_two_lengths_and_chunked_bodies_are_refused(server: ApiServer) -> None:
    """Two different Content-Length headers are a 400; a chunked body is a 411; neither is read."""
    response = response_to(server, post("/dossiers", "Content-Length: 5\r\nContent-Length: 6\r\n"))
    assert status_of(response) == 400
    response = response_to(server, post("/dossiers", "Transfer-Encoding: chunked\r\n"))
    assert status_of(response) == 411
    assert "Content-Length" in error_of(response)
    still_answers(server)


def test_garbage_instead_of_a_request_is_a_json_400(server: ApiServer, capsys: pytest.CaptureFixture[str]) -> None:
    """Bytes that are not HTTP (a TLS hello) get a JSON 400 and no traceback."""
    response = response_to(server, b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 hello\r\n\r\n")
    assert status_of(response) == 400
    assert error_of(response)
    assert "Traceback" not in capsys.readouterr().err
    still_answers(server)


def test_a_route_that_fails_answers_500(server: ApiServer, monkeypatch: pytest.MonkeyPatch,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    """An unexpected exception in a route is a 500 with a JSON error and one structured event,
    never a traceback on stderr or a dropped connection; the next request is served."""
    def failing(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("injected fault")

    monkeypatch.setattr(http_api_module, "dossier_list", failing)
    with capture_logs() as events:
        response = response_to(server, get("/dossiers"))
    assert status_of(response) == 500
    assert error_of(response) == "the node failed on this request: RuntimeError: injected fault"
    (failed,) = [e for e in events if e["event"] == "http.route_failed"]
    assert failed["path"] == "/dossiers"
    assert "Traceback" not in capsys.readouterr().err
    monkeypatch.undo()
    still_answers(server)


def test_a_date_python_cannot_hold_is_answered(server: ApiServer, capsys: pytest.CaptureFixture[str]) -> None:
    """A dossier whose due date is in the year 10000 (schema-valid) is answered with a JSON error,
    not a closed connection and a traceback; a good dossier is taken after it."""
    data = with_due_date(dossier(10), "10000-12-04")
    response = response_to(server, post("/dossiers", f"Content-Length: {len(data)}\r\n", data))
    assert status_of(response) in (400, 500)
    assert "10000" in error_of(response)
    assert "Traceback" not in capsys.readouterr().err
    good = dossier(11)
    assert status_of(response_to(server, post("/dossiers", f"Content-Length: {len(good)}\r\n", good))) == 201


def test_a_code_reused_with_other_content_is_refused_by_the_api(server: ApiServer, api_node: NodeContext) -> None:
    """A second POST with a known dossier code and different content is refused (400, already
    submitted), and the stored dossier stays the first one."""
    first = dossier(12)
    other = re.sub(rb"<FullName>[^<]*</FullName>", "<FullName>Người Khác</FullName>".encode(), first)
    assert status_of(response_to(server, post("/dossiers", f"Content-Length: {len(first)}\r\n", first))) == 201
    response = response_to(server, post("/dossiers", f"Content-Length: {len(other)}\r\n", other))
    assert status_of(response) == 400
    assert f"dossier {code_of(12)} was already submitted" in error_of(response)
    stored = api_node.store.dossier_payload(code_of(12))
    assert stored is not None
    assert "Người Khác".encode() not in stored


def test_a_code_reused_with_other_content_is_refused_by_edxml_import(
        api_node: NodeContext, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """An edXML package carrying a different dossier under a code the node knows is refused
    (exit 1, already submitted); the stored dossier stays the first one."""
    config = api_node.config.source
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
    stored = api_node.store.dossier_payload(code_of(13))
    assert stored is not None
    assert "Người Khác".encode() not in stored


def test_a_port_in_use_is_one_line_and_exit_1(api_node: NodeContext) -> None:
    """`exchange run` with its API port taken by another process exits 1 with one line saying so,
    no traceback."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {**os.environ, "EXCHANGE_AGENCY_SYSTEM_TOKEN": TOKEN, "EXCHANGE_AGENCY_SYSTEM_HTTP_PORT": str(port)}
        env.pop("NOTIFY_SOCKET", None)
        result = subprocess.run([EXE, "run", "--config", str(api_node.config.source)], capture_output=True,
                                text=True, timeout=60, env=env)
    assert result.returncode == 1
    assert result.stderr.splitlines()[-1] == f"exchange: the HTTP API cannot listen on 127.0.0.1:{port}: address in use"
    assert "Traceback" not in result.stderr
