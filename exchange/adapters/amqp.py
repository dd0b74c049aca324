"""RabbitMQ through pika: the production transport.

Topology (declared idempotently, and again after every reconnect):

- ``exchange.envelopes``: a durable topic exchange; routing key = the recipient's agency code;
- ``exchange.agency.<code>``: one durable quorum queue per agency (a classic durable queue if the
  broker cannot make a quorum one), bound with its code; ``….dead`` beside it for dead letters;
- ``exchange.delay.<ms>``: for each delay bucket a fanout exchange and a classic queue whose
  ``x-message-ttl`` dead-letters messages back to ``exchange.envelopes`` with their routing key.
  No plugin needed.

One I/O thread owns an asynchronous pika connection: publishes are pipelined with publisher
confirms and ``mandatory`` (a return means no queue: ``Unroutable``), deliveries are buffered
for the application thread, and acks cross back with ``add_callback_threadsafe``, so heartbeats
keep flowing however long the application works. When the connection drops the epoch advances:
pending publishes fail (the caller's outbox retries them), buffered deliveries are discarded
(the broker redelivers them) and acks of the old epoch raise ``StaleDelivery``. Short
administrative work (declaring, reading dead letters) uses a short blocking connection from the
caller's thread. pika's exceptions never leave this module.

Reconnection never stops while the transport is open. Each outage (from the loss of an
established connection, or from the start) has its own retry budget, ``reconnect_for``: within
it the I/O thread retries with exponential backoff and jitter (tenacity), each failure logged as
a warning (``amqp.reconnect``); once it is spent the thread keeps trying, by then at the maximum
backoff, each failure logged as an error (``amqp.reconnect_failing``). A connection that is
established ends the outage; the next outage starts a fresh budget and backoff. ``health()``
tells the node whether the transport is connected, since when, and the last error.

While the transport is not connected nothing waits for it: ``publish``, ``publish_many``,
``declare`` and ``consume`` raise ``TransportUnavailable`` at once, and the caller (the daemon's
loop, an outbox) tries again later. Only the constructor waits, for the first connection attempt
to end (at most ``connect_timeout``); it succeeds whether or not the broker answered, and keeps
connecting in the background, except when the broker refuses the login (``AccessRefused``) or
when its TLS certificate is refused (``BrokerUntrusted``: not issued by the configured CA, or not
for the URL's host): a configuration error, not an outage.

A transport may be given several URLs, the nodes of one RabbitMQ cluster (or brokers that hold
the same topology), in order of preference. Each connection attempt tries them in turn from the
preferred one and keeps the first that answers; when an established connection is lost, the next
URL becomes the preferred one, so that a node whose broker died fails over to the next at once,
instead of waiting for the dead one to time out first. Short administrative connections try the
preferred one first too. The TLS and login settings apply to every URL (each URL's own host is
the name its certificate must carry). Agency queues are quorum queues, which a cluster replicates
on its nodes and which survive the loss of a minority of them; ``quorum=False`` declares classic
queues, for a single broker.

With ``amqps://`` the broker's certificate and host name are verified against ``ca_file`` (the
system store if none), and the node presents ``cert_file``/``key_file`` when given; with
``external`` it logs in with that certificate (SASL EXTERNAL: the broker's
``rabbitmq_auth_mechanism_ssl`` takes the user name from the certificate) instead of a password.
"""

from __future__ import annotations

import bisect
import contextlib
import datetime as dt
import queue
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pika
import pika.exceptions as px
import structlog
import tenacity
from pika.adapters.blocking_connection import BlockingChannel
from pika.channel import Channel
from pika.spec import Basic, BasicProperties

from exchange import clock
from exchange.codes import AgencyCode
from exchange.errors import (
    AccessRefused,
    BrokerUntrusted,
    ConfigError,
    PublishRejected,
    StaleDelivery,
    TransportError,
    TransportUnavailable,
    Unroutable,
)
from exchange.node.transport import (
    DEFAULT_PREFETCH,
    Closing,
    DeadLetter,
    Delivery,
    Message,
    TransportHealth,
)

log = structlog.get_logger(__name__)

EXCHANGE = "exchange.envelopes"
QUEUE_PREFIX = "exchange.agency."
DEAD_SUFFIX = ".dead"
DELAY_PREFIX = "exchange.delay."
DELAY_BUCKETS_MS = (1_000, 2_000, 5_000, 10_000, 20_000, 30_000, 60_000, 120_000, 300_000, 600_000,
                    1_800_000, 3_600_000, 21_600_000, 86_400_000)
"""Delays round up to one of these, so retries with jitter share a few queues, not thousands."""

HEARTBEAT_S = 30
BLOCKED_TIMEOUT_S = 60
CONNECT_TIMEOUT_S = 10.0
AMQP_HEADER = b"AMQP\x00\x00\x09\x01"
"""What a client sends first: AMQP 0-9-1."""
PUBLISH_TIMEOUT_S = 30.0
RECONNECT_FOR_S = 600.0
"""Each outage's retry budget: reconnection failures are warnings for this long, then errors
(reconnection goes on either way, at the maximum backoff)."""
RECONNECT_FIRST_S = 0.2
RECONNECT_MAX_S = 15.0
"""The backoff between reconnection attempts: ``RECONNECT_FIRST_S`` doubling up to this, plus up
to ``RECONNECT_JITTER_S`` of jitter."""
RECONNECT_JITTER_S = 1.0


