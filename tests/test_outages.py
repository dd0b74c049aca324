"""Transport outages end no node and stall no loop: a process holding the embedded transport's
write lock (as a SIGSTOPped peer would) or a stopped broker leaves every node running and pinging
its watchdog, health says unhealthy past the threshold and healthy again after, and every dossier
arrives exactly once; `exchange check` judges the heartbeat; delivery fsyncs what it writes."""

from __future__ import annotations

import dataclasses
import os
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from unittest import mock

import pytest

from exchange.adapters.embedded import BUSY_TIMEOUT_S, EmbeddedTransport
from exchange.codes import AgencyCode, ProcedureCode
from exchange.demo import samples
from exchange.errors import TransportUnavailable
from exchange.node import health
from exchange.node.config import NodeConfig
from exchange.node.context import NodeContext
from exchange.node.daemon import Daemon
from exchange.node.delivery import Deliverer, DeliveryWorker
from exchange.node.dispatcher import Dispatcher
from exchange.node.metrics import Metrics
from exchange.node.transport import TransportHealth
from exchange.node.workflow import submit
from tests.node_cluster import COMMUNE, INSURANCE, POLICE, Cluster, NotifySocket, cli, events_named, wait_until
from tests.rabbit_node import RabbitNode

AGENCIES = (COMMUNE, POLICE, INSURANCE)
HOLD_S = 32.0
"""Longer than the embedded transport's busy timeout used to be (30 s), after which nodes exited."""
MAX_WATCHDOG_GAP_S = 2.0


