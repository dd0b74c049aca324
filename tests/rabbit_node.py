"""A private RabbitMQ node for tests that stop, kill or reconfigure a broker, so that the host's
broker (127.0.0.1:5672, shared by everyone on the machine) is never stopped and never gains users.

The node lives in a temporary folder under /tmp: its own node name, free loopback ports for AMQP
and Erlang distribution, its own database, logs, config (listeners on 127.0.0.1 only), an empty
plugins file unless told (no management port to clash over; ``plugins=("rabbitmq_shovel",)``
for a shovel) and its own Erlang cookie, or a cluster's (``HOME`` points into
the folder). It registers with the host's epmd on 4369, which every Erlang node shares. It runs
in the foreground as a child of the test process, in its own process group, and is controlled
with ``rabbitmqctl -n NAME``. ``private_node()`` always stops it and removes its folder.

With ``tls=Tls(ca)`` the node also listens for AMQPS on a loopback port (on 127.0.0.1, and on
127.0.0.2, an address its certificate does not name), with a server certificate for
``localhost``/127.0.0.1 issued by ``ca``, which it also trusts for client certificates
(``verify_peer``, a client certificate optional); with ``external=True`` it enables
``rabbitmq_auth_mechanism_ssl`` and logs clients in by their certificate's CN (EXTERNAL, beside
PLAIN). The plain AMQP listener stays, for the guest user's administration.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pika
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from exchange import clock
from exchange.envelope import pki

RABBIT_SBIN = Path("/usr/lib/rabbitmq/bin")
"""The unwrapped scripts: /usr/sbin's wrappers switch to the rabbitmq user and its environment."""
START_TIMEOUT_S = 90.0
STOP_TIMEOUT_S = 30.0
CTL_TIMEOUT_S = 60.0


class RabbitNodeError(Exception):
    """The private node could not be started or controlled."""


def free_port() -> int:
    """A TCP port nobody listens on at 127.0.0.1 right now, below the kernel's ephemeral range: a
    client retrying a stopped broker on an ephemeral port can connect to itself (TCP simultaneous
    open) and hold the very port the broker must listen on again (seen: eaddrinuse at start_app)."""
    low = _ephemeral_low()
    for _ in range(200):
        port = secrets.choice(range(max(1024, low - 12000), low))
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RabbitNodeError(f"no free port below {low} on 127.0.0.1")


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def tool(name: str) -> str:
    """The path of a RabbitMQ script, unwrapped where the package ships it so."""
    unwrapped = RABBIT_SBIN / name
    if unwrapped.exists():
        return str(unwrapped)
    found = shutil.which(name)
    if found is None:
        raise RabbitNodeError(f"{name} is not installed")
    return found


SERVER_NAMES = ("localhost", "127.0.0.1")
"""What the private node's server certificate names."""
WRONG_HOST = "127.0.0.2"
"""A loopback address the TLS node also listens on, that its certificate does not name."""


def issue_server_cert(ca: pki.CertificateAuthority, out: Path, names: tuple[str, ...] = SERVER_NAMES,
                      *, days: int = 30) -> tuple[Path, Path]:
    """A TLS server certificate (P-256 ECDSA, serverAuth) for ``names`` (DNS names or IP
    addresses), issued by ``ca``: ``out/server.pem`` and ``out/server-key.pem``. Test code only:
    ``pki`` issues agency signing certificates, not servers'."""
    key = pki.new_key()
    alt: list[x509.GeneralName] = []
    for name in names:
        try:
            alt.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            alt.append(x509.DNSName(name))
    start = clock.now() - dt.timedelta(minutes=5)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=False,
                                     crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(alt), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), critical=False)
        .sign(ca.key, hashes.SHA256())
    )
    out.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = out / "server.pem", out / "server-key.pem"
    cert_path.write_bytes(pki.cert_pem(cert))
    key_path.write_bytes(pki.key_pem(key))
    key_path.chmod(0o600)
    return cert_path, key_path


@dataclass(frozen=True)
class Tls:
    """A TLS listener for the private node: its certificate issued by ``ca``, which it also
    trusts for clients' certificates; ``external``: log clients in by certificate (EXTERNAL)."""

    ca: pki.CertificateAuthority
    external: bool = False


