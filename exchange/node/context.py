"""What a node acts with: its configuration, database, audit log, rules, keys and trust store.

The daemon opens one context and keeps it; each command opens one for its run. A thread that
serves requests beside the daemon (the HTTP API) takes ``for_thread()``: the daemon's rules,
signer and opener, with a database connection of its own (SQLite connections are not shared
between threads), closed after use.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from types import TracebackType

from exchange.audit.checkpoints import Checkpointer, NoteSigner
from exchange.audit.entries import Entry, Event
from exchange.audit.log import AuditLog
from exchange.codes import AgencyCode
from exchange.envelope.encryption import Recipient
from exchange.envelope.sealing import Opener, Signer
from exchange.envelope.trust import TrustStore
from exchange.node import wake
from exchange.node.config import NodeConfig
from exchange.rules.load import RuleBook
from exchange.rules.model import RuleSet
from exchange.store.cipher import ColumnCipher
from exchange.store.node import Store


@dataclass
class NodeContext:
    """Everything a node acts with; a context manager that closes its database connection."""

    config: NodeConfig
    store: Store
    audit: AuditLog
    rulebook: RuleBook
    signer: Signer
    opener: Opener
    checkpointer: Checkpointer

    @classmethod
    def open(cls, config: NodeConfig) -> NodeContext:
        store = Store(config.database, ColumnCipher.load(config.storage_key) if config.storage_key else None)
        audit = AuditLog(store.conn, str(config.agency))
        note_signer = NoteSigner.load(config.checkpoint_key, f"vn-exchange/audit/{config.agency}")
        return cls(config, store, audit, RuleBook(config.rules), Signer.load(config.cert, config.key),
                   Opener(TrustStore.load(config.ca, config.crl), recipient=Recipient.load(config.cert, config.key)),
                   Checkpointer(audit, note_signer, config.checkpoint_every_entries,
                                config.checkpoint_every_seconds))

    def for_thread(self) -> NodeContext:
        """The same rules, keys and trust, over a database connection of the calling thread's own."""
        store = Store(self.config.database, self.store.cipher)
        audit = AuditLog(store.conn, str(self.config.agency))
        return replace(self, store=store, audit=audit,
                       checkpointer=replace(self.checkpointer, audit=audit))

    @property
    def agency(self) -> AgencyCode:
        return self.config.agency

    @property
    def rules(self) -> RuleSet:
        return self.rulebook.current

    def wake_after_commit(self) -> None:
        """The running daemon of this node publishes what the current transaction enqueued as soon
        as it commits, not at its next poll (``node/wake.py``)."""
        self.store.after_commit(self._wake)

    def _wake(self) -> None:
        wake.wake(self.config.state_dir)

    def entry(self, event: Event, **fields: object) -> Entry:
        return Entry(event, str(self.agency), **fields)  # type: ignore[arg-type]

    def record(self, *entries: Entry) -> None:
        """Append audit entries in the current transaction: they commit with the change they record."""
        self.audit.append_many(entries)

    def close(self) -> None:
        self.store.close()

    def __enter__(self) -> NodeContext:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self.close()
