"""Waking a running node when another process gave it work, instead of waiting for its next poll.

`exchange submit`, `done`, the HTTP API's threads and the node's own work put envelopes in the
outbox, in the node's database; the daemon's loop would find them at its next pass, up to a
fetch's wait later (50 ms, half the latency of a transfer). After the transaction that enqueued
commits, the writer sends one datagram to the node's wake address; the daemon's listener makes
the consumer's wait end at once, and the pass that follows publishes.

The address is a Linux abstract UNIX socket named after the node's state folder (no file, so no
path-length limit and nothing left behind by a crash). A wake carries nothing and may be lost or
sent by anyone on the host: the worst it does is an early pass, and the poll remains the backstop.
The embedded transport uses the same means to wake a queue's consumer when a message is
published to it (its key: the transport's file and the queue).
"""

from __future__ import annotations

import contextlib
import hashlib
import socket
import threading
from collections.abc import Callable
from pathlib import Path

import structlog

log = structlog.get_logger("exchange.wake")


def address(where: Path | str) -> bytes:
    """The abstract socket name for ``where``: a node's state folder, or any other key."""
    key = str(where.resolve()) if isinstance(where, Path) else where
    digest = hashlib.sha256(key.encode("utf-8")).hexdigest()[:32]
    return b"\0exchange-wake-" + digest.encode("ascii")


def wake(where: Path | str) -> bool:
    """Tell whoever listens at ``where`` there is work; whether anybody did (nothing happens, and
    nothing fails, when nobody does)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sender:
        sender.setblocking(False)
        try:
            sender.sendto(b"!", address(where))
        except OSError:  # nobody listens there, or its queue is full: it has work to find anyway
            return False
    return True


class Listener:
    """The waiting side: calls ``on_wake`` for each datagram, on a thread of its own."""

    def __init__(self, where: Path | str, on_wake: Callable[[], None]) -> None:
        self.on_wake = on_wake
        self._socket: socket.socket | None = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            self._socket.bind(address(where))
        except OSError as exc:  # another process or consumer holds it: that one is woken, this polls
            log.info("wake.unavailable", error=str(exc))
            self._socket.close()
            self._socket = None
            return
        self._thread = threading.Thread(target=self._run, name="wake", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        sock = self._socket
        while sock is not None:
            try:
                data = sock.recv(64)
            except OSError:
                return
            if not data or self._socket is None:  # shut down by close(): every wake has a byte
                return
            self.on_wake()

    def close(self) -> None:
        sock, self._socket = self._socket, None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
