"""A node's configuration: one TOML file, with ``EXCHANGE_*`` environment overrides.

Paths in the file are relative to the file's directory, so a node directory can be moved
whole. An override names the section and key: ``EXCHANGE_AUDIT_CHECKPOINT_EVERY_SECONDS=30``.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from exchange.codes import AgencyCode
from exchange.errors import ConfigError, InvalidCode

ENV_PREFIX = "EXCHANGE_"


@dataclass(frozen=True)
class NodeConfig:
    """Everything a node reads at start; built once, never changed while it runs."""

    source: Path
    agency: AgencyCode
    state_dir: Path
    ca: Path
    cert: Path
    key: Path
    checkpoint_key: Path
    rules: Path
    crl: Path | None = None
    broker: str = ""
    embedded: Path | None = None
    """The SQLite file the nodes of one host share when no broker is configured."""
    delivery: Path | None = None
    """The folder where the agency system takes incoming dossiers (default: state_dir/outbox)."""
    dropfolder: Path | None = None
    """The drop folder where the agency system puts dossiers to submit (default: state_dir/dropfolder)."""
    http_port: int = 0
    """The agency-system HTTP API's port; 0: no API."""
    http_host: str = "127.0.0.1"
    http_max_connections: int = 64
    """Connections the HTTP API serves at once; more are closed at once (each holds a descriptor)."""
    token: str = ""
    webhook: str = ""
    """The agency system's URL to push incoming dossiers and status updates to; empty: none."""
    """The API token; set it through EXCHANGE_AGENCY_SYSTEM_TOKEN rather than in the file."""
    checkpoint_every_entries: int = 1000
    checkpoint_every_seconds: float = 60.0
    metrics_port: int = 0
    log_format: str = "auto"

    @property
    def database(self) -> Path:
        return self.state_dir / "node.db"

    @property
    def embedded_transport(self) -> Path:
        return self.embedded or self.state_dir.parent / "transport.db"

    @property
    def delivery_dir(self) -> Path:
        return self.delivery or self.state_dir / "outbox"

    @property
    def dropfolder_dir(self) -> Path:
        return self.dropfolder or self.state_dir / "dropfolder"

    @property
    def checkpoint_verifier(self) -> Path:
        return self.checkpoint_key.with_suffix(".pub")

    @classmethod
    def load(cls, path: Path, environ: Mapping[str, str] | None = None) -> NodeConfig:
        try:
            raw = tomllib.loads(path.read_text("utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"{path}: no such configuration file") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: {exc}") from None
        merged = _overrides(raw, os.environ if environ is None else environ)
        return _build(path, merged)


_LAYOUT: dict[str, tuple[str, str]] = {
    "agency": ("node", "agency"), "state_dir": ("node", "state_dir"), "log_format": ("node", "log_format"),
    "metrics_port": ("node", "metrics_port"),
    "ca": ("pki", "ca"), "crl": ("pki", "crl"), "cert": ("pki", "cert"), "key": ("pki", "key"),
    "checkpoint_key": ("audit", "checkpoint_key"),
    "checkpoint_every_entries": ("audit", "checkpoint_every_entries"),
    "checkpoint_every_seconds": ("audit", "checkpoint_every_seconds"),
    "rules": ("rules", "dir"), "broker": ("transport", "broker"), "embedded": ("transport", "embedded"),
    "delivery": ("agency_system", "outbox"),
    "dropfolder": ("agency_system", "dropfolder"),
    "http_port": ("agency_system", "http_port"), "http_host": ("agency_system", "http_host"),
    "http_max_connections": ("agency_system", "http_max_connections"),
    "token": ("agency_system", "token"), "webhook": ("agency_system", "webhook"),
}
_PATHS = {"state_dir", "ca", "crl", "cert", "key", "checkpoint_key", "rules", "embedded", "delivery", "dropfolder"}


def _overrides(raw: dict[str, Any], environ: Mapping[str, str]) -> dict[str, Any]:
    merged = {section: dict(values) for section, values in raw.items() if isinstance(values, dict)}
    for section, key in _LAYOUT.values():
        name = f"{ENV_PREFIX}{section}_{key}".upper()
        if name in environ:
            merged.setdefault(section, {})[key] = environ[name]
    return merged


def _build(path: Path, merged: dict[str, Any]) -> NodeConfig:
    base = path.resolve().parent
    values: dict[str, Any] = {"source": path}
    for name, (section, key) in _LAYOUT.items():
        value = merged.get(section, {}).get(key)
        if value is None or value == "":
            continue
        values[name] = (base / str(value)) if name in _PATHS else value
    missing = [f"[{_LAYOUT[f.name][0]}] {_LAYOUT[f.name][1]}" for f in fields(NodeConfig)
               if f.name in _LAYOUT and f.name not in values and f.default is f.default_factory]
    if missing:
        raise ConfigError(f"{path}: missing {', '.join(missing)}")
    try:
        values["agency"] = AgencyCode(str(values["agency"]))
        for name in ("checkpoint_every_entries", "metrics_port", "http_port", "http_max_connections"):
            if name in values:
                values[name] = int(values[name])
        if "checkpoint_every_seconds" in values:
            values["checkpoint_every_seconds"] = float(values["checkpoint_every_seconds"])
    except (InvalidCode, ValueError) as exc:
        raise ConfigError(f"{path}: {exc}") from None
    return NodeConfig(**values)
