"""Broker nodes lost under load: the soak's district (tests/soak.py: four node processes, birth
registrations through a route with a join, the agency systems played in-process) on a private
three-node RabbitMQ cluster (tests/rabbit_cluster.py), every node.toml listing the three brokers.
At planned moments a broker node is SIGKILLed and later started again; afterwards every invariant
of the backbone is checked as the soak checks it (nothing lost, nothing delivered twice, every
audit log verified and every pair reconciled, no dead letters, no traceback).

Each dossier's time from submission to the return step ready at its desk (the whole route, both
branches, over the broker) is recorded, for ``benchmarks/cluster.py``'s throughput and p99 per phase.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

from exchange.codes import DossierCode
from exchange.node.workflow import complete
from tests.node_cluster import Cluster
from tests.rabbit_cluster import RabbitCluster, list_brokers
from tests.soak import DESKS, Plan, Soak, suppress_busy

RETURN_STEP = "return"


@dataclass(frozen=True)
class Loss:
    """Broker node ``node`` (an index into the cluster) SIGKILLed ``at`` seconds into the load,
    started again ``down_for`` seconds later."""

    node: int
    at: float
    down_for: float


@dataclass
class ListedCluster(Cluster):
    """The district's node directories, each node.toml listing every broker of the cluster."""

    urls: tuple[str, ...] = ()

    def init(self, *agencies: str) -> None:
        super().init(*agencies)
        for agency in agencies:
            list_brokers(self.config(agency), *self.urls)


@dataclass(frozen=True)
class Phase:
    """Dossiers submitted in one phase of the run: how many came back, how fast."""

    name: str
    seconds: float
    latencies: tuple[float, ...]

    @property
    def throughput(self) -> float:
        return len(self.latencies) / self.seconds if self.seconds else 0.0

    def percentile(self, q: float) -> float:
        if not self.latencies:
            return float("nan")
        if len(self.latencies) == 1:
            return self.latencies[0]
        return statistics.quantiles(self.latencies, n=100, method="inclusive")[round(q) - 1]


@dataclass
class Timeline:
    began: float = 0.0
    events: list[tuple[float, str]] = field(default_factory=list)
    submitted: dict[str, float] = field(default_factory=dict)
    returned: dict[str, float] = field(default_factory=dict)

    def note(self, what: str) -> None:
        self.events.append((time.monotonic() - self.began, what))

    def phase(self, name: str, start: float, end: float) -> Phase:
        """Dossiers submitted between ``start`` and ``end`` seconds into the load."""
        codes = [c for c, at in self.submitted.items() if start <= at - self.began < end]
        latencies = tuple(sorted(self.returned[c] - self.submitted[c] for c in codes if c in self.returned))
        return Phase(name, end - start, latencies)


class ClusterLoss(Soak):
    """The soak's district on ``rabbits``, with the broker losses of ``losses`` and no other fault."""

    def __init__(self, root: Path, plan: Plan, rabbits: RabbitCluster, losses: tuple[Loss, ...]) -> None:
        super().__init__(root, plan, rabbits.nodes[0])
        self.rabbits = rabbits
        self.losses = losses
        self.cluster = ListedCluster(root, broker=rabbits.urls[0], urls=tuple(rabbits.urls))
        self.figures.transport = f"a {len(rabbits.nodes)}-node RabbitMQ cluster"
        self.timeline = Timeline()

    def _faults(self) -> None:
        """Submit over the plan's period while the losses land; agency systems keep working."""
        self.timeline.began = time.monotonic()
        kills = sorted(self.losses, key=lambda loss: loss.at)
        starts = sorted((loss.at + loss.down_for, loss.node) for loss in self.losses)
        per_pass = max(1, self.plan.dossiers // max(1, int(self.plan.fault_seconds / 0.5)))
        end = self.timeline.began + self.plan.fault_seconds
        while time.monotonic() < end or len(self.submitted) < self.plan.dossiers:
            self._submit(min(per_pass, self.plan.dossiers - len(self.submitted)))
            elapsed = time.monotonic() - self.timeline.began
            while kills and kills[0].at <= elapsed:
                self._kill(kills.pop(0).node)
            while starts and starts[0][0] <= elapsed:
                self._restart(starts.pop(0)[1])
            self._work()
            time.sleep(0.3)
        for _, index in starts:
            self._restart(index)
        for node in self.rabbits.nodes:
            node.await_startup()
        self.timeline.note("every broker node up")

    def _kill(self, index: int) -> None:
        node = self.rabbits.nodes[index]
        node.await_startup()  # a node still starting from an earlier loss is waited for first
        node.kill()
        self.figures.faults["SIGKILL broker node"] += 1
        self.timeline.note(f"SIGKILL broker node {index + 1}")

    def _restart(self, index: int) -> None:
        """Start the node's VM again without waiting for it: the load goes on meanwhile."""
        self.rabbits.nodes[index].spawn()
        self.timeline.note(f"broker node {index + 1} started again")

    def _submit(self, count: int) -> None:
        before = set(self.submitted)
        super()._submit(count)
        now = time.monotonic()
        for code in set(self.submitted) - before:
            self.timeline.submitted[code] = now

    def _work(self) -> None:
        """Every ready step completed, as the soak's agency systems do; a return step ready at a
        desk marks its dossier's round trip."""
        now = time.monotonic()
        for agency, ctx in self.contexts.items():
            with suppress_busy():
                for step in ctx.store.ready_steps(agency):
                    if agency in DESKS and step.step == RETURN_STEP:
                        self.timeline.returned.setdefault(step.dossier, now)
                    complete(ctx, DossierCode(step.dossier), step.step)

    def _close(self) -> None:
        try:
            super()._close()
        finally:
            for node in self.rabbits.nodes:
                if not node.running:
                    node.spawn()