def reconnect_wait(maximum: float = RECONNECT_MAX_S) -> tenacity.wait.wait_base:
    """The one reconnection backoff: exponential from ``RECONNECT_FIRST_S`` to ``maximum``, with jitter."""
    return (tenacity.wait_exponential(multiplier=RECONNECT_FIRST_S, max=maximum)
            + tenacity.wait_random(0, min(RECONNECT_JITTER_S, maximum)))


def queue_name(agency: AgencyCode | str) -> str:
    return f"{QUEUE_PREFIX}{agency}"


def dead_queue_name(agency: AgencyCode | str) -> str:
    return queue_name(agency) + DEAD_SUFFIX


def delay_bucket(delay: float) -> int:
    """The delay bucket in milliseconds that ``delay`` seconds rounds up to."""
    wanted = int(delay * 1000)
    index = bisect.bisect_left(DELAY_BUCKETS_MS, wanted)
    return DELAY_BUCKETS_MS[min(index, len(DELAY_BUCKETS_MS) - 1)]


class _ConnectionLost(Exception):
    """Internal: no connection could be established (the attempt is retried)."""


@dataclass(frozen=True)
class _Outage:
    """One outage of the I/O thread's connection: when it began, and its retry budget."""

    began: float
    budget: float

    def overdue(self) -> bool:
        return time.monotonic() - self.began > self.budget


class _Batch:
    """Confirms awaited for one publish call. Settled only on the I/O thread; waited on by the
    caller. A return (no queue) records the error; the broker's ack that follows settles it."""

    def __init__(self, size: int) -> None:
        self.remaining = size
        self.error: TransportError | None = None
        self.done = threading.Event()

    def settle(self, error: TransportError | None = None) -> None:
        if error is not None and self.error is None:
            self.error = error
        self.remaining -= 1
        if self.remaining <= 0:
            self.done.set()

    def fail(self, error: TransportError) -> None:
        """Every message at once: the batch was never handed to a channel."""
        if self.error is None:
            self.error = error
        self.remaining = 0
        self.done.set()


def _tls_refusal(exc: BaseException) -> TransportError | None:
    """The TLS refusal somewhere in ``exc`` (pika wraps the handshake's error in its own, in
    their arguments, ``exceptions`` or ``exception``): the broker's certificate refused by us, or
    ours by it."""
    seen: list[BaseException] = [exc]
    for error in seen:
        if isinstance(error, ssl.SSLCertVerificationError):
            return BrokerUntrusted(f"the broker's TLS certificate is refused: {error.verify_message or error}; "
                                   "check [transport] broker_ca (the CA that issued it) and the host "
                                   "name in the broker URL (it must be one the certificate names)")
        if "TLSV1_ALERT_UNKNOWN_CA" in str(error) or "TLSV1_ALERT_BAD_CERTIFICATE" in str(error):
            return AccessRefused("the broker refused this node's TLS client certificate (not issued by a CA "
                                 "it trusts): check [transport] broker_cert and the broker's cacertfile")
        for inner in (*error.args, *getattr(error, "exceptions", ()), getattr(error, "exception", None),
                      error.__cause__, error.__context__):
            if isinstance(inner, BaseException) and inner not in seen and len(seen) < 20:
                seen.append(inner)
    return None


def _refusal(error: BaseException, params: pika.URLParameters, timeout: float) -> TransportError | None:
    """The TLS refusal behind a failed connection to ``params``: named in ``error``, or else, over
    TLS, heard by a fresh handshake and one read.

    Over TLS 1.3 a broker judges the client certificate after the handshake and answers with an
    alert; pika, already writing the protocol header, may see only the connection's end (an
    SSL EOF on its send) and never read the alert."""
    named = _tls_refusal(error)
    if named is not None or params.ssl_options is None:
        return named
    options = params.ssl_options
    try:
        with socket.create_connection((params.host, params.port), timeout) as raw, \
                options.context.wrap_socket(raw, server_hostname=options.server_hostname) as tls:
            tls.settimeout(timeout)
            tls.sendall(AMQP_HEADER)
            tls.recv(1)
    except OSError as exc:  # ssl.SSLError among them
        return _tls_refusal(exc)
    return None


