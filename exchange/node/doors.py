"""The port for doors: the ways an agency system hands dossiers to its node and hears back.

The daemon knows doors only through this protocol; the command that runs the node builds the
concrete ones (drop folder, HTTP API, webhooks: adapters) from the configuration and hands
them in. Every hook has a do-nothing default, so a door implements only what it uses.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from exchange.node.config import NodeConfig
from exchange.node.context import NodeContext


class Door(Protocol):
    """One door, driven by the daemon's loop; every hook runs on the loop's thread."""

    def check(self, config: NodeConfig) -> None:
        """Raise ConfigError, changing nothing, if this door cannot work with ``config``: called
        before a reload (SIGHUP) puts a new configuration in force."""
        return

    def start(self) -> None:
        """The node is ready: begin serving (a door that listens opens here)."""
        return

    def poll(self, ctx: NodeContext) -> int:
        """Housekeeping, every half second: take in or push out what is waiting; returns how much."""
        return 0

    def delivered(self, ctx: NodeContext, message_ids: Sequence[str]) -> None:
        """Inside the transaction that records these deliveries to the agency system: queue
        whatever must follow them, so that it commits (or not) with them."""
        return

    def stop(self) -> None:
        """The node is stopping: stop serving and release what the door holds."""
        return
