"""Witnessing peers: every receipt carries the sender's latest checkpoint, every node keeps the
checkpoints its peers sent it and checks each new one against the last, so that no node can
rewrite or fork its history without its peers holding the proof.

A receipt carries the checkpoint and, when the sender has told this peer of an older checkpoint
before, a consistency proof from that one (``attachment_for``). The receiver (``observe``)
verifies the signature, then consistency with what it holds; an inconsistent pair is a fork:
logged as an error, appended to the receiver's own audit log, and reported to the caller.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

import structlog

from exchange import clock
from exchange.audit import checkpoints, merkle
from exchange.audit.checkpoints import Checkpoint, Verifier
from exchange.audit.entries import Entry, Event
from exchange.audit.log import AuditLog
from exchange.store import audit as rows

log = structlog.get_logger(__name__)


class Verdict(StrEnum):
    FIRST = "first"  # the first checkpoint seen from this peer: trusted on first use
    SAME = "same"  # a size already held, with the same root
    CONSISTENT = "consistent"  # larger, and proven consistent with one held
    UNPROVEN = "unproven"  # larger or older, but no proof links it to what is held
    FORK = "fork"  # two views of the peer's history that cannot both be true


@dataclass(frozen=True)
class Observation:
    verdict: Verdict
    checkpoint: Checkpoint
    detail: str


@dataclass(frozen=True)
class Attachment:
    """What a receipt carries: a checkpoint note and a proof from an older size the peer holds."""

    note: str
    from_size: int | None
    proof: tuple[bytes, ...]


class Witness:
    """Peer checkpoints in the node's database, next to its own audit log."""

    def __init__(self, audit: AuditLog) -> None:
        self.audit = audit

    def attachment_for(self, peer: str, latest: Checkpoint | None) -> Attachment | None:
        """Our latest checkpoint for a receipt to ``peer``, proven from the one we last sent it."""
        if latest is None:
            return None
        from_size = rows.sent_size(self.audit.conn, peer)
        proof: tuple[bytes, ...] = ()
        if from_size is not None and 0 < from_size < latest.size:
            proof = tuple(self.audit.consistency_proof(from_size, latest.size))
        rows.set_sent_size(self.audit.conn, peer, latest.size)
        return Attachment(latest.note, from_size, proof)

    def observe(self, note: str, verifier: Verifier, from_size: int | None = None,
                proof: tuple[bytes, ...] = ()) -> Observation:
        """Check and keep a peer's checkpoint, in the caller's transaction. A bad signature raises
        Unverifiable; a fork is recorded and returned, never raised: the caller keeps running."""
        checkpoint = checkpoints.verify(note, verifier)
        held = rows.peer_roots(self.audit.conn, checkpoint.origin)
        observation = self._judge(checkpoint, held, from_size, proof)
        if observation.verdict is Verdict.FORK:
            self._alarm(observation)
        if checkpoint.size not in held:
            rows.add_peer_checkpoint(self.audit.conn, checkpoint.origin, checkpoint.size, checkpoint.root, note,
                                     received_at=clock.now().isoformat(),
                                     proven=observation.verdict is not Verdict.UNPROVEN)
        return observation

    @staticmethod
    def _judge(checkpoint: Checkpoint, held: dict[int, bytes], from_size: int | None,
               proof: tuple[bytes, ...]) -> Observation:
        if not held:
            return Observation(Verdict.FIRST, checkpoint, "first checkpoint from this peer")
        if checkpoint.size in held:
            if held[checkpoint.size] == checkpoint.root:
                return Observation(Verdict.SAME, checkpoint, "already held")
            return Observation(Verdict.FORK, checkpoint, f"two different roots for size {checkpoint.size}")
        if from_size is not None and from_size in held and from_size < checkpoint.size:
            if merkle.verify_consistency(from_size, checkpoint.size, proof, held[from_size], checkpoint.root):
                return Observation(Verdict.CONSISTENT, checkpoint, f"proven consistent with size {from_size}")
            return Observation(Verdict.FORK, checkpoint,
                               f"size {checkpoint.size} is not consistent with the held size {from_size}")
        return Observation(Verdict.UNPROVEN, checkpoint, "no proof from a held checkpoint; kept for auditors")

    def _alarm(self, observation: Observation) -> None:
        checkpoint = observation.checkpoint
        log.error("witness.fork", peer=checkpoint.origin, size=checkpoint.size, detail=observation.detail)
        self.audit.append(Entry(Event.FORK_DETECTED, self.audit.node, counterpart=checkpoint.origin,
                                detail={"size": str(checkpoint.size), "root": checkpoint.root.hex(),
                                        "reason": observation.detail}))

    def peer_checkpoints(self, origin: str) -> list[Checkpoint]:
        return [checkpoints.parse(note) for note in rows.peer_notes(self.audit.conn, origin)]


__all__ = ["Attachment", "Observation", "Verdict", "Witness"]
