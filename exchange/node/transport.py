"""The transport port: how envelopes move between nodes, whatever carries them.

Two implementations pass one contract suite (tests/test_transport_contract.py):
``adapters.amqp.AmqpTransport`` (RabbitMQ via pika, for production and for several hosts) and
``adapters.embedded.EmbeddedTransport`` (a shared SQLite file, for one host and the demo).

Semantics both promise:

- ``publish`` returns only once the message is safely stored (broker confirm, or commit); a
  message for an agency without a queue raises ``Unroutable``, never vanishes;
- a consumer gets at most ``prefetch`` unacknowledged deliveries; an ack may cover a batch;
  anything unacknowledged when a consumer goes away (crash, close, lost connection, expired
  lease) is delivered again, marked ``redelivered``;
- ``publish(delay=...)`` makes a message deliverable only after the delay;
- ``dead_letter`` moves a delivery to the recipient's dead-letter queue with its reason, for
  ``dead_letters``/``replay`` by an operator;
- order within one queue is preserved for messages delivered for the first time;
- every method raises only ``exchange.errors.TransportError`` and its subclasses, whatever the
  library underneath raises; transports and consumers close at the end of a ``with`` block;
- an outage is ``TransportUnavailable``; the transport recovers by itself (the caller only
  tries again later), and ``health()`` says at once whether it is connected.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Protocol, Self

from exchange.codes import AgencyCode

DEFAULT_PREFETCH = 64


@dataclass(frozen=True, slots=True)
class Message:
    """What travels: opaque bytes for one recipient, with an id and a few plain headers."""

    recipient: AgencyCode
    body: bytes
    message_id: str
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Delivery:
    """A message handed to a consumer; acknowledge it (or nack, or dead-letter) exactly once."""

    message: Message
    tag: int
    """Opaque to callers; meaningful only to the consumer that produced it, in its epoch."""
    epoch: int
    redelivered: bool = False


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A message set aside by a consumer, with the reason, for an operator to inspect or replay."""

    message: Message
    reason: str
    key: str
    """What ``replay`` takes to put it back."""


@dataclass(frozen=True, slots=True)
class TransportHealth:
    """What a transport knows of its own link, for the node's health checks."""

    connected: bool
    """Whether it can move messages now (a broker transport reconnects by itself when not)."""
    since: float
    """Wall time (``time.time()``) at which ``connected`` took its current value."""
    last_error: str = ""
    """The last connection failure it met ("" if none)."""


class Closing:
    """``with`` support for whatever has ``close()``: leaving the block closes it, even on error."""

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()


class Consumer(Protocol):
    """Deliveries from one agency's queue, at most ``prefetch`` unacknowledged at a time."""

    def fetch(self, max_messages: int, timeout: float) -> list[Delivery]:
        """Up to ``max_messages`` deliveries, waiting at most ``timeout`` seconds for the first
        (less if ``interrupt`` is called meanwhile or was called since the last fetch)."""
        ...

    def interrupt(self) -> None:
        """End the current (or the next) fetch's wait now; from any thread."""
        ...

    def ack(self, deliveries: Sequence[Delivery]) -> None:
        """Acknowledge deliveries (in one batch where the transport can)."""
        ...

    def nack(self, deliveries: Sequence[Delivery]) -> None:
        """Give deliveries back for redelivery."""
        ...

    def dead_letter(self, delivery: Delivery, reason: str) -> None:
        """Move a delivery to its queue's dead letters, with the reason, and acknowledge it."""
        ...

    def close(self) -> None:
        """Stop consuming; whatever is unacknowledged will be redelivered."""
        ...

    def __enter__(self) -> Self:
        ...

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        ...


class Transport(Protocol):
    """Publish with confirmation, consume with manual acks, delay, dead-letter, close."""

    def declare(self, agency: AgencyCode) -> None:
        """Make sure the agency's queue (and its delay and dead-letter queues) exist. Idempotent."""
        ...

    def publish(self, message: Message, delay: float = 0.0) -> None:
        """Store ``message`` for its recipient, deliverable after ``delay`` seconds; return once
        confirmed. Raises Unroutable, PublishRejected or TransportUnavailable."""
        ...

    def publish_many(self, messages: Sequence[Message]) -> None:
        """Publish a batch, waiting for all confirms together; raises on the first failure."""
        ...

    def consume(self, agency: AgencyCode, prefetch: int = DEFAULT_PREFETCH) -> Consumer:
        ...

    def dead_letters(self, agency: AgencyCode) -> list[DeadLetter]:
        """The agency's dead letters, oldest first, without removing them."""
        ...

    def dead_letter_count(self, agency: AgencyCode) -> int:
        """How many dead letters the agency's queue holds, without reading them (for metrics)."""
        ...

    def replay(self, agency: AgencyCode, key: str) -> Message:
        """Put one dead letter back on the agency's queue; returns it."""
        ...

    def health(self) -> TransportHealth:
        """Connected or not, since when, the last error; answers at once, never raises."""
        ...

    def close(self) -> None:
        """Release the connection or file; idempotent."""
        ...

    def __enter__(self) -> Self:
        ...

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        ...
