"""Payload columns encrypted at rest with the node's storage key (``[privacy] storage_key``).

The node's database is 0600 and its transfers travel encrypted to their recipients; on a host it
shares with other services, the dossiers it holds in its own tables (the outbox's envelopes,
the inbox's payloads, the dossiers' XML) can be encrypted too, so that a copy of the database
file, a backup or a stray ``sqlite3`` shell shows no citizen's data.

Each value is AES-256-GCM under the storage key with a fresh 96-bit nonce, its additional data
naming the table, the column and the row's key, so that a value copied into another row or column
does not decrypt. A sealed value starts with ``MAGIC`` (no envelope or dossier starts with a NUL
byte), so that rows written before the option was turned on are still read, and sealed by the
daemon when it starts.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from exchange.errors import ConfigError, StoreError
from exchange.files import write_private

MAGIC = b"\x00xs1"
KEY_BYTES = 32
_NONCE_BYTES = 12


@dataclass(frozen=True)
class ColumnCipher:
    """Seals and opens one column's values with the storage key."""

    aead: AESGCM = field(repr=False)

    @classmethod
    def generate(cls, path: Path) -> ColumnCipher:
        """A new random key written 0600 (never over an existing one: that would orphan its rows)."""
        if path.exists():
            raise ConfigError(f"{path}: a storage key is already there; the rows it sealed need it")
        key = AESGCM.generate_key(bit_length=KEY_BYTES * 8)
        write_private(path, key)
        return cls(AESGCM(key))

    @classmethod
    def load(cls, path: Path) -> ColumnCipher:
        try:
            mode = path.stat().st_mode
            key = path.read_bytes()
        except FileNotFoundError:
            raise ConfigError(f"{path}: no such storage key (create one with "
                              "`exchange node storage-key --out FILE`)") from None
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise ConfigError(f"{path}: the storage key is readable by others (mode {stat.S_IMODE(mode):o}); "
                              "expected 0600")
        if len(key) != KEY_BYTES:
            raise ConfigError(f"{path}: a storage key is {KEY_BYTES} random bytes, this file has {len(key)}")
        return cls(AESGCM(key))

    def seal(self, value: bytes, where: str) -> bytes:
        nonce = os.urandom(_NONCE_BYTES)
        return MAGIC + nonce + self.aead.encrypt(nonce, value, where.encode("utf-8"))

    def open(self, value: bytes, where: str) -> bytes:
        if not is_sealed(value):
            return value
        start = len(MAGIC)
        try:
            return self.aead.decrypt(value[start:start + _NONCE_BYTES], value[start + _NONCE_BYTES:],
                                     where.encode("utf-8"))
        except InvalidTag:
            raise StoreError(f"{where}: does not decrypt with this node's storage key (another key, "
                             "or the value was moved or altered)") from None


def is_sealed(value: bytes) -> bool:
    return value[:len(MAGIC)] == MAGIC


def where(table: str, column: str, key: str) -> str:
    """The additional data binding a value to its place: ``outbox.body[MESSAGE_ID]``."""
    return f"{table}.{column}[{key}]"


def refuse_sealed(value: bytes, place: str) -> bytes:
    """What a store without the key does with a value: plain ones pass, sealed ones are refused."""
    if is_sealed(value):
        raise StoreError(f"{place} is encrypted at rest and this node has no [privacy] storage_key configured")
    return value