@contextlib.contextmanager
def translated() -> Iterator[None]:
    """Map pika's exceptions to the project's, most specific first."""
    try:
        yield
    except ssl.SSLError as exc:  # pika re-raises the handshake's own error from BlockingConnection
        raise _tls_refusal(exc) or TransportUnavailable(f"TLS with the broker failed: {exc}") from exc
    except (px.ProbableAuthenticationError, px.ProbableAccessDeniedError, px.AuthenticationError) as exc:
        raise AccessRefused(f"the broker refused the login: {exc}") from exc
    except (px.ChannelClosedByBroker, px.ConnectionClosedByBroker) as exc:
        if exc.reply_code in (403, 530):  # ACCESS_REFUSED, NOT_ALLOWED (a vhost it may not use)
            raise AccessRefused(f"the broker refused access: {exc.reply_text}") from exc
        if exc.reply_code == 404 and isinstance(exc, px.ChannelClosedByBroker):
            raise Unroutable(f"not found on the broker: {exc.reply_text}") from exc
        if isinstance(exc, px.ConnectionClosedByBroker):
            raise TransportUnavailable(f"the broker closed the connection: {exc.reply_code} "
                                       f"{exc.reply_text}") from exc
        raise TransportError(f"the broker closed the channel: {exc.reply_code} {exc.reply_text}") from exc
    except px.UnroutableError as exc:
        raise Unroutable(f"no queue for the message: the broker returned it: {exc}") from exc
    except px.NackError as exc:
        raise PublishRejected(f"the broker refused the message (nack): {exc}") from exc
    except px.AMQPConnectionError as exc:
        raise _tls_refusal(exc) or TransportUnavailable(f"cannot reach the broker: {exc!r}") from exc
    except (px.AMQPError, px.ChannelError, px.ReentrancyError) as exc:
        raise TransportError(f"broker error: {exc!r}") from exc


@dataclass(frozen=True)
class BrokerSettings:
    url: str | Sequence[str]
    """The broker's URL, or the URLs of a cluster's nodes in order of preference."""
    ca_file: str | Path | None = None
    """The CA that signed the broker's certificate, for ``amqps://`` (else the system's)."""
    connect_timeout: float = CONNECT_TIMEOUT_S
    publish_timeout: float = PUBLISH_TIMEOUT_S
    reconnect_for: float = RECONNECT_FOR_S
    """Each outage's retry budget (see the module's docstring)."""
    reconnect_max: float = RECONNECT_MAX_S
    """The longest wait between two reconnection attempts."""
    cert_file: str | Path | None = None
    """The client certificate the node presents over ``amqps://`` (none if not given)."""
    key_file: str | Path | None = None
    external: bool = False
    """Log in with the client certificate (SASL EXTERNAL) instead of the URL's user and password."""
    quorum: bool = True
    """Agency queues as quorum queues (replicated in a cluster), else classic ones."""

    @property
    def urls(self) -> tuple[str, ...]:
        return (self.url,) if isinstance(self.url, str) else tuple(self.url)

    def parameters(self) -> pika.URLParameters:
        """pika's parameters for the first URL."""
        return self.all_parameters()[0]

    def all_parameters(self) -> tuple[pika.URLParameters, ...]:
        """pika's parameters for every URL, in order; a malformed URL or an unreadable CA is a ConfigError."""
        if not self.urls:
            raise ConfigError("no broker URL given")
        return tuple(self._parameters(url) for url in self.urls)

    def _parameters(self, url: str) -> pika.URLParameters:
        try:
            params = pika.URLParameters(url)
        except (ValueError, IndexError) as exc:
            raise ConfigError(f"not a broker URL (amqp://user:password@host:port/vhost): {exc}") from exc
        params.heartbeat = HEARTBEAT_S
        params.blocked_connection_timeout = BLOCKED_TIMEOUT_S
        params.connection_attempts = 1
        params.socket_timeout = self.connect_timeout
        if url.startswith("amqps://"):
            params.ssl_options = pika.SSLOptions(self._tls(), params.host)
        elif self.external:
            raise ConfigError("a certificate login (EXTERNAL) needs TLS: the broker URL must be amqps://")
        if self.external:
            if self.cert_file is None:
                raise ConfigError("a certificate login (EXTERNAL) needs a client certificate and key")
            params.credentials = pika.credentials.ExternalCredentials()
        return params

    def _tls(self) -> ssl.SSLContext:
        """Certificate and host name verification against ``ca_file``, and the client certificate."""
        try:
            context = ssl.create_default_context(cafile=self.ca_file)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"cannot load the broker's CA {self.ca_file}: {exc}") from exc
        if self.cert_file is not None:
            try:
                context.load_cert_chain(self.cert_file, self.key_file)
            except (OSError, ssl.SSLError) as exc:
                raise ConfigError(f"cannot load the client certificate {self.cert_file} and key "
                                  f"{self.key_file} for the broker: {exc}") from exc
        return context


