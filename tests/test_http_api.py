"""The agency-system HTTP API: token, submit, done, timeline (JSON and XML), overdue, OpenAPI."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from exchange.adapters.http_api import ApiServer
from exchange.codes import AgencyCode, ProcedureCode
from exchange.demo import samples
from exchange.node.config import NodeConfig
from tests.node_cluster import COMMUNE, Cluster

TOKEN = "s3cret-token"


@pytest.fixture
def api(tmp_path: Path) -> Iterator[str]:
    district = Cluster(tmp_path)
    district.init(COMMUNE)
    server = ApiServer(NodeConfig.load(district.config(COMMUNE)), TOKEN)
    server.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


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
