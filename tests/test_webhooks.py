"""Webhooks to the agency system: pushed once it answers, retried while it is down, audited."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest

from exchange.adapters.webhooks import Webhooks
from exchange.audit.entries import Entry
from exchange.codes import AgencyCode
from exchange.errors import ConfigError
from exchange.node.config import NodeConfig
from tests.node_cluster import COMMUNE, POLICE, Cluster, wait_until


class AgencySystem(HTTPServer):
    """A stand-in agency system that refuses the first ``failures`` pushes with HTTP 503."""

    def __init__(self, failures: int) -> None:
        super().__init__(("127.0.0.1", 0), Receiver)
        self.failures = failures
        self.received: list[dict[str, str]] = []


class Receiver(BaseHTTPRequestHandler):
    server: AgencySystem

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        return

    def do_POST(self) -> None:  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if self.server.failures > 0:
            self.server.failures -= 1
            self.send_response(503)
        else:
            self.server.received.append(body)
            self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()


@pytest.fixture
def agency_system() -> Iterator[AgencySystem]:
    server = AgencySystem(failures=2)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def test_webhook_is_retried_until_the_agency_system_answers(tmp_path: Path, agency_system: AgencySystem) -> None:
    """The police's system is down for two pushes; the dossier lands once, and the audit log says so."""
    district = Cluster(tmp_path)
    district.init(COMMUNE, POLICE)
    url = f"http://127.0.0.1:{agency_system.server_address[1]}/incoming"
    district.start(COMMUNE)
    district.start(POLICE, EXCHANGE_AGENCY_SYSTEM_WEBHOOK=url)
    try:
        code = district.submit(1)
        wait_until(lambda: len(agency_system.received) >= 1, 60, "the webhook")
    finally:
        district.stop_all()
    (pushed,) = agency_system.received
    assert (pushed["dossier"], pushed["step"], pushed["kind"]) == (code, "residence", "transfer")
    assert pushed["payload"].startswith("<?xml version='1.0' encoding='UTF-8'?>\n<Dossier")
    import sqlite3

    with sqlite3.connect(tmp_path / "nodes" / POLICE / "state" / "node.db") as conn:
        attempts = conn.execute("SELECT attempts, state FROM webhooks").fetchone()
        events = [Entry.decode(bytes(d))[1] for (d,) in conn.execute("SELECT data FROM audit_entries")]
    assert attempts == (3, "done")
    assert any(e.detail.get("via") == "webhook" for e in events)


def test_only_http_urls(tmp_path: Path) -> None:
    """A webhook URL with another scheme is a configuration error; none at all is no webhooks."""
    config = NodeConfig(source=tmp_path / "node.toml", agency=AgencyCode(COMMUNE), state_dir=tmp_path,
                        ca=tmp_path, cert=tmp_path, key=tmp_path, checkpoint_key=tmp_path, rules=tmp_path)
    Webhooks().check(config)
    Webhooks().check(replace(config, webhook="https://agency.example/in"))
    with pytest.raises(ConfigError, match="http"):
        Webhooks().check(replace(config, webhook="file:///etc/passwd"))


class SlowReceiver(Receiver):
    """An agency system that takes its time: three seconds before each answer."""

    def do_POST(self) -> None:  # noqa: N802
        import time

        time.sleep(3.0)
        super().do_POST()


def test_a_slow_agency_system_does_not_hold_up_the_loop(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Pushes run on the door's own thread: while the agency system takes seconds to answer, the
    node's loop keeps pinging its watchdog every half second or so; the dossier still lands."""
    import time

    from exchange.adapters.embedded import EmbeddedTransport
    from exchange.node.context import NodeContext
    from exchange.node.daemon import Daemon
    from exchange.node.dispatcher import Dispatcher
    from exchange.node.metrics import Metrics
    from exchange.node.workflow import submit
    from tests.node_cluster import NotifySocket
    from tests.test_outages import birth_dossier

    slow = AgencySystem(failures=0)
    slow.RequestHandlerClass = SlowReceiver
    threading.Thread(target=slow.serve_forever, daemon=True).start()
    district = Cluster(tmp_path)
    district.init(COMMUNE, POLICE)
    url = f"http://127.0.0.1:{slow.server_address[1]}/incoming"
    notify = NotifySocket()
    monkeypatch.setenv("NOTIFY_SOCKET", notify.address)
    police_config = NodeConfig.load(district.config(POLICE), environ={"EXCHANGE_AGENCY_SYSTEM_WEBHOOK": url})
    with NodeContext.open(NodeConfig.load(district.config(COMMUNE))) as commune, \
            NodeContext.open(police_config) as police, EmbeddedTransport(police_config.embedded_transport) as transport:
        for agency in (COMMUNE, POLICE, "000.31.10.H49"):
            transport.declare(AgencyCode(agency))
        for sequence in (1, 2):
            submit(commune, birth_dossier(sequence))
        Dispatcher(commune, transport, Metrics()).dispatch()
        daemon = Daemon(police, transport, doors=[Webhooks()])
        runner = threading.Thread(target=daemon.run)
        runner.start()
        try:
            wait_until(lambda: len(slow.received) >= 2, 30, "both pushes, slowly")
            start = notify.pings("READY=1")[0]
            gap = notify.max_gap(start, time.monotonic())
        finally:
            daemon.stopping.set()
            runner.join(30)
            slow.shutdown()
            slow.server_close()
            notify.close()
    assert gap < 1.5
