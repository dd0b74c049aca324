"""A private RabbitMQ node for tests that stop, kill or reconfigure a broker, so that the host's
broker (127.0.0.1:5672, shared by everyone on the machine) is never stopped and never gains users.

The node lives in a temporary folder under /tmp: its own node name, free loopback ports for AMQP
and Erlang distribution, its own database, logs, config (listeners on 127.0.0.1 only), an empty
plugins file (no management port to clash over) and its own Erlang cookie (``HOME`` points into
the folder). It registers with the host's epmd on 4369, which every Erlang node shares. It runs
in the foreground as a child of the test process, in its own process group, and is controlled
with ``rabbitmqctl -n NAME``. ``private_node()`` always stops it and removes its folder.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pika

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


class RabbitNode:
    """One private RabbitMQ node: its AMQP URL, and the operations an outage test needs."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.name = f"exch-test-{secrets.token_hex(4)}@localhost"
        self.port = free_port()
        self.dist_port = free_port()
        self._process: subprocess.Popen[bytes] | None = None
        self._write_files()

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
        (self.root / "rabbitmq.conf").write_text(
            f"listeners.tcp.1 = 127.0.0.1:{self.port}\nloopback_users = none\n"
            "log.console = false\nlog.file.level = info\n", "utf-8")
        (self.root / "enabled_plugins").write_text("[].\n", "utf-8")
        (self.root / "rabbitmq-env.conf").write_text("# empty: not the host's /etc/rabbitmq one\n", "utf-8")
        cookie = self.root / "home" / ".erlang.cookie"
        cookie.write_text(secrets.token_hex(16).upper(), "ascii")
        cookie.chmod(0o400)

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
        self.pid_file.unlink(missing_ok=True)
        with open(self.root / "log" / "server.out", "ab") as out:
            self._process = subprocess.Popen([tool("rabbitmq-server")], env=self.env(), cwd=self.root,
                                             stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                             start_new_session=True)
        self.await_startup()

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

    def ctl(self, *args: str, timeout: float = CTL_TIMEOUT_S) -> str:
        """``rabbitmqctl -n NAME ARGS``; its output, or RabbitNodeError with its stderr."""
        done = subprocess.run([tool("rabbitmqctl"), "-n", self.name, *args], env=self.env(), cwd=self.root,
                              capture_output=True, text=True, timeout=timeout, check=False)
        if done.returncode != 0:
            raise RabbitNodeError(f"rabbitmqctl {' '.join(args)} failed ({done.returncode}): {done.stderr.strip()}")
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
def private_node() -> Iterator[RabbitNode]:
    """A started private node in a fresh folder under /tmp; stopped and removed at the end, even
    when starting it failed halfway."""
    root = Path(tempfile.mkdtemp(prefix="exch-rabbit-", dir="/tmp"))
    node = None
    try:
        node = RabbitNode(root)
        node.start()
        yield node
    finally:
        if node is not None:
            node.stop()
        shutil.rmtree(root, ignore_errors=True)