class AmqpTransport(Closing):
    """The Transport port over RabbitMQ."""

    def __init__(self, url: str | Sequence[str], *, ca_file: str | Path | None = None,
                 connect_timeout: float = CONNECT_TIMEOUT_S, publish_timeout: float = PUBLISH_TIMEOUT_S,
                 reconnect_for: float = RECONNECT_FOR_S, reconnect_max: float = RECONNECT_MAX_S,
                 cert_file: str | Path | None = None, key_file: str | Path | None = None, external: bool = False,
                 quorum: bool = True) -> None:
        self.settings = BrokerSettings(url, ca_file, connect_timeout, publish_timeout, reconnect_for, reconnect_max,
                                       cert_file=cert_file, key_file=key_file, external=external, quorum=quorum)
        self.candidates = self.settings.all_parameters()
        self._preferred = 0
        """The index of the URL tried first: the next one after a connection is lost (failover)."""
        self._serving = 0
        """The index of the URL of the current (or last) connection."""
        self._agencies: set[str] = set()
        self._delays: set[int] = set()
        self._ready = threading.Event()
        self._attempted = threading.Event()
        """Set once the first connection attempt has ended, connected or not."""
        self._closing = False
        self._closed = threading.Event()
        """Wakes the I/O thread from a backoff sleep when the transport closes."""
        self._lock = threading.Lock()
        self._epoch = 0
        self._since = time.time()
        self._last_error: BaseException | None = None
        self._established = False
        """Whether the I/O thread's current connection became ready (ends the outage when lost)."""
        self._conn: pika.SelectConnection | None = None
        self._channel: Channel | None = None
        self._next_tag = 1
        self._pending: dict[int, tuple[_Batch, str]] = {}
        self._unsent: set[_Batch] = set()
        """Batches handed to the I/O loop that it has not published yet: a connection lost before
        it runs them must fail them, or their callers wait the whole publish timeout."""
        self._by_id: dict[str, _Batch] = {}
        self._consumers: list[AmqpConsumer] = []
        self._thread = threading.Thread(target=self._run, name="amqp-io", daemon=True)
        self._thread.start()
        self._attempted.wait(connect_timeout)
        if not self._ready.is_set() and isinstance(self._last_error, (AccessRefused, BrokerUntrusted)):
            self.close()  # wrong credentials or certificates: a configuration error, not an outage to wait out
            raise self._last_error

    # The I/O thread ---------------------------------------------------------------------

    @property
    def epoch(self) -> int:
        return self._epoch

    @property
    def params(self) -> pika.URLParameters:
        """The parameters of the broker this transport is (or was last) connected to."""
        return self.candidates[self._serving]

    def _in_order(self) -> list[int]:
        """The candidates' indexes, the preferred one first."""
        count = len(self.candidates)
        return [(self._preferred + step) % count for step in range(count)]

    def health(self) -> TransportHealth:
        """Connected or not, since when (wall time), and the last connection error."""
        with self._lock:
            error = "" if self._last_error is None else str(self._last_error)
            return TransportHealth(self._ready.is_set(), self._since, error)

    def _run(self) -> None:
        """Reconnect until the transport closes, one tenacity loop (a fresh budget) per outage."""
        while not self._closing:
            try:
                self._reconnecting(_Outage(time.monotonic(), self.settings.reconnect_for))(self._session)
            except (_ConnectionLost, TransportError):
                return  # closing: the last attempt's error does not matter any more
            finally:
                self._attempted.set()
            self._closed.wait(RECONNECT_FIRST_S)  # a connection that drops as soon as made must not spin

    def _reconnecting(self, outage: _Outage) -> tenacity.Retrying:
        """One outage's retries: backoff up to ``reconnect_max``, until a connection is made or the
        transport closes (a closing transport's sleep ends at once)."""
        return tenacity.Retrying(
            wait=reconnect_wait(self.settings.reconnect_max), stop=lambda _state: self._closing,
            retry=tenacity.retry_if_exception_type((_ConnectionLost, TransportError)),
            sleep=self._backoff_sleep, before_sleep=lambda state: self._attempt_failed(state, outage),
            reraise=True)

    def _backoff_sleep(self, seconds: float) -> None:
        self._closed.wait(seconds)

    def _attempt_failed(self, state: tenacity.RetryCallState, outage: _Outage) -> None:
        error = state.outcome.exception() if state.outcome else None
        with self._lock:
            self._last_error = error
        self._attempted.set()
        age = round(time.monotonic() - outage.began, 1)
        if outage.overdue():
            log.error("amqp.reconnect_failing", attempt=state.attempt_number, outage_s=age,
                      budget_s=outage.budget, error=repr(error))
        else:
            log.warning("amqp.reconnect", attempt=state.attempt_number, outage_s=age, error=repr(error))

    def _session(self) -> None:
        """Declare the topology, then run one connection until it closes: to the first broker
        that answers, from the preferred one on. Returns once a connection that was established
        has closed, the next broker becoming the preferred one (the next outage gets a fresh
        budget); raises if none could be established."""
        if self._closing:
            return
        self.declare_all(set(self._agencies), set(self._delays))
        lost: list[BaseException] = []
        for index in self._in_order():
            self._established = False
            self._serving = index
            self._connection(self.candidates[index], lost)
            if self._closing:
                return
            if self._established:
                self._preferred = (index + 1) % len(self.candidates)
                return
            refusal = _refusal(lost[-1], self.candidates[index], self.settings.connect_timeout) if lost else None
            if refusal is not None:
                raise refusal
            if len(self.candidates) > 1:
                log.warning("amqp.broker_unreachable", host=self.params.host, port=self.params.port,
                            error=repr(lost[-1]) if lost else "connection closed")
        raise _ConnectionLost(repr(lost[-1]) if lost else "connection closed")

    def _connection(self, params: pika.URLParameters, lost: list[BaseException]) -> None:
        """Run one connection to ``params`` on this thread until it closes or fails to open."""
        def open_failed(conn: pika.SelectConnection, error: BaseException) -> None:
            lost.append(error)
            conn.ioloop.stop()

        with translated():  # a TransportError makes the caller reconnect
            conn = pika.SelectConnection(
                params, on_open_callback=self._on_open, on_open_error_callback=open_failed,
                on_close_callback=lambda c, e: self._on_closed(c, e, lost))
        self._conn = conn
        try:
            with translated():
                conn.ioloop.start()
        finally:
            self._conn = None
            conn.ioloop.close()  # its wake-up socket pair, or it leaks with every reconnect

    def _on_open(self, conn: pika.SelectConnection) -> None:
        conn.channel(on_open_callback=self._on_channel)

    def _on_channel(self, channel: Channel) -> None:
        channel.add_on_close_callback(self._on_channel_closed)
        channel.add_on_return_callback(self._on_return)
        channel.confirm_delivery(self._on_confirm, callback=lambda _frame: self._channel_ready(channel))

    def _channel_ready(self, channel: Channel) -> None:
        self._channel = channel
        self._next_tag = 1
        for consumer in list(self._consumers):
            consumer._open(channel.connection)
        log.info("amqp.connected", host=self.params.host, port=self.params.port, epoch=self._epoch)
        self._established = True
        with self._lock:
            if not self._ready.is_set():
                self._since = time.time()
            self._ready.set()
        self._attempted.set()

    def _on_closed(self, conn: pika.SelectConnection, reason: BaseException, lost: list[BaseException]) -> None:
        self._channel = None
        with self._lock:
            if self._ready.is_set():
                self._since = time.time()
            self._ready.clear()
            self._epoch += 1
            if not self._closing:
                self._last_error = reason
        self._fail_pending(TransportUnavailable(f"connection lost before the broker confirmed: {reason!r}"))
        self._fail_unsent(TransportUnavailable(f"connection lost before the messages were published: {reason!r}"))
        for consumer in list(self._consumers):
            consumer._reset()
        if not self._closing:
            log.warning("amqp.connection_lost", reason=repr(reason))
            lost.append(reason)
        conn.ioloop.stop()

    def _on_channel_closed(self, channel: Channel, reason: BaseException) -> None:
        self._fail_pending(TransportError(f"the publishing channel closed: {reason!r}"))
        conn = self._conn
        if not self._closing and conn is not None and conn.is_open:
            self._ready.clear()
            conn.channel(on_open_callback=self._on_channel)

    def _fail_unsent(self, error: TransportError) -> None:
        with self._lock:
            unsent, self._unsent = self._unsent, set()
        for batch in unsent:
            batch.fail(error)

    def _fail_pending(self, error: TransportError) -> None:
        pending, self._pending, self._by_id = self._pending, {}, {}
        for batch, _ in pending.values():
            batch.settle(error)

    def _on_return(self, channel: Channel, method: Basic.Return, props: BasicProperties, body: bytes) -> None:
        batch = self._by_id.get(props.message_id or "")
        if batch is not None and batch.error is None:
            batch.error = Unroutable(f"no queue for agency {method.routing_key}: message "
                                     f"{props.message_id} was returned ({method.reply_text})")

    def _on_confirm(self, frame: Any) -> None:
        method = frame.method
        tags = ([t for t in self._pending if t <= method.delivery_tag] if method.multiple
                else [method.delivery_tag])
        acked = isinstance(method, Basic.Ack)
        for tag in tags:
            entry = self._pending.pop(tag, None)
            if entry is None:
                continue
            batch, message_id = entry
            self._by_id.pop(message_id, None)
            batch.settle(None if acked else PublishRejected(f"the broker refused message {message_id} (nack)"))

    def _call_soon(self, fn: Callable[[], None]) -> None:
        conn = self._conn
        if conn is None:
            raise TransportUnavailable("not connected to the broker")
        try:
            conn.ioloop.add_callback_threadsafe(fn)
        except (px.AMQPError, OSError, AttributeError, RuntimeError) as exc:  # the loop closed meanwhile
            raise TransportUnavailable(f"not connected to the broker: {exc!r}") from exc

    def _require_connected(self) -> None:
        """Fail fast while not connected: the caller tries again later, nobody waits here."""
        if self._closing:
            raise TransportUnavailable(f"the transport to {self.params.host} is closed")
        if not self._ready.is_set():
            health = self.health()
            raise TransportUnavailable(f"not connected to the broker at {self.params.host}:{self.params.port} "
                                       f"(since {clock.utc(dt.datetime.fromtimestamp(health.since, dt.UTC))}): "
                                       f"{health.last_error or 'still connecting'}")

    # Publishing ---------------------------------------------------------------------------

    def publish(self, message: Message, delay: float = 0.0) -> None:
        self._publish([message], delay)

    def publish_many(self, messages: Sequence[Message]) -> None:
        self._publish(messages, 0.0)

    def _publish(self, messages: Sequence[Message], delay: float) -> None:
        if not messages:
            return
        self._require_connected()
        exchange = EXCHANGE
        if delay > 0:
            exchange = self._delay_exchange(delay, {str(m.recipient) for m in messages})
        batch = _Batch(len(messages))
        with self._lock:
            self._unsent.add(batch)
            epoch = self._epoch
        try:
            self._call_soon(lambda: self._send(exchange, messages, batch))
        except TransportUnavailable:
            with self._lock:
                self._unsent.discard(batch)
            raise
        if self._epoch != epoch or not self._ready.is_set():  # lost around the hand-over: its loop
            self._fail_unsent(TransportUnavailable("connection lost before the messages were published"))
        if not batch.done.wait(self.settings.publish_timeout):
            raise TransportUnavailable(f"no confirm from the broker within {self.settings.publish_timeout:.0f}s")
        if batch.error is not None:
            raise batch.error

    def _send(self, exchange: str, messages: Sequence[Message], batch: _Batch) -> None:
        with self._lock:
            if batch not in self._unsent:  # failed already: its caller will publish it again
                return
            self._unsent.discard(batch)
        channel = self._channel
        for message in messages:
            if channel is None or not channel.is_open:
                batch.settle(TransportUnavailable("the publishing channel is not open"))
                continue
            tag = self._next_tag
            self._next_tag += 1
            self._pending[tag] = (batch, message.message_id)
            self._by_id[message.message_id] = batch
            try:
                channel.basic_publish(exchange, str(message.recipient), message.body, _properties(message),
                                      mandatory=True)
            except px.AMQPError as exc:
                self._pending.pop(tag, None)
                batch.settle(TransportUnavailable(f"publish failed: {exc!r}"))

    def _delay_exchange(self, delay: float, recipients: set[str]) -> str:
        """The delay bucket's exchange, after making sure every recipient has a queue: a delayed
        message to nobody would be dropped silently when its delay ends."""
        bucket = delay_bucket(delay)
        missing = recipients - self._agencies
        if missing:
            self._check_queues(missing)
        if bucket not in self._delays:
            self.declare_all(set(), {bucket})
            self._delays.add(bucket)
        return f"{DELAY_PREFIX}{bucket}"

    # Topology and administration over a short blocking connection ----------------------

    @contextlib.contextmanager
    def _admin(self) -> Iterator[BlockingChannel]:
        with translated():
            conn = self._blocking_connection()
            try:
                yield conn.channel()
            finally:
                if conn.is_open:
                    conn.close()

    def _blocking_connection(self) -> pika.BlockingConnection:
        """A short connection to the first broker that answers; a TLS refusal named as one even
        when pika heard only the connection's end (``_refusal``)."""
        candidates = [self.candidates[i] for i in self._in_order()]
        try:
            return pika.BlockingConnection(candidates)
        except px.AMQPConnectionError as exc:
            for params in candidates:
                refusal = _refusal(exc, params, self.settings.connect_timeout)
                if refusal is not None:
                    raise refusal from exc
            raise

    def declare(self, agency: AgencyCode) -> None:
        """Declare now (TransportUnavailable at once while disconnected), and again on every reconnect."""
        self._require_connected()
        self.declare_all({str(agency)}, set())
        self._agencies.add(str(agency))

    def declare_all(self, agencies: set[str], delays: set[int]) -> None:
        with self._admin() as channel:
            channel = _declare_exchange(channel, EXCHANGE, "topic")
            for agency in sorted(agencies):
                channel, configured = _declare_queue(channel, queue_name(agency), quorum=self.settings.quorum)
                if configured:  # a least-privilege agency user finds its queue bound by the admin
                    channel.queue_bind(queue_name(agency), EXCHANGE, routing_key=agency)
                channel, _ = _declare_queue(channel, dead_queue_name(agency), quorum=self.settings.quorum)
            for bucket in sorted(delays):
                name = f"{DELAY_PREFIX}{bucket}"
                channel = _declare_exchange(channel, name, "fanout")
                channel, configured = _declare_queue(channel, name, quorum=False, arguments={
                    "x-message-ttl": bucket, "x-dead-letter-exchange": EXCHANGE})
                if configured:
                    channel.queue_bind(name, name, routing_key="")

    def _check_queues(self, agencies: set[str]) -> None:
        with self._admin() as channel:
            for agency in agencies:
                try:
                    channel.queue_declare(queue_name(agency), passive=True)
                except px.ChannelClosedByBroker as exc:
                    raise Unroutable(f"no queue for agency {agency}: the delayed message was not "
                                     "published") from exc
        self._agencies |= agencies

    def dead_letters(self, agency: AgencyCode) -> list[DeadLetter]:
        letters = []
        with self._admin() as channel:
            for method, props, body in _drain(channel, dead_queue_name(agency)):
                letters.append(_dead_letter(agency, props, body))
                channel.basic_nack(method.delivery_tag, requeue=True)
        return letters

    def replay(self, agency: AgencyCode, key: str) -> Message:
        with self._admin() as channel:
            channel.confirm_delivery()
            found = None
            for method, props, body in _drain(channel, dead_queue_name(agency)):
                if found is None and props.message_id == key:
                    found = _dead_letter(agency, props, body).message
                    channel.basic_publish(EXCHANGE, str(agency), body, _properties(found), mandatory=True)
                    channel.basic_ack(method.delivery_tag)
                else:
                    channel.basic_nack(method.delivery_tag, requeue=True)
        if found is None:
            raise TransportError(f"no dead letter {key} for agency {agency}")
        return found

    def depth(self, agency: AgencyCode) -> int:
        return self._message_count(queue_name(agency))

    def dead_letter_count(self, agency: AgencyCode) -> int:
        return self._message_count(dead_queue_name(agency))

    def _message_count(self, queue: str) -> int:
        """A queue's depth by a passive declare: nothing is read or requeued."""
        with self._admin() as channel:
            frame = channel.queue_declare(queue, passive=True)
        return int(frame.method.message_count)

    # Consuming and closing ---------------------------------------------------------------

    def consume(self, agency: AgencyCode, prefetch: int = DEFAULT_PREFETCH) -> AmqpConsumer:
        """A consumer of the agency's queue (TransportUnavailable at once while disconnected); it
        consumes again by itself after every reconnect."""
        self.declare(agency)
        consumer = AmqpConsumer(self, queue_name(agency), AgencyCode(str(agency)), prefetch)
        self._consumers.append(consumer)
        conn = self._conn
        try:
            if conn is None:
                raise TransportUnavailable("the connection to the broker was lost")
            self._call_soon(lambda: consumer._open(conn))
        except TransportError:
            consumer.close()
            raise
        consumer._started.wait(self.settings.connect_timeout)
        if consumer._refused is not None:
            consumer.close()
            raise consumer._refused
        return consumer

    def _forget(self, consumer: AmqpConsumer) -> None:
        with contextlib.suppress(ValueError):
            self._consumers.remove(consumer)

    def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        self._closed.set()
        for consumer in list(self._consumers):
            consumer.close()
        conn = self._conn
        if conn is not None:
            with contextlib.suppress(Exception):  # closing a connection that is already gone
                conn.ioloop.add_callback_threadsafe(lambda: conn.close() if conn.is_open else conn.ioloop.stop())
        self._thread.join(timeout=10)


