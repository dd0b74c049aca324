"""The tamper-evident audit log: entries, the Merkle tree, checkpoints, witnessing, and the auditors' tools."""
