"""Proofs an auditor can check without our code: a dossier's entries with their inclusion proofs
against a checkpoint, and the consistency proof between two checkpoints of one log.

Hashes are written in hex, as receipts carry them; ``docs/auditing.md`` holds a stand-alone
checker (hashlib and cryptography only) for both documents.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from exchange.audit import checkpoints, merkle
from exchange.audit.checkpoints import Checkpoint, Verifier
from exchange.audit.sources import LogSource, Trust, check_note
from exchange.errors import AuditError, Unverifiable


def latest_checkpoint(source: LogSource) -> Checkpoint:
    notes = source.checkpoint_notes()
    if not notes:
        raise AuditError("the log has no checkpoint yet: nothing to prove against")
    return checkpoints.parse(notes[-1])


def prove(source: LogSource, dossier: str, checkpoint: Checkpoint | None = None) -> dict[str, Any]:
    """Every entry about ``dossier`` with its inclusion proof against ``checkpoint`` (by default
    the log's latest); entries after it are listed as not yet checkpointed."""
    target = checkpoint or latest_checkpoint(source)
    tree = source.tree()
    _check_matches(source, tree, target)
    proven, pending = [], []
    for index, data in source.dossier_entries(dossier):
        item: dict[str, Any] = {"index": index, "entry": data.decode("utf-8")}
        if index >= target.size:
            pending.append(item)
            continue
        item["leaf_hash"] = merkle.leaf_hash(data).hex()
        item["proof"] = [p.hex() for p in tree.inclusion_proof(index, target.size)]
        proven.append(item)
    return {"dossier": dossier, "origin": target.origin, "tree_size": target.size,
            "root": target.root.hex(), "checkpoint": target.note,
            "keys": [dataclasses.asdict(k) for k in source.key_records()], "entries": proven,
            "not_yet_checkpointed": pending}


def _check_matches(source: LogSource, tree: merkle.SubtreeHashes, checkpoint: Checkpoint) -> None:
    """Refuse a checkpoint of another log, or one this log's entries do not produce."""
    if source.origin and checkpoint.origin != source.origin:
        raise Unverifiable(f"the checkpoint is of {checkpoint.origin}, the log of {source.origin}")
    count = source.count()
    if checkpoint.size > count:
        raise Unverifiable(f"the checkpoint covers {checkpoint.size} entries, the log has {count}")
    if tree.root(checkpoint.size) != checkpoint.root:
        raise Unverifiable(f"the checkpoint of size {checkpoint.size} does not match the log's entries")


@dataclass(frozen=True)
class Consistency:
    """Two checkpoints of one log, the RFC 9162 proof between them, and every problem found."""

    old: Checkpoint
    new: Checkpoint
    proof: tuple[bytes, ...] = ()
    problems: tuple[str, ...] = ()

    @property
    def holds(self) -> bool:
        return not self.problems

    def document(self) -> dict[str, Any]:
        """The proof as JSON an outside tool checks: sizes, roots and proof hashes in hex."""
        return {"origin": self.new.origin, "old": _head(self.old), "new": _head(self.new),
                "proof": [p.hex() for p in self.proof]}


def _head(checkpoint: Checkpoint) -> dict[str, Any]:
    return {"size": checkpoint.size, "root": checkpoint.root.hex(), "checkpoint": checkpoint.note}


def consistency(old_note: str, new_note: str, source: LogSource, trust: Trust) -> Consistency:
    """Check two checkpoints of one log: the order, both signatures, both roots against the
    source's entries, and the consistency proof the source's tree gives between them.

    Without trusted keys, the keys the source itself records are used. AuditError if the older
    checkpoint is not given first."""
    old, new = checkpoints.parse(old_note), checkpoints.parse(new_note)
    if old.size > new.size:
        raise AuditError(f"the checkpoints are in the wrong order: OLD has size {old.size}, NEW has size "
                         f"{new.size}; give the older (smaller) checkpoint first")
    problems: list[str] = []
    verifiers = trust.verifiers(source, problems) if trust.given else [
        Verifier.parse(k.verifier) for k in source.key_records()]
    try:
        old, new = check_note(old_note, verifiers), check_note(new_note, verifiers)
    except Unverifiable as exc:
        return Consistency(old, new, problems=(*problems, str(exc)))
    if old.origin != new.origin:
        return Consistency(old, new, problems=(*problems, f"the checkpoints are of two logs: {old.origin} "
                                                          f"and {new.origin}"))
    count = source.count()
    if new.size > count:
        return Consistency(old, new, problems=(*problems, f"the log has {count} entries, the newer "
                                                          f"checkpoint covers {new.size}"))
    tree = source.tree()
    problems += [f"checkpoint of size {c.size} does not match the log's entries"
                 for c in (old, new) if tree.root(c.size) != c.root]
    proof = tuple(tree.consistency_proof(old.size, new.size)) if old.size else ()
    if old.size and not merkle.verify_consistency(old.size, new.size, proof, old.root, new.root):
        problems.append(f"checkpoint {old.size} and checkpoint {new.size} are not consistent: a fork")
    return Consistency(old, new, proof, tuple(problems))
