"""A node's configuration: one TOML file, with ``EXCHANGE_*`` environment overrides.

Paths in the file are relative to the file's directory, so a node directory can be moved
whole. An override names the section and key: ``EXCHANGE_AUDIT_CHECKPOINT_EVERY_SECONDS=30``.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlsplit, urlunsplit

from exchange.codes import AgencyCode
from exchange.errors import ConfigError, InvalidCode

ENV_PREFIX = "EXCHANGE_"
BROKER_PASSWORD_ENV = "EXCHANGE_BROKER_PASSWORD"  # noqa: S105 - the variable's name, not a password
"""The broker's password, when neither node.toml nor a credentials file should hold it."""


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
    brokers: tuple[str, ...] = ()
    """The broker's URL, or its cluster nodes' URLs in order of preference (the node fails over from
    one to the next); the password comes from ``broker_credentials`` or the environment."""
    queue_type: str = "quorum"
    """``[transport] queue_type``: the agency queues' type, ``quorum`` (replicated across a cluster)
    or ``classic`` (one node's, for a single broker that cannot spare the replication's cost)."""
    broker_credentials: Path | None = None
    """A file (0600) holding the broker's password, so that node.toml holds none."""
    broker_ca: Path | None = None
    """The CA that issued the broker's TLS certificate (``amqps://``); default: ``[pki] ca``."""
    broker_cert: Path | None = None
    """The client certificate presented to the broker over TLS; default: ``[pki] cert``."""
    broker_key: Path | None = None
    """Its key; default: ``[pki] key``."""
    broker_auth: str = "password"
    """How the node logs in to the broker: ``password`` (the URL's user, its password from
    ``broker_credentials`` or the environment) or ``certificate`` (SASL EXTERNAL: the broker takes
    the user name from the client certificate; needs ``amqps://``)."""
    anchor: Path | None = None
    """The configuration authority's certificate that bundles must be signed with (``[config] anchor``)."""
    encrypt: str = "when-known"
    """``[privacy] encrypt``: ``when-known`` encrypts each transfer to its recipient's certificate when
    this node has it (from the configuration bundle, or learnt from the recipient's envelopes);
    ``always`` refuses to hand a dossier to an agency whose certificate it does not have (the hand-off
    fails with the reason, changing nothing); ``never`` sends payloads signed but in clear."""
    storage_key: Path | None = None
    """``[privacy] storage_key``: 32 random bytes (0600) that encrypt the dossiers this node keeps in
    its database (outbox, inbox, dossiers), for hosts shared with other services; none: in clear."""
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
    verifiers: int | None = None
    """``[node] verifiers``: worker processes that verify incoming envelopes while the loop records
    (0: the loop verifies alone); by default one when the host has more than one core."""

    @property
    def verifier_processes(self) -> int:
        if self.verifiers is not None:
            return self.verifiers
        return 1 if (os.cpu_count() or 1) > 1 else 0

    @property
    def database(self) -> Path:
        return self.state_dir / "node.db"

    @property
    def broker(self) -> str:
        """The first broker URL ("" for the embedded transport)."""
        return self.brokers[0] if self.brokers else ""

    @property
    def broker_ca_file(self) -> Path:
        return self.broker_ca or self.ca

    @property
    def broker_cert_file(self) -> Path:
        return self.broker_cert or self.cert

    @property
    def broker_key_file(self) -> Path:
        return self.broker_key or self.key

    @property
    def broker_external(self) -> bool:
        return self.broker_auth == "certificate"

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
        environ = os.environ if environ is None else environ
        config = _build(path, _overrides(raw, environ))
        return _with_password(config, environ.get(BROKER_PASSWORD_ENV) or _secret(config.broker_credentials))


_LAYOUT: dict[str, tuple[str, str]] = {
    "agency": ("node", "agency"), "state_dir": ("node", "state_dir"), "log_format": ("node", "log_format"),
    "metrics_port": ("node", "metrics_port"), "verifiers": ("node", "verifiers"),
    "ca": ("pki", "ca"), "crl": ("pki", "crl"), "cert": ("pki", "cert"), "key": ("pki", "key"),
    "checkpoint_key": ("audit", "checkpoint_key"),
    "checkpoint_every_entries": ("audit", "checkpoint_every_entries"),
    "checkpoint_every_seconds": ("audit", "checkpoint_every_seconds"),
    "rules": ("rules", "dir"), "brokers": ("transport", "broker"), "embedded": ("transport", "embedded"),
    "queue_type": ("transport", "queue_type"),
    "broker_credentials": ("transport", "broker_credentials"),
    "broker_ca": ("transport", "broker_ca"), "broker_cert": ("transport", "broker_cert"),
    "broker_key": ("transport", "broker_key"), "broker_auth": ("transport", "broker_auth"),
    "delivery": ("agency_system", "outbox"),
    "dropfolder": ("agency_system", "dropfolder"),
    "http_port": ("agency_system", "http_port"), "http_host": ("agency_system", "http_host"),
    "http_max_connections": ("agency_system", "http_max_connections"),
    "token": ("agency_system", "token"), "webhook": ("agency_system", "webhook"),
    "anchor": ("config", "anchor"),
    "encrypt": ("privacy", "encrypt"), "storage_key": ("privacy", "storage_key"),
}
_PATHS = {"state_dir", "ca", "crl", "cert", "key", "checkpoint_key", "rules", "embedded", "delivery", "dropfolder",
          "broker_credentials", "broker_ca", "broker_cert", "broker_key", "anchor", "storage_key"}
