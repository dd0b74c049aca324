"""A bounded chaos soak: node processes on one transport, dossiers through a route with a join,
random faults (SIGKILL and SIGSTOP of nodes; stop and kill -9 of a private broker node), then a
bounded drain and the invariants of the backbone, checked from what the nodes left on disk.

``tests/test_soak.py`` runs a short one in CI; ``benchmarks/soak.py`` runs a long one and prints
the figures. Four nodes: two commune desks (Dực Yên and Quảng An) that receive birth
registrations (2.000986: the commune hands the dossier to the district police and to social
insurance in parallel; both hand back; the commune returns the result), the police and the
social insurance. The agency systems are played in-process: each pass completes every step
that is ready at each node, as a desk officer would.
"""

from __future__ import annotations

import os
import random
import signal
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

from exchange.adapters import open_transport
from exchange.audit.bundle import export
from exchange.audit.entries import Entry, Event
from exchange.audit.reconcile import reconcile
from exchange.audit.sources import BundleSource, DatabaseSource, Trust
from exchange.audit.verify import verify
from exchange.codes import AgencyCode, DossierCode
from exchange.demo import samples
from exchange.errors import ExchangeError
from exchange.node.config import NodeConfig
from exchange.node.context import NodeContext
from exchange.node.workflow import complete, submit
from exchange.store.states import DossierState, OutboxState
from tests import agencies
from tests.node_cluster import Cluster, NotifySocket, log_events
from tests.rabbit_node import RabbitNode

DESKS = (str(agencies.DUC_YEN), str(agencies.QUANG_AN))
NODES = (*DESKS, str(agencies.DAM_HA_POLICE), str(agencies.DAM_HA_INSURANCE))
WITNESS = str(agencies.DAM_HA_INSURANCE)
"""Stopped but never killed, so that its memory and descriptors are measured over the whole soak."""
SETTLED = {OutboxState.ACKNOWLEDGED, OutboxState.SENT}


@dataclass(frozen=True)
class Plan:
    """How much and how hard: ``dossiers`` submitted over ``fault_seconds`` of faults, one fault
    every ``fault_every`` seconds (a random pick in that range), then ``drain_seconds`` at most
    for everything to settle."""

    dossiers: int = 120
    fault_seconds: float = 40.0
    fault_every: tuple[float, float] = (1.0, 3.0)
    drain_seconds: float = 180.0
    seed: int = 11
    broker_faults: bool = True


@dataclass
class Figures:
    """What a soak measured, for the benchmark's report and the test's assertions."""

    transport: str
    dossiers: int = 0
    faults: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0
    drain_seconds: float = 0.0
    max_watchdog_gap: float = 0.0
    rss_kib: dict[str, tuple[int, int]] = field(default_factory=dict)
    fds: dict[str, tuple[int, int]] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    def report(self) -> str:
        rss = ", ".join(f"{a[-9:]} {b}→{c} KiB" for a, (b, c) in self.rss_kib.items())
        fds = ", ".join(f"{a[-9:]} {b}→{c}" for a, (b, c) in self.fds.items())
        faults = ", ".join(f"{name} {count}" for name, count in sorted(self.faults.items()))
        return (f"{self.transport}: {self.dossiers} dossiers, {sum(self.faults.values())} faults ({faults}); "
                f"{self.seconds:.0f} s in all, drained in {self.drain_seconds:.1f} s; longest watchdog gap "
                f"{self.max_watchdog_gap:.1f} s\n  RSS (after start → at the end, nodes never restarted): {rss}\n"
                f"  descriptors: {fds}\n  problems: {len(self.problems)}"
                + "".join(f"\n    - {p}" for p in self.problems))