def _declare_exchange(channel: BlockingChannel, name: str, kind: str) -> BlockingChannel:
    try:
        channel.exchange_declare(name, exchange_type=kind, durable=True)
    except px.ChannelClosedByBroker as exc:
        if exc.reply_code != 403:
            raise
        channel = channel.connection.channel()  # no configure permission: it must exist already
        channel.exchange_declare(name, passive=True)
    return channel


def _declare_queue(channel: BlockingChannel, name: str, *, quorum: bool,
                   arguments: dict[str, Any] | None = None) -> tuple[BlockingChannel, bool]:
    """Declare a durable queue; (channel, whether we configured it) — a refused configure or a
    queue made earlier with other arguments falls back to using the existing queue."""
    args = dict(arguments or {})
    if quorum:
        args["x-queue-type"] = "quorum"
    try:
        channel.queue_declare(name, durable=True, arguments=args)
    except px.ChannelClosedByBroker as exc:
        if exc.reply_code not in (403, 406):
            raise
        channel = channel.connection.channel()
        channel.queue_declare(name, passive=True)
        return channel, exc.reply_code == 406
    return channel, True


def _drain(channel: BlockingChannel, name: str) -> Iterator[tuple[Any, BasicProperties, bytes]]:
    """Every message of a queue, fetched without acknowledging; the caller acks or nacks each."""
    frame = channel.queue_declare(name, passive=True)
    total = int(frame.method.message_count)
    # Messages given back with a nack are got again, so stop at the count taken first; but always
    # ask once, so that a user without read permission learns it even from an empty queue.
    for _ in range(max(total, 1)):
        method, props, body = channel.basic_get(name, auto_ack=False)
        if method is None:
            return
        yield method, props, body


