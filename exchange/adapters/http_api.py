"""The local HTTP door for agency systems: submit a dossier, report a step done, read a dossier's
timeline, list overdue dossiers. JSON by default; XML for dossiers in and timelines out when asked.

The standard library's threading HTTP server behind a thin router: the API is small, local and
low-volume, and a framework would add a dependency and an event loop beside the node's own for
no gain. It binds to 127.0.0.1 unless configured otherwise, and every request but the OpenAPI
description needs ``Authorization: Bearer <token>``.

No client can stall or stop the node through it: at most ``http_max_connections`` connections are
served at once (more are answered 503 and closed, so idle ones cannot use up the descriptors);
every read times out after ``READ_TIMEOUT_S``, and a request must arrive whole within that time
(its body at ``MIN_BODY_RATE`` at least), or the connection is cut; a length that is missing for a
chunked body, not a number, or over the cap is answered at once and the body never read; and a
route that fails in any way answers 500 with a JSON error and one log event, never a traceback.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import errno
import hmac
import json
import re
import socket
import sys
import threading
import time
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from xml.sax.saxutils import escape

import structlog

from exchange.codes import DossierCode
from exchange.envelope.dossier import Supplement, media_type
from exchange.errors import ConfigError, ExchangeError, InvalidInput, UnknownDossier
from exchange.node.config import NodeConfig
from exchange.node.context import NodeContext
from exchange.node.doors import Door
from exchange.node.status import view
from exchange.node.workflow import DECISIONS, complete, submit, supplement, withdraw
from exchange.store.states import Result

log = structlog.get_logger(__name__)

MAX_BODY = 16 * 1024 * 1024
READ_TIMEOUT_S = 5.0
"""A read that waits longer drops the connection; so does a request head not whole by then."""
MIN_BODY_RATE = 64 * 1024
"""Bytes per second: a body gets ``READ_TIMEOUT_S`` plus its length at this rate to arrive."""
REFUSALS_LOGGED_EVERY_S = 1.0
"""Connections refused for want of a slot are logged as one event at most this often."""
LENGTH = re.compile(r"[0-9]{1,12}")
BUSY = (b"HTTP/1.0 503 Service Unavailable\r\nContent-Type: application/json\r\nConnection: close\r\n"
        b"Content-Length: 52\r\n\r\n" + b'{"error": "too many connections; try again shortly"}')
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
                             "type": "object", "properties": {"result": {"enum": [r.value for r in DECISIONS]},
                                                              "reason": {"type": "string"}}}}}},
                         "responses": {"200": {"description": "done; what was sent"}, "400": error, "404": error}}},
            "/dossiers/{code}/supplement": {
                "post": {"summary": "The applicant brought the documents a step asked for: the step resumes",
                         "parameters": [code],
                         "requestBody": {"required": True, "content": {"application/json": {"schema": {
                             "type": "object", "required": ["documents"], "properties": {"documents": {
                                 "type": "array", "minItems": 1, "items": {
                                     "type": "object", "required": ["file_name", "content_base64"],
                                     "properties": {"file_name": {"type": "string"}, "title": {"type": "string"},
                                                    "media_type": {"type": "string"},
                                                    "content_base64": {"type": "string"}}}}}}}}},
                         "responses": {"200": {"description": "supplemented; where the dossier went"},
                                       "400": error, "404": error}}},
            "/dossiers/{code}/withdraw": {
                "post": {"summary": "The applicant withdrew the dossier at this node's desk",
                         "parameters": [code],
                         "requestBody": {"required": True, "content": {"application/json": {"schema": {
                             "type": "object", "required": ["reason"], "properties": {"reason": {"type": "string"}}}}}},
                         "responses": {"200": {"description": "withdrawn; the agencies told"}, "400": error,
                                       "404": error}}},
        },
    }


class Handler(BaseHTTPRequestHandler):
    server: ApiServer
    default_request_version = "HTTP/1.0"  # so that even a refusal of garbage has a status line

    def setup(self) -> None:
        super().setup()
        self.connection.settimeout(self.server.read_timeout)  # every read and write on the connection

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        status = args[1] if len(args) > 1 else ""
        path = getattr(self, "path", "")  # unset when the request line did not parse
        log.info("http.request", method=self.command, path=path.split("?")[0], status=status)

    def log_error(self, format: str, *args: Any) -> None:  # noqa: A002
        log.info("http.request_dropped", client=self.client_address[0], error=format % args)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """What the standard library refuses (a bad request line, an unknown method), as JSON."""
        self.close_connection = True
        self._send(code, {"error": message or HTTPStatus(code).phrase})

    def do_GET(self) -> None:  # noqa: N802 - the base class's naming
        self._dispatch("GET")

    def do_POST(self) -> None:  # noqa: N802
        self._dispatch("POST")

    def _dispatch(self, method: str) -> None:
        if not self.server.arrived(self.connection):
            self.close_connection = True  # too slow: cut, and what came is not a whole request
            return
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
        body = self._body()
        if body is None:
            return
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
        except Exception as exc:  # noqa: BLE001 - a route's failure is its request's, never the node's
            log.error("http.route_failed", method=self.command, path=self.path.split("?")[0], exc_info=exc)
            self._send(HTTPStatus.INTERNAL_SERVER_ERROR,
                       {"error": f"the node failed on this request: {type(exc).__name__}: {exc}"})
            return
        self._send(status, payload)

    def _body(self) -> bytes | None:
        """The request's body; or None, the request answered, when its length is not one this API
        reads (chunked, not a number, negative, several, over the cap): such a body is never read."""
        given = self.headers.get_all("Content-Length") or []
        if "Transfer-Encoding" in self.headers:
            self._refuse(HTTPStatus.LENGTH_REQUIRED, "give the body's Content-Length (no chunked bodies)")
            return None
        if not given:
            return b""
        if len(set(given)) > 1 or not LENGTH.fullmatch(given[0].strip()):
            self._refuse(HTTPStatus.BAD_REQUEST, f"Content-Length must be a number of bytes, not {', '.join(given)!r}")
            return None
        length = int(given[0])
        if length > MAX_BODY:
            self._refuse(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"{length} bytes is more than {MAX_BODY}")
            return None
        self.server.watch(self.connection, self.server.read_timeout + length / MIN_BODY_RATE)
        body = self.rfile.read(length)
        if not self.server.arrived(self.connection) or len(body) < length:
            raise ConnectionAbortedError(f"the body ended after {len(body)} of {length} bytes")
        return body

    def _refuse(self, status: HTTPStatus, error: str) -> None:
        self.close_connection = True
        self._send(status, {"error": error})

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
    request = _json_object(body, '{"result": "refused", "reason": "..."}')
    result, reason = request.get("result", Result.ACCEPTED), request.get("reason")
    if result not in set(DECISIONS):
        raise InvalidInput(f"result must be one of {', '.join(DECISIONS)}, not {result!r}")
    if reason is not None and not isinstance(reason, str):
        raise InvalidInput("reason must be text")
    sent = complete(ctx, _code(params["code"]), params["step"], result, reason)
    return HTTPStatus.OK, {"code": params["code"], "step": params["step"], "result": result, "sent": sent}


def _supplement(handler: Handler, ctx: NodeContext, params: dict[str, str], body: bytes) -> tuple[int, Any]:
    example = '{"documents": [{"file_name": "giay-xac-nhan.pdf", "content_base64": "..."}]}'
    documents = _json_object(body, example).get("documents")
    if not isinstance(documents, list) or not documents:
        raise InvalidInput(f"give the documents the applicant brought: {example}")
    files = [_document(item, index) for index, item in enumerate(documents)]
    sent = supplement(ctx, _code(params["code"]), files)
    return HTTPStatus.OK, {"code": params["code"], "documents": len(files), "resumed": sent}


def _document(item: Any, index: int) -> Supplement:
    where = f"documents[{index}]"
    if not isinstance(item, dict):
        raise InvalidInput(f"{where} must be an object with file_name and content_base64")
    name, content = item.get("file_name"), item.get("content_base64")
    if not isinstance(name, str) or not name.strip():
        raise InvalidInput(f"{where}.file_name must be the file's name")
    if not isinstance(content, str):
        raise InvalidInput(f"{where}.content_base64 must be the file's content in base64")
    try:
        data = base64.b64decode(content, validate=True)
    except binascii.Error as exc:
        raise InvalidInput(f"{where}.content_base64 is not base64: {exc}") from None
    kind, title = item.get("media_type") or media_type(name), item.get("title")
    if not isinstance(kind, str) or not isinstance(title, str | None):
        raise InvalidInput(f"{where}.media_type and .title must be text")
    return Supplement(name.strip(), kind, data, title)


def _withdraw(handler: Handler, ctx: NodeContext, params: dict[str, str], body: bytes) -> tuple[int, Any]:
    reason = _json_object(body, '{"reason": "..."}').get("reason")
    if not isinstance(reason, str) or not reason.strip():
        raise InvalidInput('give the applicant\'s reason: {"reason": "..."}')
    told = withdraw(ctx, _code(params["code"]), reason)
    return HTTPStatus.OK, {"code": params["code"], "state": "withdrawn", "told": told}


def _json_object(body: bytes, example: str) -> dict[str, Any]:
    try:
        request = json.loads(body or b"{}")
    except ValueError:
        request = None
    if not isinstance(request, dict):
        raise InvalidInput(f"the body must be a JSON object such as {example}")
    return request


def _timeline(handler: Handler, ctx: NodeContext, params: dict[str, str], body: bytes) -> tuple[int, Any]:
    """The dossier's document, as `exchange status --dossier CODE --json` prints it (an array of
    one), or its steps as XML."""
    found = view(ctx, str(_code(params["code"])))
    return HTTPStatus.OK, (_timeline_xml(found[0]) if handler.wants_xml() else found)


def _timeline_xml(document: dict[str, Any]) -> bytes:
    rows = "".join(f'<Step id="{escape(s["step"])}" agency="{s["agency"]}" state="{s["state"]}" '
                   f'due="{s["due"] or ""}" done="{s["done_at"] or ""}"/>' for s in document["steps"])
    return (f'<?xml version="1.0" encoding="UTF-8"?><Timeline code="{document["code"]}" '
            f'procedure="{document["procedure"]}" state="{document["state"]}" '
            f'national_status="{document["national_status"]}" due="{document["due"] or ""}">{rows}</Timeline>'
            ).encode()


def _list(handler: Handler, ctx: NodeContext, params: dict[str, str], body: bytes) -> tuple[int, Any]:
    """Every dossier's document, as `exchange status --json` prints them; ?overdue=1 for those
    with a step overdue at this node."""
    return HTTPStatus.OK, view(ctx, overdue_only="overdue=1" in params.get("query", ""))


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
    ("POST", re.compile(r"/dossiers/(?P<code>[^/]+)/withdraw"), _withdraw),
    ("POST", re.compile(r"/dossiers/(?P<code>[^/]+)/supplement"), _supplement),
]


class ApiServer(ThreadingHTTPServer, Door):
    """The API door. Requests use the daemon's context (its rules, signer and opener, swapped in
    place by a reload), each over a database connection of its own, opened on the request's
    thread when it first needs one and closed when the request is done.

    Each connection takes one of ``max_connections`` slots (none free: answered 503 and closed)
    and gets a deadline for its request to arrive; between accepts (every half second) the
    serving thread cuts the connections past theirs."""

    daemon_threads = True
    request_queue_size = 128

    def __init__(self, node: NodeContext, host: str = "127.0.0.1", port: int = 0, *,
                 read_timeout: float = READ_TIMEOUT_S) -> None:
        self.check(node.config)
        self.read_timeout = read_timeout
        self.max_connections = node.config.http_max_connections
        self._slots = threading.BoundedSemaphore(self.max_connections)
        self._deadlines: dict[socket.socket, float] = {}
        self._cut: set[socket.socket] = set()
        self._watch_lock = threading.Lock()
        self._refused, self._refused_logged_at = 0, 0.0
        """Connections refused since the last log event, and when that was (on the serving thread)."""
        try:
            super().__init__((host, port), Handler)
        except OSError as exc:
            reason = "address in use" if exc.errno == errno.EADDRINUSE else exc.strerror
            raise ConfigError(f"the HTTP API cannot listen on {host}:{port}: {reason}") from None
        self.node = node
        self._local = threading.local()
        self._thread: threading.Thread | None = None

    @property
    def token(self) -> str:
        return self.node.config.token

    def check(self, config: NodeConfig) -> None:
        if not config.token:
            raise ConfigError("the HTTP API needs a token: set EXCHANGE_AGENCY_SYSTEM_TOKEN")
        if config.http_max_connections < 1:
            raise ConfigError(f"[agency_system] http_max_connections must be at least 1, "
                              f"not {config.http_max_connections}")

    # connections: a bounded number, each with a deadline for its request

    def process_request(self, request: Any, client_address: Any) -> None:
        """Serve the connection on a thread of its own if a slot is free; else answer 503 and close."""
        if not self._slots.acquire(blocking=False):
            self._refused += 1  # logged by service_actions, not once per connection
            with contextlib.suppress(OSError):
                request.setblocking(False)
                request.send(BUSY)
            self.shutdown_request(request)
            return
        self.watch(request, self.read_timeout)
        try:
            super().process_request(request, client_address)
        except BaseException:  # no thread for it: the slot is free again
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def shutdown_request(self, request: Any) -> None:
        with self._watch_lock:
            self._deadlines.pop(request, None)
            self._cut.discard(request)
        super().shutdown_request(request)

    def watch(self, connection: socket.socket, seconds: float) -> None:
        """Cut ``connection`` unless what it must send has arrived ``seconds`` from now."""
        with self._watch_lock:
            self._deadlines[connection] = time.monotonic() + seconds

    def arrived(self, connection: socket.socket) -> bool:
        """What ``connection`` had to send arrived: stop watching it; False if it was cut first."""
        with self._watch_lock:
            self._deadlines.pop(connection, None)
            return connection not in self._cut

    def service_actions(self) -> None:
        """Between accepts: cut each connection past its deadline (a blocked read then ends), and
        log what was refused."""
        now = time.monotonic()
        with self._watch_lock:
            late = [connection for connection, deadline in self._deadlines.items() if deadline <= now]
            for connection in late:
                del self._deadlines[connection]
                self._cut.add(connection)
                with contextlib.suppress(OSError):
                    connection.shutdown(socket.SHUT_RDWR)
        if late:
            log.info("http.too_slow", connections=len(late), seconds=self.read_timeout)
        if self._refused and now - self._refused_logged_at >= REFUSALS_LOGGED_EVERY_S:
            log.warning("http.too_many_connections", refused=self._refused, limit=self.max_connections)
            self._refused, self._refused_logged_at = 0, now

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