class Soak:
    """One soak run in ``root`` on the embedded transport, or on ``rabbit`` (a private node)."""

    def __init__(self, root: Path, plan: Plan, rabbit: RabbitNode | None = None) -> None:
        self.root, self.plan, self.rabbit = root, plan, rabbit
        root.mkdir(parents=True, exist_ok=True)
        self.random = random.Random(plan.seed)
        self.cluster = Cluster(root, broker=rabbit.url if rabbit else "")
        self.figures = Figures("rabbitmq" if rabbit else "embedded")
        self.notify = {agency: NotifySocket() for agency in NODES}
        self.contexts: dict[str, NodeContext] = {}
        self.submitted: dict[str, str] = {}  # dossier code -> origin desk
        self.stopped: dict[str, float] = {}  # SIGSTOPped node -> when to SIGCONT
        self.restart_at: dict[str, float] = {}  # SIGKILLed node -> when to start it again
        self.broker_back_at = 0.0
        self._broker_restart: Callable[[], None] = lambda: None
        self.runs: dict[str, list[list[float]]] = {agency: [] for agency in NODES}
        """Each node's process lives as [started, ended] monotonic times (ended inf while it runs)."""
        self._sequence = 0

    # the run

    def run(self) -> Figures:
        started = time.monotonic()
        self.cluster.init(*NODES)
        with ExitStack() as stack:
            stack.callback(self._close)
            for agency in NODES:
                self._start(agency)
            self.contexts = {a: NodeContext.open(NodeConfig.load(self.cluster.config(a))) for a in NODES}
            baseline = {a: _usage(self.cluster.processes[a].pid) for a in NODES}
            self._faults()
            drain_started = time.monotonic()
            self._drain()
            self.figures.drain_seconds = time.monotonic() - drain_started
            self._record_usage(baseline)
            self.figures.max_watchdog_gap = self._watchdog_gap()
            self.cluster.stop_all()
        self.figures.seconds = time.monotonic() - started
        self.figures.dossiers = len(self.submitted)
        self._check()
        return self.figures

    def _start(self, agency: str) -> None:
        self.runs[agency].append([time.monotonic(), float("inf")])
        self.cluster.start(agency, NOTIFY_SOCKET=self.notify[agency].address)

    def _faults(self) -> None:
        """Submit the dossiers over the fault period while faults land; agency systems keep working."""
        end = time.monotonic() + self.plan.fault_seconds
        next_fault = time.monotonic() + self.random.uniform(*self.plan.fault_every)
        per_pass = max(1, self.plan.dossiers // max(1, int(self.plan.fault_seconds / 0.5)))
        while time.monotonic() < end or len(self.submitted) < self.plan.dossiers:
            self._submit(min(per_pass, self.plan.dossiers - len(self.submitted)))
            if time.monotonic() >= next_fault and time.monotonic() < end:
                self._fault()
                next_fault = time.monotonic() + self.random.uniform(*self.plan.fault_every)
            self._recover(force=False)
            self._work()
            time.sleep(0.3)
        self._recover(force=True)

    def _drain(self) -> None:
        deadline = time.monotonic() + self.plan.drain_seconds
        while time.monotonic() < deadline:
            self._work()
            if self._settled():
                return
            time.sleep(0.5)
        self.figures.problems.append(f"not settled after {self.plan.drain_seconds:.0f} s of drain: "
                                     + self._unsettled())

    # faults

    def _fault(self) -> None:
        choices: list[Callable[[], str]] = [self._kill_node, self._stop_node]
        if self.rabbit is not None and self.plan.broker_faults and not self.broker_back_at:
            choices += [self._stop_broker, self._kill_broker]
        name = self.random.choice(choices)()
        self.figures.faults[name] += 1

    def _running(self) -> list[str]:
        return [a for a in NODES if a not in self.stopped and a not in self.restart_at]

    def _kill_node(self) -> str:
        agency = self.random.choice([a for a in self._running() if a != WITNESS])
        self.cluster.processes[agency].send_signal(signal.SIGKILL)
        self.cluster.processes[agency].wait()
        self.runs[agency][-1][1] = time.monotonic()
        self.restart_at[agency] = time.monotonic() + self.random.uniform(0.2, 2.0)
        return "SIGKILL node"

    def _stop_node(self) -> str:
        agency = self.random.choice(self._running())
        self.cluster.processes[agency].send_signal(signal.SIGSTOP)
        self.stopped[agency] = time.monotonic() + self.random.uniform(0.5, 3.0)
        return "SIGSTOP node"

    def _stop_broker(self) -> str:
        assert self.rabbit is not None
        self.rabbit.stop_app()
        self.broker_back_at = time.monotonic() + self.random.uniform(1.0, 5.0)
        self._broker_restart = self.rabbit.start_app
        return "broker stop_app"

    def _kill_broker(self) -> str:
        assert self.rabbit is not None
        self.rabbit.kill()
        self.broker_back_at = time.monotonic() + self.random.uniform(1.0, 4.0)
        self._broker_restart = self.rabbit.ensure_running
        return "broker kill -9"

    def _recover(self, *, force: bool) -> None:
        now = time.monotonic()
        for agency, at in list(self.stopped.items()):
            if force or now >= at:
                self.cluster.processes[agency].send_signal(signal.SIGCONT)
                del self.stopped[agency]
        if self.broker_back_at and (force or now >= self.broker_back_at):
            self._broker_restart()
            self.broker_back_at = 0.0
        for agency, at in list(self.restart_at.items()):
            if force or now >= at:
                self._start(agency)
                del self.restart_at[agency]

    # the agency systems

    def _submit(self, count: int) -> None:
        for _ in range(count):
            desk = DESKS[(self._sequence + 1) % len(DESKS)]
            if desk in self.stopped:
                return  # its node may hold the database's lock: the desk waits for the next pass
            self._sequence += 1
            spec = samples.SampleSpec(AgencyCode(desk), agencies.BIRTH, size_kb=3, sequence=self._sequence)
            data = samples.to_bytes(samples.sample_dossier(spec))
            with suppress_busy():
                self.submitted[str(submit(self.contexts[desk], data))] = desk

    def _work(self) -> None:
        for agency, ctx in self.contexts.items():
            if agency in self.stopped:
                continue  # a stopped node may hold its database's lock: its desk waits too
            with suppress_busy():
                for step in ctx.store.ready_steps(agency):
                    complete(ctx, DossierCode(step.dossier), step.step)

    # invariants

    def _settled(self) -> bool:
        return not self._unsettled()

    def _unsettled(self) -> str:
        open_dossiers = [code for code, desk in self.submitted.items()
                         if (row := self.contexts[desk].store.dossier(code)) is None
                         or row.state is not DossierState.COMPLETED]
        unsettled = Counter(row[0] for ctx in self.contexts.values() for row in ctx.store.conn.execute(
            "SELECT state FROM outbox WHERE state NOT IN (?, ?)", tuple(SETTLED)))
        if not open_dossiers and not unsettled:
            return ""
        return f"{len(open_dossiers)} dossiers not completed, outbox rows not settled: {dict(unsettled)}"

    def _check(self) -> None:
        problems = self.figures.problems
        problems += self._delivery_problems()
        problems += self._transport_problems()
        problems += self._audit_problems()
        problems += self._log_problems()
        if self.figures.max_watchdog_gap > 10.0:
            problems.append(f"a watchdog gap of {self.figures.max_watchdog_gap:.1f} s")

    def _delivery_problems(self) -> list[str]:
        problems = []
        for agency in NODES:
            config = NodeConfig.load(self.cluster.config(agency))
            files = sorted(config.delivery_dir.glob("*.xml"))
            ids = Counter("-".join(f.stem.split("-")[-5:]) for f in files)
            twice = [m for m, n in ids.items() if n > 1]
            if twice:
                problems.append(f"{agency}: {len(twice)} envelopes delivered more than once")
            with NodeContext.open(config) as ctx:
                audited = Counter(e.message_id for e in _entries(ctx) if e.event is Event.DELIVERED
                                  and "via" not in e.detail)
                if set(audited) != set(ids):
                    problems.append(f"{agency}: {len(set(ids) ^ set(audited))} files and audited deliveries differ")
        return problems

    def _transport_problems(self) -> list[str]:
        problems = []
        config = NodeConfig.load(self.cluster.config(NODES[0]))
        with open_transport(config) as transport:
            for agency in NODES:
                if letters := transport.dead_letters(AgencyCode(agency)):
                    problems.append(f"{agency}: {len(letters)} dead letters: {letters[0].reason}")
                if depth := transport.depth(AgencyCode(agency)):
                    problems.append(f"{agency}: {depth} messages left in its queue")
        for agency in NODES:
            with NodeContext.open(NodeConfig.load(self.cluster.config(agency))) as ctx:
                states = Counter(OutboxState(s) for (s,) in ctx.store.conn.execute("SELECT state FROM outbox"))
                if bad := {s: n for s, n in states.items() if s not in SETTLED}:
                    problems.append(f"{agency}: outbox rows not settled: {bad}")
        return problems

    def _audit_problems(self) -> list[str]:
        problems, bundles = [], {}
        for agency in NODES:
            config = NodeConfig.load(self.cluster.config(agency))
            source = DatabaseSource(config.database)
            report = verify(source, Trust.from_cert_file(config.cert))
            problems += [f"{agency}: audit verify: {p}" for p in report.problems]
            bundles[agency] = self.root / f"{agency}.bundle"
            export(source, bundles[agency])
            source.conn.close()
        for i, a in enumerate(NODES):
            for b in NODES[i + 1:]:
                _, gaps = reconcile(BundleSource(bundles[a]), BundleSource(bundles[b]))
                problems += [f"reconcile {a} ↔ {b}: {gap}" for gap in gaps if "no entries" not in gap]
        return problems

    def _log_problems(self) -> list[str]:
        problems = []
        for agency in NODES:
            text = self.cluster.log(agency).read_text(encoding="utf-8", errors="replace")
            if "Traceback" in text:
                problems.append(f"{agency}: a traceback in its log")
            errors = [e for e in log_events(self.cluster.log(agency)) if e.get("level") == "error"
                      and not str(e.get("event", "")).startswith(EXPECTED_ERRORS)]
            if errors:
                problems.append(f"{agency}: {len(errors)} error events, first {str(errors[0])[:300]}")
        return problems

    # figures

    def _watchdog_gap(self) -> float:
        """The longest time a node process went without a watchdog ping between two of its own
        pings (a SIGSTOP of a few seconds counts, as systemd would see it; a kill ends a process,
        and its successor's pings are its own)."""
        gaps = []
        for agency, runs in self.runs.items():
            pings = self.notify[agency].pings()
            for started, ended in runs:
                mine = [at for at in pings if started <= at < ended]
                gaps += [b - a for a, b in zip(mine, mine[1:], strict=False)]
        return max(gaps, default=0.0)

    def _record_usage(self, baseline: dict[str, tuple[int, int]]) -> None:
        for agency in NODES:
            if len(self.runs[agency]) == 1:  # the same process since the start
                now = _usage(self.cluster.processes[agency].pid)
                self.figures.rss_kib[agency] = (baseline[agency][0], now[0])
                self.figures.fds[agency] = (baseline[agency][1], now[1])

    def _close(self) -> None:
        for agency in list(self.stopped):
            with suppress(ProcessLookupError):
                self.cluster.processes[agency].send_signal(signal.SIGCONT)
        self.stopped.clear()
        if self.broker_back_at:
            self._broker_restart()
        for ctx in self.contexts.values():
            ctx.close()
        self.cluster.stop_all()
        for socket in self.notify.values():
            socket.close()


EXPECTED_ERRORS = ("transport.", "amqp.")
"""Error events a node logs for the faults the soak itself causes (its broker, or the transport
lock a stopped peer holds): by their prefix."""


@contextmanager
def suppress_busy() -> Iterator[None]:
    """An agency system's call that met a stopped node's lock, or a race with the node: tried again
    on the next pass, as a desk officer would."""
    with suppress(ExchangeError):
        yield


def _entries(ctx: NodeContext) -> list[Entry]:
    return [Entry.decode(data)[1] for _, data in ctx.audit.entries()]


def _usage(pid: int) -> tuple[int, int]:
    """(resident memory in KiB, open descriptors) of a process."""
    rss = 0
    with suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
    try:
        fds = len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        fds = 0
    return rss, fds


