"""RFC 9162 (Certificate Transparency 2.0) Merkle tree hashing, proofs and their verification.

Leaves hash as SHA-256(0x00 || entry), interior nodes as SHA-256(0x01 || left || right); a tree
of n leaves splits at the largest power of two below n. Proof generation works over any
``SubtreeHashes`` (the audit log keeps the hash of every complete, aligned subtree), so a proof
costs O(log n) hash lookups. Verification follows RFC 9162 sections 2.1.3.2 and 2.1.4.2 and
needs nothing but hashlib; ``docs/auditing.md`` repeats it as a stand-alone recipe.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Sequence

HASH_SIZE = 32
EMPTY_ROOT = hashlib.sha256(b"").digest()


def leaf_hash(entry: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + entry).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def split(n: int) -> int:
    """The largest power of two strictly smaller than ``n`` (n >= 2)."""
    return 1 << ((n - 1).bit_length() - 1)


PerfectHash = Callable[[int, int], bytes]
"""``perfect(level, index)``: the hash of the complete subtree of 2**level leaves starting at
leaf ``index * 2**level``."""


class SubtreeHashes:
    """Merkle tree hashes of ranges, from the hashes of complete aligned subtrees."""

    def __init__(self, perfect: PerfectHash) -> None:
        self.perfect = perfect

    def range_hash(self, start: int, size: int) -> bytes:
        """MTH of leaves [start, start + size); ``start`` is aligned as RFC 9162's recursion makes it."""
        if size == 0:
            return EMPTY_ROOT
        if size & (size - 1) == 0 and start % size == 0:
            return self.perfect(size.bit_length() - 1, start // size)
        k = split(size)
        return node_hash(self.range_hash(start, k), self.range_hash(start + k, size - k))

    def root(self, size: int) -> bytes:
        return self.range_hash(0, size)

    def inclusion_proof(self, index: int, size: int) -> list[bytes]:
        """PATH(index, D[0:size]) of RFC 9162 section 2.1.3.1."""
        if not 0 <= index < size:
            raise ValueError(f"leaf {index} is not in a tree of {size}")
        proof: list[bytes] = []
        start = 0
        while size > 1:
            k = split(size)
            if index < k:
                proof.append(self.range_hash(start + k, size - k))
                size = k
            else:
                proof.append(self.range_hash(start, k))
                start, index, size = start + k, index - k, size - k
        proof.reverse()
        return proof

    def consistency_proof(self, old: int, new: int) -> list[bytes]:
        """PROOF(old, D[0:new]) of RFC 9162 section 2.1.4.1."""
        if not 0 < old <= new:
            raise ValueError(f"no consistency proof from {old} to {new}")
        return self._subproof(old, 0, new, True)

    def _subproof(self, m: int, start: int, n: int, complete: bool) -> list[bytes]:
        if m == n:
            return [] if complete else [self.range_hash(start, n)]
        k = split(n)
        if m <= k:
            return [*self._subproof(m, start, k, complete), self.range_hash(start + k, n - k)]
        return [*self._subproof(m - k, start + k, n - k, False), self.range_hash(start, k)]


def in_memory(leaves: Sequence[bytes]) -> SubtreeHashes:
    """SubtreeHashes over a list of leaf hashes, for tests and small bundles."""
    cache: dict[tuple[int, int], bytes] = {}

    def perfect(level: int, index: int) -> bytes:
        if level == 0:
            return leaves[index]
        key = (level, index)
        if key not in cache:
            cache[key] = node_hash(perfect(level - 1, 2 * index), perfect(level - 1, 2 * index + 1))
        return cache[key]

    return SubtreeHashes(perfect)


def root_of(leaves: Sequence[bytes]) -> bytes:
    return in_memory(leaves).root(len(leaves))


class Frontier:
    """Streaming tree head: the roots of the complete subtrees on the right edge.

    Adding a leaf is amortized O(1), memory is O(log n); ``root()`` folds the frontier. This is
    how verification recomputes a million-entry tree without holding it.
    """

    def __init__(self) -> None:
        self.size = 0
        self._stack: list[tuple[int, bytes]] = []  # (level, hash), levels strictly decreasing

    def add(self, leaf: bytes) -> list[tuple[int, int, bytes]]:
        """Add a leaf hash; return the complete subtrees it finished as (level, index, hash)."""
        finished = [(0, self.size, leaf)]
        level, current = 0, leaf
        while self._stack and self._stack[-1][0] == level:
            _, left = self._stack.pop()
            current = node_hash(left, current)
            level += 1
            finished.append((level, self.size >> level, current))
        self._stack.append((level, current))
        self.size += 1
        return finished

    def root(self) -> bytes:
        if not self._stack:
            return EMPTY_ROOT
        current = self._stack[-1][1]
        for _, left in reversed(self._stack[:-1]):
            current = node_hash(left, current)
        return current


def verify_inclusion(index: int, size: int, leaf: bytes, proof: Iterable[bytes], root: bytes) -> bool:
    """RFC 9162 section 2.1.3.2."""
    if not 0 <= index < size:
        return False
    fn, sn = index, size - 1
    r = leaf
    for p in proof:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                while fn & 1 == 0 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    return sn == 0 and r == root


def verify_consistency(old: int, new: int, proof: Sequence[bytes], old_root: bytes,
                       new_root: bytes) -> bool:
    """RFC 9162 section 2.1.4.2."""
    if old == new:
        return not proof and old_root == new_root
    if not 0 < old < new or not proof:
        return False
    path = list(proof)
    if old & (old - 1) == 0:  # old is a power of two: its root is the first node
        path.insert(0, old_root)
    fn, sn = old - 1, new - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            if not fn & 1:
                while fn & 1 == 0 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    return fr == old_root and sr == new_root and sn == 0