BROKER_AUTH = ("password", "certificate")
ENCRYPT_CHOICES = ("when-known", "always", "never")
QUEUE_TYPES = ("quorum", "classic")
ACTIVE_BUNDLE = Path("config") / "active"
"""Under the state folder: the configuration bundle in force, once one is installed (a link to
its version's folder); its rules, CA and CRL take the place of those node.toml names."""


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
    except InvalidCode as exc:
        raise ConfigError(f"{path}: {exc}") from None
    for name, kind in (("checkpoint_every_entries", int), ("metrics_port", int), ("http_port", int),
                       ("http_max_connections", int), ("verifiers", int), ("checkpoint_every_seconds", float)):
        if name in values:
            try:
                values[name] = kind(values[name])
            except ValueError:
                section, key = _LAYOUT[name]
                raise ConfigError(f"{path}: [{section}] {key} is {values[name]!r}; expected a number") from None
    if "brokers" in values:
        values["brokers"] = _broker_urls(path, values["brokers"])
    _check_choices(path, values)
    return _with_bundle(NodeConfig(**values))


def _check_choices(path: Path, values: dict[str, Any]) -> None:
    """The settings that take one of a few values, or a count."""
    if values.get("verifiers", 0) < 0:
        raise ConfigError(f"{path}: [node] verifiers is {values['verifiers']}; expected 0 (the loop verifies "
                          "alone) or a number of worker processes")
    if values.get("queue_type", "quorum") not in QUEUE_TYPES:
        raise ConfigError(f"{path}: [transport] queue_type is {values['queue_type']!r}; expected one of "
                          f"{', '.join(QUEUE_TYPES)}")
    if values.get("broker_auth", "password") not in BROKER_AUTH:
        raise ConfigError(f"{path}: [transport] broker_auth is {values['broker_auth']!r}, not one of "
                          f"{', '.join(BROKER_AUTH)}")
    if values.get("encrypt", "when-known") not in ENCRYPT_CHOICES:
        raise ConfigError(f"{path}: [privacy] encrypt is {values['encrypt']!r}; expected one of "
                          f"{', '.join(ENCRYPT_CHOICES)}")


def _broker_urls(path: Path, value: Any) -> tuple[str, ...]:
    """``[transport] broker``: one URL, a TOML list of URLs, or (from the environment) URLs separated
    by commas; the node tries them in this order."""
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, list | tuple) or not all(isinstance(item, str) for item in items):
        kinds = sorted({type(item).__name__ for item in items} - {"str"}) if isinstance(items, list) else []
        found = f"a list holding {', '.join(kinds)}" if kinds else f"a {type(value).__name__}"
        raise ConfigError(f"{path}: [transport] broker must be a URL or a list of URLs, not {found}")
    urls = tuple(item.strip() for item in items if item.strip())
    if not urls:
        raise ConfigError(f"{path}: [transport] broker is an empty list; give at least one URL, or remove "
                          "it for the embedded transport")
    return urls


def _with_bundle(config: NodeConfig) -> NodeConfig:
    """The paths of the bundle in force, if one is installed, in place of node.toml's."""
    active = config.state_dir / ACTIVE_BUNDLE
    if not active.is_dir():
        return config
    crl = active / "crl.pem"
    return replace(config, rules=active / "rules", ca=active / "ca.pem", crl=crl if crl.exists() else None)


# The broker's password: never in node.toml --------------------------------------------------

def split_password(url: str) -> tuple[str, str | None]:
    """The URL without its password, and the password (percent-decoded) if it had one."""
    parts = urlsplit(url)
    userinfo, at, host = parts.netloc.rpartition("@")
    user, colon, password = userinfo.partition(":")
    if not at or not colon:
        return url, None
    return urlunsplit(parts._replace(netloc=f"{user}@{host}")), unquote(password)


def with_password(url: str, password: str) -> str:
    """The URL with ``password`` put in (a password the URL already has is kept)."""
    parts = urlsplit(url)
    userinfo, at, host = parts.netloc.rpartition("@")
    if not parts.netloc or ":" in userinfo:
        return url
    return urlunsplit(parts._replace(netloc=f"{userinfo}:{quote(password, safe='')}@{host}"))


def _with_password(config: NodeConfig, password: str | None) -> NodeConfig:
    if not password or not config.brokers:
        return config
    return replace(config, brokers=tuple(with_password(url, password) for url in config.brokers))


def _secret(path: Path | None) -> str | None:
    """A password file's first line; refused if others than its owner may read it."""
    if path is None:
        return None
    try:
        mode = path.stat().st_mode
        text = path.read_text("utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: {exc.strerror or exc}") from None
    if mode & 0o077:
        raise ConfigError(f"{path}: the broker's password is readable by others (mode {mode & 0o777:o}): "
                          f"chmod 600 {path}")
    return text.splitlines()[0] if text.strip() else None


def active_bundle_version(config: NodeConfig) -> int | None:
    """The version of the configuration bundle in force at this node (None: none installed)."""
    link = config.state_dir / ACTIVE_BUNDLE
    return int(Path(os.readlink(link)).name) if link.is_symlink() else None
