"""A district in a temporary folder: a CA, node directories, and node daemons as real processes."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from exchange.cli import main
from exchange.codes import AgencyCode, ProcedureCode
from exchange.demo import samples
from tests import agencies
from tests.transport_helpers import BROKER, delete_queues, require_broker

RULES = Path(__file__).resolve().parent / "rules" / "seed-2019"
EXE = str(Path(sys.executable).parent / "exchange")
COMMUNE, POLICE, INSURANCE = str(agencies.COMMUNE), str(agencies.POLICE), str(agencies.INSURANCE)
"""As text: node directories, command lines and ``status --json`` name agencies by their code."""
BIRTH = str(agencies.BIRTH)


def cli(*argv: str | Path) -> int:
    return main([str(a) for a in argv])


def wait_until(condition: Callable[[], bool], timeout: float = 60, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def log_events(path: Path, start: int = 0) -> list[dict[str, Any]]:
    """The structured events in a node's log from byte ``start`` on: the JSON lines the daemon
    writes to stderr when it is not on a tty. Other lines, and a line still being written, are skipped."""
    found: list[dict[str, Any]] = []
    with path.open("rb") as log:
        log.seek(start)
        for line in log:
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if isinstance(event, dict):
                found.append(event)
    return found


def events_named(path: Path, name: str, start: int = 0) -> list[dict[str, Any]]:
    return [event for event in log_events(path, start) if event.get("event") == name]


class NotifySocket:
    """A NOTIFY_SOCKET of the test's own (an abstract datagram socket, as systemd's is): every
    sd_notify state a node sends, with the monotonic time it arrived. Start the node with
    ``NOTIFY_SOCKET=notify.address``; one socket per node tells their pings apart."""

    def __init__(self) -> None:
        name = f"exchange-test-{uuid.uuid4().hex}"
        self.address = f"@{name}"
        self.states: list[tuple[float, str]] = []
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(f"\0{name}")
        self._sock.settimeout(0.1)
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._listen, daemon=True)
        self._thread.start()

    def _listen(self) -> None:
        while not self._closed.is_set():
            try:
                data = self._sock.recv(4096)
            except TimeoutError:
                continue
            self.states.append((time.monotonic(), data.decode()))

    def pings(self, state: str = "WATCHDOG=1") -> list[float]:
        return [at for at, sent in list(self.states) if sent == state]

    def max_gap(self, start: float, end: float) -> float:
        """The longest time without a watchdog ping between the monotonic times ``start`` and ``end``."""
        moments = [start, *(at for at in self.pings() if start < at < end), end]
        return max(b - a for a, b in zip(moments, moments[1:], strict=False))

    def close(self) -> None:
        self._closed.set()
        self._thread.join()
        self._sock.close()


@dataclass
class Cluster:
    root: Path
    broker: str = ""
    rules: Path = RULES
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def config(self, agency: str) -> Path:
        return self.root / "nodes" / agency / "node.toml"

    def init(self, *agencies: str) -> None:
        if not (self.root / "ca").exists():
            assert cli("pki", "init-ca", "--out", self.root / "ca") == 0
        for agency in agencies:
            argv = ["node", "init", "--agency", agency, "--ca", self.root / "ca", "--rules", self.rules,
                    "--out", self.root / "nodes" / agency]
            if self.broker:
                argv += ["--broker", self.broker]
            assert cli(*argv) == 0

    def init_from_requests(self, *agencies: str, days: int | None = None) -> None:
        """Nodes set up as a province without handing out its CA key does it: each agency makes its
        key and request (``pki request``), the CA issues from the request (``pki issue --csr``, valid
        ``days``), and ``node init --ca-cert`` gets only the CA's certificate and CRL, copied apart
        from the CA's folder."""
        if not (self.root / "ca").exists():
            assert cli("pki", "init-ca", "--out", self.root / "ca") == 0
        public = self.root / "ca-public"
        public.mkdir(exist_ok=True)
        (public / "ca.pem").write_bytes((self.root / "ca" / "ca.pem").read_bytes())
        assert cli("pki", "crl", "--ca", self.root / "ca", "--out", public / "crl.pem") == 0
        for agency in agencies:
            request = self.root / "requests" / agency
            assert cli("pki", "request", "--agency", agency, "--out", request) == 0
            assert cli("pki", "issue", "--ca", self.root / "ca", "--csr", request / "request.csr", "--out", request,
                       *(("--days", str(days)) if days else ())) == 0
            argv = ["node", "init", "--agency", agency, "--ca-cert", public / "ca.pem", "--cert", request / "cert.pem",
                    "--key", request / "key.pem", "--crl", public / "crl.pem", "--rules", self.rules,
                    "--out", self.root / "nodes" / agency]
            if self.broker:
                argv += ["--broker", self.broker]
            assert cli(*argv) == 0

    def log(self, agency: str) -> Path:
        return self.root / f"{agency}.log"

    def start(self, agency: str, fault: str | None = None, **overrides: str) -> subprocess.Popen[bytes]:
        """Start the node and return once it logged its ``node.started`` event (or exited)."""
        env = {**os.environ, **overrides}
        env.pop("EXCHANGE_FAULT", None)
        if fault:
            env["EXCHANGE_FAULT"] = fault
        with self.log(agency).open("ab") as log:
            start = log.tell()  # a restarted node appends: only this run's events count
            process = subprocess.Popen([EXE, "run", "--config", str(self.config(agency))], stdout=log,
                                       stderr=subprocess.STDOUT, env=env)
        self.processes[agency] = process
        wait_until(lambda: bool(events_named(self.log(agency), "node.started", start))
                   or process.poll() is not None, 60, f"{agency} to start")
        return process

    def wait_for_event(self, agency: str, name: str, start: int = 0, timeout: float = 30) -> dict[str, Any]:
        """The first event ``name`` the node logged from byte ``start`` of its log on, waiting for it."""
        wait_until(lambda: bool(events_named(self.log(agency), name, start)), timeout, f"{name} at {agency}")
        return events_named(self.log(agency), name, start)[0]

    def stop(self, agency: str) -> int:
        process = self.processes.pop(agency)
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        return process.wait(timeout=60)

    def stop_all(self) -> None:
        for agency in list(self.processes):
            process = self.processes.pop(agency)
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()

    @classmethod
    def on(cls, kind: str, root: Path, *agencies: str) -> Cluster:
        """A district on the embedded transport, or on the host's RabbitMQ with its agencies'
        queues emptied first (a test parametrized by transport kind)."""
        broker = ""
        if kind == "rabbitmq":
            require_broker()
            broker = BROKER
            delete_queues(*(AgencyCode(a) for a in agencies))
        return cls(root, broker)

    def finish_birth_route(self, codes: list[str], timeout: float = 60) -> None:
        """Do every step of the birth route for ``codes`` where and when it is ready."""
        for agency, step in ((POLICE, "residence"), (INSURANCE, "insurance")):
            wait_until(lambda a=agency, s=step: self.ready(a, s) >= set(codes), timeout, f"{step} at {agency}")
            for code in codes:
                self.done(agency, code, step)
        wait_until(lambda: self.ready(COMMUNE, "return") >= set(codes), timeout, "both branches back at the commune")
        for code in codes:
            self.done(COMMUNE, code, "return")

    def submit(self, sequence: int, procedure: str = BIRTH, agency: str = COMMUNE) -> str:
        path = self.root / f"dossier-{sequence}.xml"
        spec = samples.SampleSpec(AgencyCode(agency), ProcedureCode(procedure), size_kb=4, sequence=sequence)
        path.write_bytes(samples.to_bytes(samples.sample_dossier(spec)))
        result = subprocess.run([EXE, "submit", "--config", str(self.config(agency)), str(path)],
                                capture_output=True, text=True, timeout=60, check=True)
        return result.stdout.strip()

    def status(self, agency: str) -> list[dict[str, Any]]:
        result = subprocess.run([EXE, "status", "--config", str(self.config(agency)), "--json"],
                                capture_output=True, text=True, timeout=60, check=True)
        rows: list[dict[str, Any]] = json.loads(result.stdout)
        return rows

    def ready(self, agency: str, step: str) -> set[str]:
        return {row["code"] for row in self.status(agency) if step in row["pending_here"]}

    def done(self, agency: str, dossier: str, step: str, result: str = "accepted") -> None:
        subprocess.run([EXE, "done", "--config", str(self.config(agency)), "--dossier", dossier, "--step", step,
                        "--result", result], capture_output=True, text=True, timeout=60, check=True)

    def delivered(self, agency: str) -> list[Path]:
        return sorted((self.root / "nodes" / agency / "state" / "outbox").glob("*.xml"))

    def verify_and_export(self, agency: str) -> Path:
        assert cli("audit", "verify", "--config", self.config(agency)) == 0
        bundle = self.root / f"{agency}.bundle"
        assert cli("audit", "export", "--config", self.config(agency), "--out", bundle) == 0
        return bundle
