"""The agency-system HTTP API: token, submit, done, timeline (JSON and XML), overdue, OpenAPI;
requests share the daemon's context, each over a connection of its own, closed after use; and
no client stalls or stops the node: idle connections past the cap hold no descriptors, silent
and slow clients are cut, hostile lengths are answered unread, a failing route is a JSON 500,
a code reused with other content is refused, and a port in use is one line and exit 1."""

from __future__ import annotations

import json
import os
import re
import select
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from exchange.adapters import http_api as http_api_module
from exchange.adapters.http_api import ApiServer
from exchange.codes import AgencyCode, ProcedureCode
from exchange.demo import samples
from exchange.errors import ConfigError
from exchange.node.config import NodeConfig
from exchange.node.context import NodeContext
from exchange.rules import load as rules_load
from exchange.store.node import Store
from tests.node_cluster import COMMUNE, EXE, Cluster, wait_until

TOKEN = "s3cret-token"
REQUESTS = 12


@pytest.fixture
def node(tmp_path: Path) -> Iterator[NodeContext]:
    """The commune's context, as the daemon holds it, with the API token configured."""
    district = Cluster(tmp_path)
    district.init(COMMUNE)
    config = NodeConfig.load(district.config(COMMUNE), environ={"EXCHANGE_AGENCY_SYSTEM_TOKEN": TOKEN})
    with NodeContext.open(config) as ctx:
        yield ctx


@pytest.fixture
def server(node: NodeContext) -> Iterator[ApiServer]:
    server = ApiServer(node)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def api(server: ApiServer) -> str:
    return f"http://127.0.0.1:{server.server_address[1]}"


def call(url: str, method: str = "GET", body: bytes | None = None, token: str | None = TOKEN,
         accept: str = "application/json") -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=body, method=method, headers={"Accept": accept})
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310 - a local test server
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.read()


def dossier(sequence: int) -> bytes:
    spec = samples.SampleSpec(AgencyCode(COMMUNE), ProcedureCode("2.000986"), size_kb=2, sequence=sequence)
    return samples.to_bytes(samples.sample_dossier(spec))


def test_token_is_required(api: str) -> None:
    """Without the token, or with a wrong one, every call but the OpenAPI description is 401."""
    assert call(f"{api}/dossiers", token=None)[0] == 401
    assert call(f"{api}/dossiers", token="wrong")[0] == 401
    status, body = call(f"{api}/openapi.json", token=None)
    assert status == 200
    assert "/dossiers/{code}/steps/{step}/done" in json.loads(body)["paths"]


def test_submit_timeline_and_done(api: str) -> None:
    """A submitted dossier shows its steps; a step not ready here is refused with the reason."""
    status, body = call(f"{api}/dossiers", "POST", dossier(1))
    assert status == 201
    code = json.loads(body)["code"]
    status, body = call(f"{api}/dossiers/{code}")
    (document,) = json.loads(body)
    assert status == 200
    assert [s["step"] for s in document["steps"]] == ["receive", "residence", "insurance", "return"]
    status, body = call(f"{api}/dossiers/{code}", accept="application/xml")
    assert body.startswith(b"<?xml")
    assert b'<Step id="return"' in body
    status, body = call(f"{api}/dossiers/{code}/steps/return/done", "POST", b'{"result": "accepted"}')
    assert status == 400
    assert "waiting for residence, insurance" in json.loads(body)["error"]


def test_bad_input_is_a_clear_400(api: str) -> None:
    """A duplicate or an invalid dossier is refused with what is wrong; unknown dossiers are 404."""
    assert call(f"{api}/dossiers", "POST", dossier(2))[0] == 201
    status, body = call(f"{api}/dossiers", "POST", dossier(2))
    assert status == 400
    assert "already submitted" in json.loads(body)["error"]
    status, body = call(f"{api}/dossiers", "POST", dossier(3).replace(b"<IdNumber>", b"<IdNumber>x"))
    assert status == 400
    assert "IdNumber" in json.loads(body)["error"]
    assert call(f"{api}/dossiers/000.04.10.H49-261129-0999")[0] == 404
    assert call(f"{api}/nothing")[0] == 404


