"""Requests per second of the agency-system HTTP API, against a bare server in the same run.

    python benchmarks/http_api.py [--requests 300] [--rounds 5]

The API answers each request over the daemon's context (rules, signer, opener) with a database
connection of the request's own. Three figures, medians of rounds, one process:

- the bare standard-library server answering a fixed JSON body: the floor of HTTP itself here;
- the API's timeline request (``GET /dossiers/{code}``) on a node holding a few dossiers;
- opening a whole node context (``NodeContext.open``: rules parsed, keys and CA loaded), which is
  what every request used to pay before it shared the daemon's.
"""

from __future__ import annotations

import argparse
import http.client
import json
import logging
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from exchange import logs
from exchange.adapters.http_api import ApiServer
from exchange.codes import AgencyCode, ProcedureCode
from exchange.demo import samples
from exchange.envelope import pki
from exchange.node.config import NodeConfig
from exchange.node.context import NodeContext
from exchange.node.provisioning import init_node
from exchange.node.workflow import submit
from exchange.rules.load import load

RULES_DIR = Path(__file__).resolve().parent.parent / "tests" / "rules" / "seed-2019"
COMMUNE = AgencyCode("000.04.10.H49")
TOKEN = "bench-token"


class Bare(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - the base class's naming
        data = json.dumps({"code": "x", "steps": []}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass


def serve(server: ThreadingHTTPServer) -> int:
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return int(server.server_address[1])


def request_rate(port: int, path: str, n: int) -> float:
    """Requests per second, one keep-alive-free request after another, as an agency system polls."""
    start = time.perf_counter()
    for _ in range(n):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("GET", path, headers={"Authorization": f"Bearer {TOKEN}"})
        response = conn.getresponse()
        response.read()
        assert response.status == 200, response.status
        conn.close()
    return n / (time.perf_counter() - start)


def median_of(rounds: int, measure: Callable[[], float]) -> float:
    return statistics.median(measure() for _ in range(rounds))


def node(root: Path) -> tuple[NodeConfig, str]:
    ca = pki.init_ca(root / "ca", "Bench CA")
    path = init_node(COMMUNE, ca, RULES_DIR, load(RULES_DIR), "", root / "node")
    config = NodeConfig.load(path, environ={"EXCHANGE_AGENCY_SYSTEM_TOKEN": TOKEN})
    with NodeContext.open(config) as ctx:
        codes = [submit(ctx, samples.to_bytes(samples.sample_dossier(
            samples.SampleSpec(COMMUNE, ProcedureCode("2.000986"), size_kb=4, sequence=i)))) for i in range(1, 6)]
    return config, str(codes[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    logs.configure("console", level=logging.WARNING)  # one line per request would time the terminal
    with tempfile.TemporaryDirectory() as tmp:
        config, code = node(Path(tmp))
        bare = ThreadingHTTPServer(("127.0.0.1", 0), Bare)
        bare_rate = median_of(args.rounds, lambda: request_rate(serve(bare), "/", args.requests))
        with NodeContext.open(config) as ctx:
            api = ApiServer(ctx)
            port = serve(api)
            api_rate = median_of(args.rounds, lambda: request_rate(port, f"/dossiers/{code}", args.requests))
            api.shutdown()
        opens = []
        for _ in range(args.rounds * 5):
            start = time.perf_counter()
            NodeContext.open(config).close()
            opens.append(time.perf_counter() - start)
        bare.shutdown()
    open_ms = statistics.median(opens) * 1000
    print(f"bare server:             {bare_rate:8.0f} requests/s   ({1000 / bare_rate:.2f} ms each)")
    print(f"API timeline request:    {api_rate:8.0f} requests/s   ({1000 / api_rate:.2f} ms each)"
          f"   = {api_rate / bare_rate:.2f} x bare")
    print(f"a node context opened:   {open_ms:8.2f} ms        (what each request paid before it shared"
          f" the daemon's: {(1000 / api_rate + open_ms) / (1000 / api_rate):.1f} x today's request)")


if __name__ == "__main__":
    main()