def _quietly(channel: Channel, action: Callable[[Channel], object]) -> Callable[[], None]:
    """``action`` for the I/O thread, skipped if the channel is gone. A pika error there must not
    end the I/O loop: an ack, nack or close that cannot be sent only means the broker redelivers."""
    def run() -> None:
        if channel.is_open:
            with contextlib.suppress(px.AMQPError):
                action(channel)
    return run


def _properties(message: Message) -> BasicProperties:
    return BasicProperties(delivery_mode=2, message_id=message.message_id, headers=dict(message.headers),
                           content_type="application/xml")


def _dead_letter(agency: AgencyCode, props: BasicProperties, body: bytes) -> DeadLetter:
    headers = {k: str(v) for k, v in (props.headers or {}).items()}
    reason = headers.pop("x-exchange-reason", "")
    return DeadLetter(Message(agency, body, props.message_id or "", headers), reason, props.message_id or "")


class AmqpConsumer(Closing):
    """Deliveries from one agency queue, buffered by the I/O thread for the application thread."""

    def __init__(self, transport: AmqpTransport, source: str, agency: AgencyCode, prefetch: int) -> None:
        self.transport = transport
        self.queue = source
        self.agency = agency
        self.prefetch = max(1, prefetch)
        self._buffer: queue.Queue[Delivery | None] = queue.Queue()
        """Deliveries from the I/O thread; None is ``interrupt``'s, to end a fetch's wait."""
        self._interrupting = threading.Event()
        self._outstanding: set[int] = set()
        self._lock = threading.Lock()
        self._channel: Channel | None = None
        self._opening = False
        """A channel was asked for on the current connection (so it is not asked for twice)."""
        self._started = threading.Event()
        self._refused: TransportError | None = None
        self.closed = False

    # I/O thread side
    def _open(self, conn: pika.SelectConnection) -> None:
        if not self.closed and not self._opening:
            self._opening = True
            conn.channel(on_open_callback=self._on_channel)

    def _on_channel(self, channel: Channel) -> None:
        self._channel = channel
        channel.add_on_close_callback(self._on_channel_closed)
        channel.basic_qos(prefetch_count=self.prefetch, callback=lambda _f: self._consume(channel))

    def _on_channel_closed(self, channel: Channel, reason: BaseException) -> None:
        if self._channel is channel:
            self._channel = None
        if isinstance(reason, px.ChannelClosedByBroker):
            code = reason.reply_code
            error = AccessRefused if code == 403 else TransportError
            self._refused = error(f"the broker stopped consumption of {self.queue}: {code} {reason.reply_text}")
            log.error("amqp.consumer_closed", queue=self.queue, code=code, text=reason.reply_text)
            self._started.set()

    def _consume(self, channel: Channel) -> None:
        channel.basic_consume(self.queue, self._on_message, auto_ack=False,
                              callback=lambda _f: self._started.set())

    def _on_message(self, channel: Channel, method: Basic.Deliver, props: BasicProperties, body: bytes) -> None:
        headers = {k: v.decode() if isinstance(v, bytes) else str(v) for k, v in (props.headers or {}).items()}
        message = Message(self.agency, body, props.message_id or "", headers)
        with self._lock:
            self._outstanding.add(method.delivery_tag)
        self._buffer.put(Delivery(message, method.delivery_tag, self.transport.epoch, bool(method.redelivered)))

    def _reset(self) -> None:
        """The connection is gone: its deliveries come back from the broker, not from here."""
        self._channel = None
        self._opening = False
        self._started.clear()
        with self._lock:
            self._outstanding.clear()
        while True:
            try:
                self._buffer.get_nowait()
            except queue.Empty:
                self._interrupting.clear()
                return

    # Application thread side
    def fetch(self, max_messages: int, timeout: float) -> list[Delivery]:
        found: list[Delivery] = []
        deadline = time.monotonic() + timeout
        while len(found) < max_messages:
            try:
                wait = max(0.0, deadline - time.monotonic()) if not found else 0.0
                delivery = self._buffer.get(timeout=wait) if wait else self._buffer.get_nowait()
            except queue.Empty:
                break
            if delivery is None:
                self._interrupting.clear()
                deadline = 0.0  # take what is buffered, wait no more
            elif delivery.epoch == self.transport.epoch:
                found.append(delivery)
        return found

    def interrupt(self) -> None:
        if not self._interrupting.is_set():  # one marker in the buffer at a time
            self._interrupting.set()
            self._buffer.put(None)

    def _check(self, deliveries: Sequence[Delivery]) -> list[int]:
        epoch = self.transport.epoch
        stale = [d for d in deliveries if d.epoch != epoch]
        if stale:
            raise StaleDelivery(f"{len(stale)} deliveries came before a reconnect; the broker "
                                "will deliver them again")
        return sorted(d.tag for d in deliveries)

    def ack(self, deliveries: Sequence[Delivery]) -> None:
        tags = self._check(deliveries)
        if not tags:
            return
        with self._lock:
            below = {t for t in self._outstanding if t <= tags[-1]}
            multiple = below == set(tags)
            self._outstanding -= set(tags)
        channel = self._channel
        if channel is None:
            raise StaleDelivery("the consumer's channel is gone; the broker will redeliver")

        def send(channel: Channel) -> None:
            if multiple:
                channel.basic_ack(tags[-1], multiple=True)
            else:
                for tag in tags:
                    channel.basic_ack(tag)

        self.transport._call_soon(_quietly(channel, send))

    def nack(self, deliveries: Sequence[Delivery]) -> None:
        tags = self._check(deliveries)
        with self._lock:
            self._outstanding -= set(tags)
        channel = self._channel
        if channel is None:
            return

        def send(channel: Channel) -> None:
            for tag in tags:
                channel.basic_nack(tag, requeue=True)

        self.transport._call_soon(_quietly(channel, send))

    def dead_letter(self, delivery: Delivery, reason: str) -> None:
        self._check([delivery])
        message = delivery.message
        headers = {**message.headers, "x-exchange-reason": reason[:1000]}
        with self.transport._admin() as channel:
            channel.confirm_delivery()
            channel.basic_publish("", dead_queue_name(self.agency), message.body,
                                  _properties(Message(message.recipient, message.body, message.message_id,
                                                      headers)), mandatory=True)
        self.ack([delivery])

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.transport._forget(self)
        channel = self._channel
        if channel is not None:
            with contextlib.suppress(TransportError):
                self.transport._call_soon(_quietly(channel, Channel.close))