def test_list_and_overdue(api: str) -> None:
    """The list shows each dossier; nothing just submitted is overdue."""
    call(f"{api}/dossiers", "POST", dossier(4))
    status, body = call(f"{api}/dossiers")
    assert status == 200
    assert len(json.loads(body)) == 1
    assert json.loads(call(f"{api}/dossiers?overdue=1")[1]) == []


def test_requests_share_the_daemons_context(node: NodeContext, monkeypatch: pytest.MonkeyPatch) -> None:
    """Requests use the daemon's rules, signer and opener (no context opened, no rules loaded per
    request), each over a database connection of its own that is closed when it is done."""
    loads, opens, closed = counting(monkeypatch, rules_load, "load"), counting(monkeypatch, NodeContext, "open"), \
        counting(monkeypatch, Store, "close")
    server = ApiServer(node)
    server.start()
    try:
        api = f"http://127.0.0.1:{server.server_address[1]}"
        assert call(f"{api}/dossiers", "POST", dossier(5))[0] == 201
        for _ in range(REQUESTS - 1):
            assert call(f"{api}/dossiers")[0] == 200
        wait_until(lambda: len(closed) == REQUESTS, 10, "every request's connection closed")
    finally:
        server.stop()
    assert (len(loads), len(opens), len(closed)) == (0, 0, REQUESTS)
    assert all(store is not node.store for store in closed)


def test_a_reloaded_token_is_the_one_asked_for(node: NodeContext, api: str) -> None:
    """The API reads the token from the daemon's configuration, so a reload changes it at once."""
    node.config = replace(node.config, token="rotated")
    assert call(f"{api}/dossiers")[0] == 401
    assert call(f"{api}/dossiers", token="rotated")[0] == 200


def test_no_api_without_a_token(node: NodeContext) -> None:
    """An API without a token is a configuration error, at start and for a reload."""
    with pytest.raises(ConfigError, match="token"):
        ApiServer(replace(node, config=replace(node.config, token="")))


def counting(monkeypatch: pytest.MonkeyPatch, owner: Any, name: str) -> list[Any]:
    """Record the first argument of every call to ``owner.name`` (calls still go through)."""
    calls: list[Any] = []
    original = getattr(owner, name)

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        calls.append(args[0] if args else None)
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, name, wrapper)
    return calls


def test_a_client_that_goes_away_leaves_no_traceback(server: ApiServer, capsys: pytest.CaptureFixture[str]) -> None:
    """A client that resets its connection mid-request is logged as one event, and nothing is
    printed to stderr (the node's JSON log) as a traceback."""
    import socket
    import struct

    from structlog.testing import capture_logs

    with capture_logs() as events:
        client = socket.create_connection(server.server_address[:2], timeout=5)
        client.sendall(b"GET /dossiers HTTP/1.1\r\nHost: x\r\n")  # headers never finished
        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        client.close()  # an RST, as a client process that dies sends
        wait_until(lambda: any(e["event"] == "http.client_gone" for e in events), 10, "the client_gone event")
    assert "Traceback" not in capsys.readouterr().err
    assert not [e for e in events if e["log_level"] == "error"]


# hostile clients: none may stall or stop the node


@pytest.fixture
def strict(node: NodeContext) -> Iterator[ApiServer]:
    """An API that drops a connection after one second of silence or slowness, serving 8 at once."""
    node.config = replace(node.config, http_max_connections=8)
    server = ApiServer(node, read_timeout=1.0)
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


def test_idle_connections_past_the_cap_hold_no_descriptors(strict: ApiServer) -> None:
    """Two hundred idle connections take at most the cap of 8 descriptors on the node's side (the
    others are answered 503 and closed at once); once the idle ones time out, a real request is
    answered while the attacker still holds its sockets."""
    before = open_descriptors()
    with capture_logs() as events:
        clients = [connect(strict) for _ in range(200)]
        try:
            time.sleep(0.5)
            assert open_descriptors() - before <= 200 + 8 + 4
            refused = [c for c in clients if closed_by_server(c, 0.01)]
            assert len(refused) >= 200 - 8
            time.sleep(1.5)  # the read timeout (1 s) and the next cut have passed
            wait_until(lambda: response_to(strict, get("/dossiers")).startswith(b"HTTP/1.0 200 "), 5,
                       "a real request answered")
        finally:
            for client in clients:
                client.close()
    refusals = [e for e in events if e["event"] == "http.too_many_connections"]
    assert {e["limit"] for e in refusals} == {8}
    assert sum(e["refused"] for e in refusals) >= 100  # counted in a few events, not one per connection
    assert len(refusals) <= 5


