"""systemd's sd_notify, for ``Type=notify`` units with a watchdog; a no-op outside systemd."""

from __future__ import annotations

import os
import socket

import structlog

log = structlog.get_logger(__name__)


def notify(state: str) -> None:
    """Tell systemd ``state`` (``READY=1``, ``WATCHDOG=1``, ``STOPPING=1``) over NOTIFY_SOCKET."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    if address.startswith("@"):
        address = "\0" + address[1:]  # an abstract socket
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        try:
            sock.connect(address)
            sock.sendall(state.encode())
        except OSError as exc:
            log.warning("systemd.notify_failed", error=str(exc))
