"""The agency-system HTTP API: token, submit, done, timeline (JSON and XML), overdue, OpenAPI;
requests share the daemon's context, each over a connection of its own, closed after use."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from exchange.adapters.http_api import ApiServer
from exchange.codes import AgencyCode, ProcedureCode
from exchange.demo import samples
from exchange.errors import ConfigError
from exchange.node.config import NodeConfig
from exchange.node.context import NodeContext
from exchange.rules import load as rules_load
from exchange.store.node import Store
from tests.node_cluster import COMMUNE, Cluster, wait_until

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
    timeline = json.loads(body)
    assert status == 200
    assert [s["step"] for s in timeline["steps"]] == ["receive", "residence", "insurance", "return"]
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