@contextmanager
def write_lock(path: Path) -> Iterator[sqlite3.Connection]:
    """Hold the SQLite file's write lock, as a process stopped inside a transaction does."""
    holder = sqlite3.connect(path, isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")
        yield holder
        holder.execute("ROLLBACK")
    finally:
        holder.close()


def birth_dossier(sequence: int) -> bytes:
    spec = samples.SampleSpec(AgencyCode(COMMUNE), ProcedureCode("2.000986"), size_kb=2, sequence=sequence)
    return samples.to_bytes(samples.sample_dossier(spec))


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[tuple[NodeContext, NodeContext, EmbeddedTransport]]:
    """The commune and the police as contexts (no processes) over one embedded transport, every
    queue of the birth route declared."""
    cluster = Cluster(tmp_path)
    cluster.init(COMMUNE, POLICE)
    with ExitStack() as stack:
        commune, police = (stack.enter_context(NodeContext.open(NodeConfig.load(cluster.config(a))))
                           for a in (COMMUNE, POLICE))
        transport = stack.enter_context(EmbeddedTransport(commune.config.embedded_transport))
        for agency in AGENCIES:
            transport.declare(AgencyCode(agency))
        yield commune, police, transport


def gauge(daemon: Daemon, name: str) -> float | None:
    return daemon.metrics.registry.get_sample_value(name)


def dossiers_at(ctx: NodeContext) -> int:
    with sqlite3.connect(ctx.config.database) as conn:
        return int(conn.execute("SELECT COUNT(*) FROM dossiers").fetchone()[0])


# in one process


def test_a_batch_met_by_an_outage_fails_at_once(pair: tuple[NodeContext, NodeContext, EmbeddedTransport]) -> None:
    """With the transport locked, thirty due rows wait for the lock once, not once per row: all
    are marked failed together and TransportUnavailable reaches the loop for its backoff."""
    commune, _, transport = pair
    for sequence in range(1, 16):
        submit(commune, birth_dossier(sequence))
    with write_lock(transport.path):
        started = time.monotonic()
        with pytest.raises(TransportUnavailable, match="locked"):
            Dispatcher(commune, transport, Metrics()).dispatch_or_raise()
        elapsed = time.monotonic() - started
    assert elapsed < 3 * BUSY_TIMEOUT_S
    failures = [f for (f,) in commune.store.conn.execute("SELECT failures FROM outbox")]
    assert failures == [1] * 30


def test_the_loop_rides_out_a_held_lock(monkeypatch: pytest.MonkeyPatch,
                                        pair: tuple[NodeContext, NodeContext, EmbeddedTransport]) -> None:
    """A node started while another process holds the transport's write lock comes up and pings
    its watchdog at least every second; past its threshold it reports unhealthy (gauge and
    heartbeat); once the lock is gone it is healthy again and takes in every waiting dossier."""
    commune, police, transport = pair
    for sequence in range(1, 11):
        submit(commune, birth_dossier(sequence))
    Dispatcher(commune, transport, Metrics()).dispatch()
    notify = NotifySocket()
    monkeypatch.setenv("NOTIFY_SOCKET", notify.address)
    own = EmbeddedTransport(police.config.embedded_transport)
    daemon = Daemon(police, own, down_after=1.0)
    exits: list[int] = []
    runner = threading.Thread(target=lambda: exits.append(daemon.run()))
    try:
        with write_lock(transport.path):
            started = time.monotonic()
            runner.start()
            wait_until(lambda: bool(notify.pings("READY=1")), 10, "READY=1")
            time.sleep(2.5)
            assert gauge(daemon, "exchange_healthy") == 0.0
            assert gauge(daemon, "exchange_transport_up") == 0.0
            (problem,) = health.judge(police.config.state_dir, time.time(), down_after=1.0)
            assert "locked" in problem
            gap = notify.max_gap(notify.pings("READY=1")[0], time.monotonic())
            released = time.monotonic()
        assert time.monotonic() - started < 5  # nothing above waited on the lock for long
        assert gap < 1.5
        wait_until(lambda: dossiers_at(police) == 10, 30, "the dossiers at the police")
        wait_until(lambda: gauge(daemon, "exchange_healthy") == 1.0, 10, "healthy again")
        wait_until(lambda: health.judge(police.config.state_dir, time.time(), down_after=1.0) == [], 10,
                   "a healthy heartbeat")
        assert notify.max_gap(released, time.monotonic()) < MAX_WATCHDOG_GAP_S
    finally:
        daemon.stopping.set()
        if runner.is_alive():
            runner.join(30)
        own.close()
        notify.close()
    assert exits == [0]


def test_delivery_fsyncs_its_files_not_the_host(pair: tuple[NodeContext, NodeContext, EmbeddedTransport]) -> None:
    """Delivery makes each file durable with fsync of the file and of both folders, and never
    flushes the whole host with os.sync (which would raise here)."""
    commune, police, transport = pair
    for sequence in range(1, 4):
        submit(commune, birth_dossier(sequence))
    Dispatcher(commune, transport, Metrics()).dispatch()
    with transport.consume(AgencyCode(POLICE)) as consumer:
        assert Daemon(police, transport).inbound(consumer, 2.0)
    synced: list[str] = []
    real_fsync = os.fsync

    def recording_fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    def no_sync() -> None:
        raise AssertionError("os.sync flushes the whole host")

    deliverer = Deliverer(police, Metrics())
    with mock.patch("os.fsync", recording_fsync), mock.patch("os.sync", no_sync):
        assert deliverer.deliver() == 3
    files = sorted(deliverer.folder.glob("*.xml"))
    assert len(files) == 3
    for path in files:
        assert any(Path(s).parent == deliverer.folder / ".pending" and path.name in Path(s).name for s in synced)
    assert str(deliverer.folder / ".pending") in synced
    assert str(deliverer.folder) in synced


# exchange check judges the heartbeat


@pytest.fixture(scope="module")
def node_dir(tmp_path_factory: pytest.TempPathFactory) -> Cluster:
    cluster = Cluster(tmp_path_factory.mktemp("check"))
    cluster.init(COMMUNE)
    return cluster


def beat(node: Cluster, *, age: float = 0.0, up: bool = True, down_for: float = 0.0, running: bool = True) -> None:
    now = time.time()
    state = TransportHealth(up, now - down_for, "" if up else "database is locked")
    heartbeat = health.Heartbeat.of(COMMUNE, state, running=running)
    dataclasses.replace(heartbeat, at=now - age).write(node.root / "nodes" / COMMUNE / "state")


@pytest.mark.parametrize(("write", "code", "says"), [
    (lambda n: beat(n), 0, "healthy: "),
    (lambda n: beat(n, up=False, down_for=5), 0, "healthy: "),
    (lambda n: beat(n, up=False, down_for=45), 1, "unhealthy: the transport has been down for 45s"),
    (lambda n: beat(n, age=60), 1, "unhealthy: the loop last ran 60s ago"),
    (lambda n: beat(n, running=False), 1, "unhealthy: the node stopped at "),
    (lambda n: (n.root / "nodes" / COMMUNE / "state" / health.HEARTBEAT_FILE).unlink(missing_ok=True), 1,
     "unhealthy: no heartbeat"),
], ids=["up", "down-briefly", "down-too-long", "stale", "stopped", "missing"])
def test_check_judges_the_heartbeat(capsys: pytest.CaptureFixture[str], node_dir: Cluster,
                                    write: Callable[[Cluster], None], code: int, says: str) -> None:
    """`exchange check` exits 0 while the heartbeat is fresh and the transport up or down for
    less than 30 s, and 1 with the reason when it is stale, missing, final, or down too long."""
    write(node_dir)
    assert cli("check", "--config", node_dir.config(COMMUNE)) == code
    captured = capsys.readouterr()
    assert (captured.out if code == 0 else captured.err).startswith(says)


# node processes


def start_watched(cluster: Cluster, sockets: dict[str, NotifySocket], *agencies: str) -> None:
    for agency in agencies:
        sockets[agency] = NotifySocket()
        process = cluster.start(agency, NOTIFY_SOCKET=sockets[agency].address)
        assert process.poll() is None, f"{agency} did not start"


def start_with_traffic(cluster: Cluster, sockets: dict[str, NotifySocket], count: int) -> list[str]:
    """The three nodes started, each with a NotifySocket, and ``count`` dossiers at the police."""
    cluster.init(*AGENCIES)
    start_watched(cluster, sockets, *AGENCIES)
    codes = [cluster.submit(i) for i in range(1, count + 1)]
    wait_until(lambda: cluster.ready(POLICE, "residence") >= set(codes), 60, "traffic before the outage")
    return codes


def complete_route(cluster: Cluster, codes: list[str]) -> None:
    """Do every step of the birth route for ``codes`` and check each file arrived exactly once."""
    cluster.finish_birth_route(codes, timeout=90)
    assert {row["code"]: row["state"] for row in cluster.status(COMMUNE)} == dict.fromkeys(codes, "completed")
    # one merged transfer at the join and a status from each branch: 3 files per dossier
    wait_until(lambda: len(cluster.delivered(COMMUNE)) == 3 * len(codes), 60, "deliveries at the commune")
    for agency in (POLICE, INSURANCE):
        files = [f.name for f in cluster.delivered(agency)]
        transfers = [name for name in files if name.startswith("transfer-")]  # beside them, completion notices
        assert sorted(code for code in codes for name in transfers if code in name) == sorted(codes)


def stop_cleanly(cluster: Cluster, sockets: dict[str, NotifySocket]) -> None:
    try:
        for agency in AGENCIES:
            if agency in cluster.processes:
                assert cluster.stop(agency) == 0
            assert not events_named(cluster.log(agency), "transfer.dead_lettered")
    finally:
        cluster.stop_all()
        for notify in sockets.values():
            notify.close()


def test_a_lock_holder_ends_no_node(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Three nodes while the embedded transport's write lock is held for 32 s (longer than the old
    busy timeout, after which they exited): none exits, each pings its watchdog at least every
    2 s, logs the outage once, reports unhealthy; after the release every dossier, sent before or
    during the lock, arrives exactly once."""
    cluster = Cluster(tmp_path)
    sockets: dict[str, NotifySocket] = {}
    try:
        codes = start_with_traffic(cluster, sockets, 3)
        offsets = {a: cluster.log(a).stat().st_size for a in AGENCIES}
        with write_lock(tmp_path / "nodes" / "transport.db"):
            started = time.monotonic()
            codes += [cluster.submit(i) for i in range(4, 7)]
            time.sleep(max(0.0, started + HOLD_S - time.monotonic()))
            assert cli("check", "--config", cluster.config(COMMUNE), "--down-after", "10") == 1
            assert "unhealthy: the transport has been down" in capsys.readouterr().err
            ended = time.monotonic()
        for agency in AGENCIES:
            assert cluster.processes[agency].poll() is None, f"{agency} exited"
            assert sockets[agency].max_gap(started, ended) < MAX_WATCHDOG_GAP_S
            assert len(events_named(cluster.log(agency), "transport.unavailable", offsets[agency])) == 1
        complete_route(cluster, codes)
        wait_until(lambda: cli("check", "--config", cluster.config(COMMUNE), "--down-after", "10") == 0, 30,
                   "healthy again")
    finally:
        stop_cleanly(cluster, sockets)


def test_a_node_starts_while_its_transport_is_locked(tmp_path: Path) -> None:
    """Nodes started while the transport's write lock is held come up (they used to exit), report
    unhealthy past the threshold, become healthy once the lock is released, and carry dossiers."""
    cluster = Cluster(tmp_path)
    cluster.init(*AGENCIES)
    sockets: dict[str, NotifySocket] = {}
    try:
        with write_lock(tmp_path / "nodes" / "transport.db"):
            start_watched(cluster, sockets, *AGENCIES)
            wait_until(lambda: cli("check", "--config", cluster.config(COMMUNE), "--down-after", "1") == 1, 20,
                       "unhealthy while locked")
            for agency in AGENCIES:
                assert cluster.processes[agency].poll() is None, f"{agency} exited"
        for agency in AGENCIES:
            wait_until(lambda a=agency: cli("check", "--config", cluster.config(a), "--down-after", "1") == 0, 30,
                       f"{agency} healthy")
        complete_route(cluster, [cluster.submit(i) for i in range(1, 3)])
    finally:
        stop_cleanly(cluster, sockets)


def private_vhost(node: RabbitNode) -> str:
    """A vhost of this test's own on the private node (the guest user may use it); its URL."""
    vhost = f"outage-{secrets.token_hex(4)}"
    node.ctl("add_vhost", vhost)
    node.ctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
    return f"amqp://guest:guest@127.0.0.1:{node.port}/{vhost}"


def test_a_broker_outage_stalls_no_loop(tmp_path: Path, private_rabbit: RabbitNode) -> None:
    """Three nodes on a private broker that stops its application for 5 s: each pings its
    watchdog at least every 2 s throughout, reconnects, and every dossier arrives exactly once."""
    cluster = Cluster(tmp_path, private_vhost(private_rabbit))
    sockets: dict[str, NotifySocket] = {}
    try:
        codes = start_with_traffic(cluster, sockets, 2)
        started = time.monotonic()
        private_rabbit.stop_app()
        codes += [cluster.submit(i) for i in range(3, 5)]
        time.sleep(max(0.0, started + 5 - time.monotonic()))
        private_rabbit.start_app()
        wait_until(lambda: all(cli("check", "--config", cluster.config(a)) == 0 for a in AGENCIES), 60,
                   "healthy again")
        complete_route(cluster, codes)
        ended = time.monotonic()
        for agency in AGENCIES:
            assert cluster.processes[agency].poll() is None, f"{agency} exited"
            assert sockets[agency].max_gap(started, ended) < MAX_WATCHDOG_GAP_S
    finally:
        stop_cleanly(cluster, sockets)


def test_the_loop_rides_out_its_own_database_held(monkeypatch: pytest.MonkeyPatch,
                                                   pair: tuple[NodeContext, NodeContext, EmbeddedTransport]) -> None:
    """An operator's command holding the node's own database past the busy timeout costs the loop
    a retry, never the node: it keeps running and takes in the waiting dossiers once it is free."""
    from structlog.testing import capture_logs

    from exchange.store import db

    commune, police, transport = pair
    monkeypatch.setattr(db, "BUSY_TIMEOUT_MS", 300)
    notify = NotifySocket()
    monkeypatch.setenv("NOTIFY_SOCKET", notify.address)
    exits: list[int] = []
    with police.store.transaction() as conn:  # a status for the commune, due once the lock is held
        conn.execute("INSERT INTO outbox (message_id, recipient, kind, body, envelope_sha256, next_attempt, created) "
                     "VALUES ('held', ?, 'status', x'00', 'x', ?, 0)", (COMMUNE, time.time() + 3))
    with NodeContext.open(police.config) as ctx, EmbeddedTransport(police.config.embedded_transport) as own, \
            capture_logs() as events:
        daemon = Daemon(ctx, own)
        runner = threading.Thread(target=lambda: exits.append(daemon.run()))
        runner.start()
        try:
            wait_until(lambda: bool(notify.pings("READY=1")), 10, "READY=1")
            with write_lock(police.config.database):
                for sequence in range(1, 6):
                    submit(commune, birth_dossier(sequence))
                Dispatcher(commune, transport, Metrics()).dispatch()
                wait_until(lambda: {"store.unavailable", "inbound.store_failed"} <= {e["event"] for e in events},
                           15, "the loop to meet the held database, in a window and in the dispatcher")
                assert runner.is_alive()
            wait_until(lambda: dossiers_at(police) == 5, 30, "the dossiers at the police")
        finally:
            daemon.stopping.set()
            runner.join(30)
            notify.close()
    assert exits == [0]


def test_the_delivery_thread_outlives_a_fault(pair: tuple[NodeContext, NodeContext, EmbeddedTransport]) -> None:
    """Fault injection: the first delivery on the delivery thread fails with an unexpected error;
    the thread logs it and delivers at its next try, instead of ending deliveries for good."""
    commune, police, transport = pair
    submit(commune, birth_dossier(1))
    Dispatcher(commune, transport, Metrics()).dispatch()
    with transport.consume(AgencyCode(POLICE)) as consumer:
        assert Daemon(police, transport).inbound(consumer, 2.0)
    deliverer = Deliverer(police.for_thread(), Metrics())
    real, calls = deliverer.deliver, []

    def failing_once(limit: int = 256) -> int:
        calls.append(limit)
        if len(calls) == 1:
            raise RuntimeError("injected")
        return real(limit)

    deliverer.deliver = failing_once  # type: ignore[method-assign]
    worker = DeliveryWorker(deliverer, poll_s=0.05)
    try:
        worker.poke()
        wait_until(lambda: bool(list(deliverer.folder.glob("*.xml"))), 30, "the delivery after the fault")
    finally:
        worker.close()
    assert len(calls) >= 2