def test_a_silent_client_is_dropped(strict: ApiServer) -> None:
    """A client that connects and sends nothing is disconnected after the read timeout."""
    with connect(strict) as client:
        started = time.monotonic()
        assert closed_by_server(client, 5)
        assert 0.8 < time.monotonic() - started < 3
    still_answers(strict)


def test_a_slowloris_client_is_cut_at_the_deadline(strict: ApiServer) -> None:
    """A client that trickles a header line every 0.2 s (never silent for a whole read timeout)
    is cut once its request is not whole after the read timeout; the API answers others meanwhile."""
    with capture_logs() as events, connect(strict) as client:
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
    still_answers(strict)


def test_half_a_body_is_dropped_not_submitted(strict: ApiServer, node: NodeContext) -> None:
    """A request whose body stops halfway is dropped after its deadline, and nothing of it is submitted."""
    data = dossier(9)
    with connect(strict) as client:
        started = time.monotonic()
        client.sendall(post("/dossiers", f"Content-Length: {len(data)}\r\n", data[: len(data) // 2]))
        assert closed_by_server(client, 5)
        assert time.monotonic() - started < 3
    assert node.store.conn.execute("SELECT COUNT(*) FROM dossiers").fetchone()[0] == 0
    still_answers(strict)


@pytest.mark.parametrize(("length", "status", "says"), [
    ("-1", 400, "Content-Length must be a number of bytes, not '-1'"),
    ("abc", 400, "not 'abc'"),
    ("+5", 400, "not '+5'"),
    ("5, 6", 400, "not '5, 6'"),
    (str(200 * 1024 * 1024), 413, f"is more than {16 * 1024 * 1024}"),
    ("99999999999999999999", 400, "not '99999999999999999999'"),
])
def test_a_hostile_length_is_answered_without_reading(strict: ApiServer, length: str, status: int, says: str) -> None:
    """A negative, non-numeric, signed, doubled or oversized Content-Length is answered at once
    with a JSON error; the body is never waited for."""
    started = time.monotonic()
    response = response_to(strict, post("/dossiers", f"Content-Length: {length}\r\n"))
    assert time.monotonic() - started < 0.9  # less than the read timeout: nothing was read
    assert status_of(response) == status
    assert says in error_of(response)
    still_answers(strict)


def test_two_lengths_and_chunked_bodies_are_refused(strict: ApiServer) -> None:
    """Two different Content-Length headers are a 400; a chunked body is a 411; neither is read."""
    response = response_to(strict, post("/dossiers", "Content-Length: 5\r\nContent-Length: 6\r\n"))
    assert status_of(response) == 400
    response = response_to(strict, post("/dossiers", "Transfer-Encoding: chunked\r\n"))
    assert status_of(response) == 411
    assert "Content-Length" in error_of(response)
    still_answers(strict)


def test_garbage_instead_of_a_request_is_a_json_400(strict: ApiServer, capsys: pytest.CaptureFixture[str]) -> None:
    """Bytes that are not HTTP (a TLS hello) get a JSON 400 and no traceback."""
    response = response_to(strict, b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 hello\r\n\r\n")
    assert status_of(response) == 400
    assert error_of(response)
    assert "Traceback" not in capsys.readouterr().err
    still_answers(strict)


def test_a_route_that_fails_answers_500(strict: ApiServer, monkeypatch: pytest.MonkeyPatch,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    """An unexpected exception in a route is a 500 with a JSON error and one structured event,
    never a traceback on stderr or a dropped connection; the next request is served."""
    def failing(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("injected fault")

    monkeypatch.setattr(http_api_module, "view", failing)
    with capture_logs() as events:
        response = response_to(strict, get("/dossiers"))
    assert status_of(response) == 500
    assert error_of(response) == "the node failed on this request: RuntimeError: injected fault"
    (failed,) = [e for e in events if e["event"] == "http.route_failed"]
    assert failed["path"] == "/dossiers"
    assert "Traceback" not in capsys.readouterr().err
    monkeypatch.undo()
    still_answers(strict)


def test_a_date_python_cannot_hold_is_answered(strict: ApiServer, capsys: pytest.CaptureFixture[str]) -> None:
    """A dossier whose due date is in the year 10000 (schema-valid) is answered with a JSON error,
    not a closed connection and a traceback; a good dossier is taken after it."""
    data = re.sub(rb"<DueDate>[^<]*</DueDate>", b"<DueDate>10000-12-04</DueDate>", dossier(10))
    response = response_to(strict, post("/dossiers", f"Content-Length: {len(data)}\r\n", data))
    assert status_of(response) in (400, 500)
    assert "10000" in error_of(response)
    assert "Traceback" not in capsys.readouterr().err
    good = dossier(11)
    assert status_of(response_to(strict, post("/dossiers", f"Content-Length: {len(good)}\r\n", good))) == 201


def test_a_code_reused_with_other_content_is_refused_by_the_api(strict: ApiServer, node: NodeContext) -> None:
    """A second POST with a known dossier code and different content is refused (400, already
    submitted), and the stored dossier stays the first one."""
    first = dossier(12)
    other = re.sub(rb"<FullName>[^<]*</FullName>", "<FullName>Người Khác</FullName>".encode(), first)
    response = response_to(strict, post("/dossiers", f"Content-Length: {len(first)}\r\n", first))
    assert status_of(response) == 201
    code = json.loads(response.partition(b"\r\n\r\n")[2])["code"]
    response = response_to(strict, post("/dossiers", f"Content-Length: {len(other)}\r\n", other))
    assert status_of(response) == 400
    assert f"dossier {code} was already submitted" in error_of(response)
    stored = node.store.dossier_payload(code)
    assert stored is not None
    assert "Người Khác".encode() not in stored


def test_a_port_in_use_is_one_line_and_exit_1(node: NodeContext) -> None:
    """`exchange run` with its API port taken by another process exits 1 with one line saying so,
    no traceback."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {**os.environ, "EXCHANGE_AGENCY_SYSTEM_TOKEN": TOKEN, "EXCHANGE_AGENCY_SYSTEM_HTTP_PORT": str(port)}
        env.pop("NOTIFY_SOCKET", None)
        result = subprocess.run([EXE, "run", "--config", str(node.config.source)], capture_output=True,
                                text=True, timeout=60, env=env)
    assert result.returncode == 1
    assert result.stderr.splitlines()[-1] == f"exchange: the HTTP API cannot listen on 127.0.0.1:{port}: address in use"
    assert "Traceback" not in result.stderr


def test_the_api_and_status_json_give_one_document(api: str, node: NodeContext,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """`GET /dossiers`, `GET /dossiers/CODE` and `exchange status --json` return the same document:
    state, national status, due date, steps with agency names and due dates, and a timeline."""
    from exchange.cli import main

    code = json.loads(call(f"{api}/dossiers", "POST", dossier(6))[1])["code"]
    listed = json.loads(call(f"{api}/dossiers")[1])
    one = json.loads(call(f"{api}/dossiers/{code}")[1])
    capsys.readouterr()
    assert main(["status", "--config", str(node.config.source), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert listed == printed
    assert one == [d for d in printed if d["code"] == code]
    (document,) = one
    assert (document["state"], document["national_status"]) == ("processing", 4)
    assert document["due"]
    assert document["on_time"] is True
    branches = [s for s in document["steps"] if s["step"] in ("residence", "insurance")]
    assert all(s["due"] and s["agency_name"] for s in branches)  # due dates for steps in progress elsewhere
    assert [e["event"] for e in document["timeline"]][:2] == ["submitted", "step-done"]