class RabbitNode:
    """One private RabbitMQ node: its AMQP URL, and the operations an outage test needs."""

    def __init__(self, root: Path, tls: Tls | None = None, *, cookie: str | None = None,
                 plugins: tuple[str, ...] = ()) -> None:
        self.root = root
        self.name = f"exch-test-{secrets.token_hex(4)}@localhost"
        self.port = free_port()
        self.dist_port = free_port()
        self.tls = tls
        self.tls_port = free_port() if tls is not None else 0
        self.cookie = cookie or secrets.token_hex(16).upper()
        """The Erlang cookie: its own, or one shared by the nodes of a private cluster."""
        self.plugins = plugins
        self._process: subprocess.Popen[bytes] | None = None
        self._write_files()

    @property
    def ca_file(self) -> Path:
        """The CA that issued the TLS listener's certificate (TLS nodes only)."""
        if self.tls is None:
            raise RabbitNodeError("this node has no TLS listener")
        return self.tls.ca.directory / pki.CA_CERT

    def tls_url_for(self, user: str = "", password: str = "", host: str = "127.0.0.1") -> str:
        """The AMQPS URL of the TLS listener on the default vhost (no user: EXTERNAL's)."""
        if not self.tls_port:
            raise RabbitNodeError("this node has no TLS listener")
        login = f"{user}:{password}@" if user else ""
        return f"amqps://{login}{host}:{self.tls_port}/%2F"

    @property
    def url(self) -> str:
        """The guest user's URL on the default vhost."""
        return self.url_for("guest", "guest")

    def url_for(self, user: str, password: str) -> str:
        return f"amqp://{user}:{password}@127.0.0.1:{self.port}/%2F"

    @property
    def pid_file(self) -> Path:
        return self.root / "beam.pid"

    def _write_files(self) -> None:
        for folder in ("mnesia", "log", "home"):
            (self.root / folder).mkdir(parents=True, exist_ok=True)
        conf = (f"listeners.tcp.1 = 127.0.0.1:{self.port}\nloopback_users = none\n"
                "log.console = false\nlog.file.level = info\n")
        plugins = list(self.plugins)
        if self.tls is not None:
            conf += self._tls_conf(self.tls)
            if self.tls.external:
                plugins.append("rabbitmq_auth_mechanism_ssl")
        (self.root / "rabbitmq.conf").write_text(conf, "utf-8")
        (self.root / "enabled_plugins").write_text(f"[{','.join(plugins)}].\n", "utf-8")
        (self.root / "rabbitmq-env.conf").write_text("# empty: not the host's /etc/rabbitmq one\n", "utf-8")
        cookie = self.root / "home" / ".erlang.cookie"
        cookie.write_text(self.cookie, "ascii")
        cookie.chmod(0o400)

    def _tls_conf(self, tls: Tls) -> str:
        """The TLS listener's lines of rabbitmq.conf (the recipe docs/rabbitmq.md shows)."""
        cert, key = issue_server_cert(tls.ca, self.root / "tls")
        lines = [
            f"listeners.ssl.1 = 127.0.0.1:{self.tls_port}",
            f"listeners.ssl.2 = {WRONG_HOST}:{self.tls_port}",
            f"ssl_options.cacertfile = {self.ca_file}",
            f"ssl_options.certfile = {cert}",
            f"ssl_options.keyfile = {key}",
            "ssl_options.verify = verify_peer",
            "ssl_options.fail_if_no_peer_cert = false",
        ]
        if tls.external:
            lines += ["auth_mechanisms.1 = PLAIN", "auth_mechanisms.2 = EXTERNAL",
                      "ssl_cert_login_from = common_name"]
        return "\n".join(lines) + "\n"

    def env(self) -> dict[str, str]:
        """The environment for the node and for rabbitmqctl: every path inside the folder."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RABBITMQ_", "ERL_"))}
        env.update({
            "HOME": str(self.root / "home"),  # its own .erlang.cookie
            "RABBITMQ_NODENAME": self.name,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_CONF_ENV_FILE": str(self.root / "rabbitmq-env.conf"),
            "RABBITMQ_CONFIG_FILE": str(self.root / "rabbitmq.conf"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(self.root / "advanced.config"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.root / "enabled_plugins"),
            "RABBITMQ_MNESIA_BASE": str(self.root / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.root / "log"),
            "RABBITMQ_PID_FILE": str(self.pid_file),
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "-kernel inet_dist_use_interface {127,0,0,1}",
            "ERL_EPMD_ADDRESS": "127.0.0.1",
        })
        return env

    # Running the node -------------------------------------------------------------------

    def start(self) -> None:
        """Start the node's Erlang VM and wait until it accepts AMQP connections."""
        if self.running:
            return
        self.spawn()
        self.await_startup()

    def spawn(self) -> None:
        """Start the node's Erlang VM without waiting for it (nodes of a cluster start together)."""
        self.pid_file.unlink(missing_ok=True)
        with open(self.root / "log" / "server.out", "ab") as out:
            self._process = subprocess.Popen([tool("rabbitmq-server")], env=self.env(), cwd=self.root,
                                             stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                             start_new_session=True)

    @property
    def running(self) -> bool:
        """Whether the node's VM is alive (the app inside may be stopped)."""
        return self._process is not None and self._process.poll() is None

    def await_startup(self, timeout: float = START_TIMEOUT_S) -> None:
        """Wait until the broker takes an AMQP login."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.running:
                raise RabbitNodeError(f"the node {self.name} exited while starting; see {self.root / 'log'}")
            try:
                pika.BlockingConnection(pika.URLParameters(self.url + "?connection_attempts=1&socket_timeout=2")).close()
                return
            except pika.exceptions.AMQPError:
                time.sleep(0.25)
        raise RabbitNodeError(f"the node {self.name} did not accept connections within {timeout:.0f}s")

    def ctl(self, *args: str, timeout: float = CTL_TIMEOUT_S, command: str = "rabbitmqctl") -> str:
        """``rabbitmqctl -n NAME ARGS`` (or another of the CLI tools, ``rabbitmq-queues``…); its
        output, or RabbitNodeError with its stderr."""
        done = subprocess.run([tool(command), "-n", self.name, *args], env=self.env(), cwd=self.root,
                              capture_output=True, text=True, timeout=timeout, check=False)
        if done.returncode != 0:
            raise RabbitNodeError(f"{command} {' '.join(args)} failed ({done.returncode}): {done.stderr.strip()}")
        return done.stdout

    def stop_app(self) -> None:
        """Stop the broker application (connections drop, the port closes); the VM stays."""
        self.ctl("stop_app")

    def start_app(self) -> None:
        """Start the broker application again and wait until it takes logins."""
        self.ctl("start_app")
        self.await_startup()

    def kill(self) -> None:
        """``kill -9`` the node's Erlang VM, as a crash or an OOM kill would."""
        os.kill(self.beam_pid(), signal.SIGKILL)
        if self._process is not None:
            self._process.wait(timeout=STOP_TIMEOUT_S)

    def restart(self) -> None:
        """Stop the node (killed if it will not stop) and start it again on the same ports and data."""
        self.stop()
        self.start()

    def ensure_running(self) -> None:
        """Bring the node back to a running broker, whatever a previous test left it in."""
        if not self.running:
            self.start()
            return
        try:
            self.await_startup(timeout=3)
        except RabbitNodeError:
            self.start_app()

    def beam_pid(self) -> int:
        """The process id of the node's Erlang VM (the script that started it is its parent)."""
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError, ValueError):
                return int(self.pid_file.read_text("ascii").strip())
            time.sleep(0.1)
        raise RabbitNodeError(f"no pid file for {self.name}")

    def stop(self) -> None:
        """Stop the node: gracefully if it answers, else kill its whole process group."""
        process = self._process
        if process is None or process.poll() is not None:
            self._process = None
            return
        with contextlib.suppress(RabbitNodeError, subprocess.TimeoutExpired):
            self.ctl("stop", timeout=STOP_TIMEOUT_S)
        try:
            process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=STOP_TIMEOUT_S)
        self._process = None

    # Users ------------------------------------------------------------------------------

    def add_user(self, user: str, password: str) -> None:
        self.ctl("add_user", user, password)

    def set_permissions(self, user: str, configure: str, write: str, read: str, vhost: str = "/") -> None:
        self.ctl("set_permissions", "-p", vhost, user, configure, write, read)

    def delete_user(self, user: str) -> None:
        self.ctl("delete_user", user)


@contextlib.contextmanager
def private_node(tls: Tls | None = None, *, plugins: tuple[str, ...] = ()) -> Iterator[RabbitNode]:
    """A started private node in a fresh folder under /tmp (with a TLS listener if ``tls``, and
    ``plugins`` enabled); stopped and removed at the end, even when starting it failed halfway."""
    root = Path(tempfile.mkdtemp(prefix="exch-rabbit-", dir="/tmp"))
    node = None
    try:
        node = RabbitNode(root, tls, plugins=plugins)
        node.start()
        yield node
    finally:
        if node is not None:
            node.stop()
        shutil.rmtree(root, ignore_errors=True)
