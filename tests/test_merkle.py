"""RFC 9162 hashing and proofs: the Certificate Transparency reference vectors, then every leaf and
every pair of sizes up to 64 against an independent recomputation."""

from __future__ import annotations

import pytest

from exchange.audit import merkle

LEAVES = [bytes.fromhex(h) for h in ("", "00", "10", "2021", "3031", "40414243", "5051525354555657",
                                      "606162636465666768696a6b6c6d6e6f")]
ROOTS = [
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
]
INCLUSION = [  # (leaf index, tree size, proof)
    (0, 8, ["96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"]),
    (5, 8, ["bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"]),
    (2, 3, ["fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"]),
    (1, 5, ["6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"]),
]
CONSISTENCY = [  # (old size, new size, proof)
    (1, 1, []),
    (1, 8, ["96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"]),
    (6, 8, ["0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"]),
    (2, 5, ["5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"]),
]
HASHES = [merkle.leaf_hash(leaf) for leaf in LEAVES]


def reference_root(leaves: list[bytes]) -> bytes:
    """MTH straight from RFC 9162's recursive definition, as an independent check."""
    if not leaves:
        return merkle.EMPTY_ROOT
    if len(leaves) == 1:
        return leaves[0]
    k = 1
    while k * 2 < len(leaves):
        k *= 2
    return merkle.node_hash(reference_root(leaves[:k]), reference_root(leaves[k:]))


@pytest.mark.parametrize("size", range(9))
def test_reference_roots(size: int) -> None:
    """Tree heads for 0 to 8 leaves equal the Certificate Transparency reference values."""
    assert merkle.root_of(HASHES[:size]).hex() == ROOTS[size]
    frontier = merkle.Frontier()
    for leaf in HASHES[:size]:
        frontier.add(leaf)
    assert frontier.root().hex() == ROOTS[size]


@pytest.mark.parametrize(("index", "size", "proof"), INCLUSION)
def test_reference_inclusion_proofs(index: int, size: int, proof: list[str]) -> None:
    """Inclusion proofs equal the reference vectors and verify against the reference roots."""
    tree = merkle.in_memory(HASHES[:size])
    assert [p.hex() for p in tree.inclusion_proof(index, size)] == proof
    assert merkle.verify_inclusion(index, size, HASHES[index], [bytes.fromhex(p) for p in proof],
                                   bytes.fromhex(ROOTS[size]))


@pytest.mark.parametrize(("old", "new", "proof"), CONSISTENCY)
def test_reference_consistency_proofs(old: int, new: int, proof: list[str]) -> None:
    """Consistency proofs equal the reference vectors and verify between the reference roots."""
    tree = merkle.in_memory(HASHES[:new])
    assert [p.hex() for p in tree.consistency_proof(old, new)] == proof
    assert merkle.verify_consistency(old, new, [bytes.fromhex(p) for p in proof],
                                     bytes.fromhex(ROOTS[old]), bytes.fromhex(ROOTS[new]))


MANY = [merkle.leaf_hash(i.to_bytes(2, "big")) for i in range(64)]
MANY_ROOTS = [reference_root(MANY[:n]) for n in range(65)]


@pytest.mark.parametrize("size", range(1, 65))
def test_every_inclusion_proof_up_to_64(size: int) -> None:
    """For every size up to 64, every leaf's proof verifies, and fails for a wrong leaf or index."""
    tree = merkle.in_memory(MANY[:size])
    root = MANY_ROOTS[size]
    assert tree.root(size) == root
    for index in range(size):
        proof = tree.inclusion_proof(index, size)
        assert merkle.verify_inclusion(index, size, MANY[index], proof, root)
        assert not merkle.verify_inclusion(index, size, MANY[(index + 1) % 64], proof, root)
        if size > 1:
            assert not merkle.verify_inclusion((index + 1) % size, size, MANY[index], proof, root)


@pytest.mark.parametrize("new", range(1, 65))
def test_every_consistency_proof_up_to_64(new: int) -> None:
    """For every pair of sizes up to 64, the proof verifies and fails against a forged old root."""
    tree = merkle.in_memory(MANY[:new])
    for old in range(1, new + 1):
        proof = tree.consistency_proof(old, new)
        assert merkle.verify_consistency(old, new, proof, MANY_ROOTS[old], MANY_ROOTS[new])
        forged = merkle.node_hash(MANY_ROOTS[old], MANY_ROOTS[old])
        assert not merkle.verify_consistency(old, new, proof, forged, MANY_ROOTS[new])
        if old < new:
            assert not merkle.verify_consistency(old, new, proof, MANY_ROOTS[old], forged)


def test_frontier_reports_the_subtrees_it_completes() -> None:
    """Adding the 8th leaf completes subtrees at levels 0 to 3, with their indexes."""
    frontier = merkle.Frontier()
    for leaf in HASHES[:7]:
        frontier.add(leaf)
    finished = frontier.add(HASHES[7])
    assert [(level, index) for level, index, _ in finished] == [(0, 7), (1, 3), (2, 1), (3, 0)]
    assert finished[-1][2].hex() == ROOTS[8]
