"""The local HTTP door for agency systems: submit a dossier, report a step done, read a dossier's
timeline, list overdue dossiers. JSON by default; XML for dossiers in and timelines out when asked.

The standard library's threading HTTP server behind a thin router: the API is small, local and
low-volume, and a framework would add a dependency and an event loop beside the node's own for
no gain. It binds to 127.0.0.1 unless configured otherwise, and every request but the OpenAPI
description needs ``Authorization: Bearer <token>``.
"""

from __future__ import annotations

import hmac
import json
import re
import sys
import threading
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from xml.sax.saxutils import escape

import structlog

from exchange.codes import DossierCode
from exchange.errors import ConfigError, ExchangeError, InvalidInput, UnknownDossier
from exchange.node.config import NodeConfig
from exchange.node.context import NodeContext
from exchange.node.doors import Door
from exchange.node.status import dossier_list, timeline
from exchange.node.workflow import complete, submit
from exchange.store.states import Result

log = structlog.get_logger(__name__)

MAX_BODY = 16 * 1024 * 1024
Route = Callable[["Handler", NodeContext, dict[str, str], bytes], tuple[int, Any]]


def openapi() -> dict[str, Any]:
    """The OpenAPI 3.1 description of this API."""
    code = {"name": "code", "in": "path", "required": True, "schema": {"type": "string"},
            "example": "000.04.10.H49-261129-0001"}
    error = {"description": "what is wrong",
             "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
    xml_body = {"required": True, "content": {"application/xml": {"schema": {"type": "string"}}}}
    return {
        "openapi": "3.1.0",
        "info": {"title": "exchange node: agency-system API", "version": "1"},
        "components": {
            "securitySchemes": {"token": {"type": "http", "scheme": "bearer"}},
            "schemas": {"Error": {"type": "object", "properties": {"error": {"type": "string"}}}},
        },
        "security": [{"token": []}],
        "paths": {
            "/dossiers": {
                "post": {"summary": "Submit a dossier received at this node's desk",
                         "requestBody": xml_body,
                         "responses": {"201": {"description": "submitted; the dossier code"}, "400": error,
                                       "401": error}},
                "get": {"summary": "List dossiers at this node; ?overdue=1 for overdue ones only",
                        "parameters": [{"name": "overdue", "in": "query", "schema": {"type": "string"}}],
                        "responses": {"200": {"description": "dossiers"}, "401": error}}},
            "/dossiers/{code}": {
                "get": {"summary": "A dossier's timeline (JSON, or XML with Accept: application/xml)",
                        "parameters": [code], "responses": {"200": {"description": "timeline"}, "404": error}}},
            "/dossiers/{code}/steps/{step}/done": {
                "post": {"summary": "The local agency finished a step",
                         "parameters": [code, {"name": "step", "in": "path", "required": True,
                                               "schema": {"type": "string"}}],
                         "requestBody": {"content": {"application/json": {"schema": {
                             "type": "object", "properties": {"result": {"enum": [r.value for r in Result]}}}}}},
                         "responses": {"200": {"description": "done; what was sent"}, "400": error, "404": error}}},
        },
    }


class Handler(BaseHTTPRequestHandler):
    server: ApiServer

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        status = args[1] if len(args) > 1 else ""
        log.info("http.request", method=self.command, path=self.path.split("?")[0], status=status)

    def do_GET(self) -> None:  # noqa: N802 - the base class's naming
        self._dispatch("GET")

    def do_POST(self) -> None:  # noqa: N802
        self._dispatch("POST")

    def _dispatch(self, method: str) -> None:
        path, _, query = self.path.partition("?")
        if method == "GET" and path == "/openapi.json":
            self._send(HTTPStatus.OK, openapi())
            return
        if not self._authorized():
            self._send(HTTPStatus.UNAUTHORIZED, {"error": "give Authorization: Bearer <token>"})
            return
        for route_method, pattern, route in ROUTES:
            match = pattern.fullmatch(path)
            if match and route_method == method:
                self._run(route, {**match.groupdict(), "query": query})
                return
        self._send(HTTPStatus.NOT_FOUND, {"error": f"no {method} {path}; see /openapi.json"})

    def _authorized(self) -> bool:
        given = self.headers.get("Authorization", "")
        return hmac.compare_digest(given.encode(), f"Bearer {self.server.token}".encode())

    def _run(self, route: Route, params: dict[str, str]) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            self._send(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, {"error": f"more than {MAX_BODY} bytes"})
            return
        body = self.rfile.read(length) if length else b""
        try:
            status, payload = route(self, self.server.context(), params, body)
        except UnknownDossier as exc:
            self._send(HTTPStatus.NOT_FOUND, {"error": str(exc)})
            return
        except InvalidInput as exc:
            self._send(HTTPStatus.BAD_REQUEST, {"error": str(exc)})
            return
        except ExchangeError as exc:
            self._send(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": str(exc)})
            return
        self._send(status, payload)

    def _send(self, status: int, payload: Any) -> None:
        if isinstance(payload, bytes):
            data, kind = payload, "application/xml; charset=utf-8"
        else:
            data, kind = json.dumps(payload, ensure_ascii=False, indent=1).encode(), "application/json; charset=utf-8"
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def wants_xml(self) -> bool:
        return "xml" in self.headers.get("Accept", "")


def _submit(handler: Handler, ctx: NodeContext, params: dict[str, str], body: bytes) -> tuple[int, Any]:
    code = submit(ctx, body, source="request body")
    return HTTPStatus.CREATED, {"code": str(code)}


def _done(handler: Handler, ctx: NodeContext, params: dict[str, str], body: bytes) -> tuple[int, Any]:
    try:
        result = json.loads(body or b"{}").get("result", Result.ACCEPTED)
    except (ValueError, AttributeError):
        raise InvalidInput("the body must be JSON such as {\"result\": \"accepted\"}") from None
    if result not in set(Result):
        raise InvalidInput(f"result must be accepted or refused, not {result!r}")
    sent = complete(ctx, _code(params["code"]), params["step"], result)
    return HTTPStatus.OK, {"code": params["code"], "step": params["step"], "result": result, "sent": sent}


def _timeline(handler: Handler, ctx: NodeContext, params: dict[str, str], body: bytes) -> tuple[int, Any]:
    found = timeline(ctx, str(_code(params["code"])))
    return HTTPStatus.OK, (_timeline_xml(found) if handler.wants_xml() else found)


def _timeline_xml(timeline: dict[str, Any]) -> bytes:
    rows = "".join(f'<Step id="{escape(s["step"])}" agency="{s["agency"]}" state="{s["state"]}" '
                   f'due="{s["due"] or ""}" done="{s["done_at"] or ""}"/>' for s in timeline["steps"])
    return (f'<?xml version="1.0" encoding="UTF-8"?><Timeline code="{timeline["code"]}" '
            f'procedure="{timeline["procedure"]}" state="{timeline["state"]}">{rows}</Timeline>').encode()


def _list(handler: Handler, ctx: NodeContext, params: dict[str, str], body: bytes) -> tuple[int, Any]:
    return HTTPStatus.OK, dossier_list(ctx, overdue_only="overdue=1" in params.get("query", ""))


def _code(text: str) -> DossierCode:
    try:
        return DossierCode(text)
    except ValueError as exc:
        raise InvalidInput(str(exc)) from None


ROUTES: list[tuple[str, re.Pattern[str], Route]] = [
    ("POST", re.compile(r"/dossiers"), _submit),
    ("GET", re.compile(r"/dossiers"), _list),
    ("GET", re.compile(r"/dossiers/(?P<code>[^/]+)"), _timeline),
    ("POST", re.compile(r"/dossiers/(?P<code>[^/]+)/steps/(?P<step>[a-z0-9_\-]+)/done"), _done),
]


class ApiServer(ThreadingHTTPServer, Door):
    """The API door. Requests use the daemon's context (its rules, signer and opener, swapped in
    place by a reload), each over a database connection of its own, opened on the request's
    thread when it first needs one and closed when the request is done."""

    daemon_threads = True

    def __init__(self, node: NodeContext, host: str = "127.0.0.1", port: int = 0) -> None:
        self.check(node.config)
        super().__init__((host, port), Handler)
        self.node = node
        self._local = threading.local()
        self._thread: threading.Thread | None = None

    @property
    def token(self) -> str:
        return self.node.config.token

    def check(self, config: NodeConfig) -> None:
        if not config.token:
            raise ConfigError("the HTTP API needs a token: set EXCHANGE_AGENCY_SYSTEM_TOKEN")

    def context(self) -> NodeContext:
        """The calling request's context (``for_thread``), opened on first use."""
        ctx: NodeContext | None = getattr(self._local, "ctx", None)
        if ctx is None:
            ctx = self._local.ctx = self.node.for_thread()
        return ctx

    def finish_request(self, request: Any, client_address: Any) -> None:
        """Serve one connection on its thread, then close the context it opened, if any."""
        try:
            super().finish_request(request, client_address)
        finally:
            ctx: NodeContext | None = getattr(self._local, "ctx", None)
            self._local.ctx = None
            if ctx is not None:
                ctx.close()

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A request that failed outside the routes: a client that went away is an event, not a
        traceback; anything else is logged as one structured event (socketserver would print a
        traceback to stderr, into the node's JSON log)."""
        error = sys.exc_info()[1]
        if isinstance(error, ConnectionError | TimeoutError):
            log.info("http.client_gone", client=client_address[0], error=type(error).__name__)
            return
        log.error("http.request_failed", client=client_address[0], exc_info=error)

    def start(self) -> None:
        self._thread = threading.Thread(target=self.serve_forever, name="http-api", daemon=True)
        self._thread.start()
        log.info("http.listening", host=self.server_address[0], port=self.server_address[1])

    def stop(self) -> None:
        if self._thread is not None:
            self.shutdown()
            self._thread.join()
            self._thread = None
        self.server_close()
