"""``exchange demo``: an area's nodes as real processes, a realistic mix of dossiers, a report.

It copies the shipped routing rules into ``OUT/rules`` and runs on them as they stand today, after
the 2025 reform (no district level): the new communes of the former Đầm Hà and Hải Hà districts
(xã Đầm Hà, xã Quảng Tân, xã Quảng Hà: People's Committees, commune police, public administration
service centres), the grassroots social insurance, the province police, the area's
land-registration branch and grassroots tax office, the provincial land registration office.
Its nodes are those the routes of its dossiers name. It sets up a provincial CA, starts each node
as its own process, and plays the agency systems: it submits dossiers of procedures in force,
completes each step where it becomes ready, lets one agency system be down for a while, enters one
dossier received days ago (so its steps run late and the origin gets an apology with a new date),
and sends one envelope from an agency off the route (refused, dead-lettered, audited). Three birth
registrations (3.000722) leave the happy path: the commune police refuse one at the residence step
(it ends refused everywhere, the reason back at the desk), ask for more documents on another (the
desk supplements it, the clock stands still meanwhile), and the applicant withdraws the third at
the desk. Every birth registration meets a join (residence then the ID card, and the social
insurance, in parallel, then back to the desk), where the desk's system gets the dossier once,
merged.

One more dossier crosses a reorganisation. The copy of the rules rehearses a merger: xã Đường
Hoa (its committee, police and service centre) ends tomorrow and passes to xã Quảng Hà. A birth
registration received at xã Đường Hoa reaches its police; then the copy is rewritten with the
merger ended yesterday (the day has come), every node reloads its rules (SIGHUP), ``rules
migrate`` hands the police's step to Quảng Hà's police, and the dossier completes there, its
result returned by Quảng Hà's desk, each move audited as ``re-routed``.

Then it stops the nodes, verifies every audit log, reconciles every pair of nodes that exchanged
envelopes, and writes ``report.html``: one summary row per dossier (state, due date, on time or
late, apology sent), then the routes and each dossier's timeline. It prints its progress as it
goes, a line at a time even when piped.
"""

from __future__ import annotations

import datetime as dt
import html
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from lxml import etree

from exchange.adapters import open_transport
from exchange.audit.bundle import export as export_bundle
from exchange.audit.entries import Entry
from exchange.audit.reconcile import reconcile
from exchange.audit.sources import BundleSource, DatabaseSource, Trust
from exchange.audit.verify import verify as verify_log
from exchange.codes import AgencyCode, DossierCode, ProcedureCode
from exchange.demo import samples
from exchange.envelope import dossier as dossiers
from exchange.envelope import pki
from exchange.envelope.dossier import Supplement
from exchange.envelope.model import Header, Kind
from exchange.envelope.sealing import Signer
from exchange.errors import ConfigError, ExchangeError, StepNotReady
from exchange.files import write_atomic
from exchange.node import migrate
from exchange.node.config import NodeConfig
from exchange.node.context import NodeContext
from exchange.node.provisioning import init_node
from exchange.node.status import local, view
from exchange.node.transport import Message
from exchange.node.workflow import complete, submit, supplement, withdraw
from exchange.rules import tools as rules_tools
from exchange.rules.load import RULES_NS
from exchange.rules.load import load as load_rules
from exchange.rules.model import RuleSet
from exchange.store.states import DossierState, StepState
from exchange.xml import safexml

ICT = dt.timezone(dt.timedelta(hours=7))
COMMUNES = ("000.00.21.H49", "000.00.22.H49", "000.00.23.H49")
"""The People's Committees of xã Đầm Hà, xã Quảng Tân and xã Quảng Hà: the civil-status and residence desks."""
CENTRES = ("000.02.21.H49", "000.02.22.H49")
"""The public administration service centres of xã Đầm Hà and xã Quảng Tân: the land desks."""
INTRUDER = "000.01.25.H49"  # Công an xã Quảng Đức: a valid certificate, on none of the demo's routes
SLOW_AGENCY = "000.01.09.H49"  # the grassroots social insurance's system is down for a while
SLOW_SECONDS = 6.0
MIX = (("3.000722", COMMUNES), ("1.004194", COMMUNES), ("2.002913", COMMUNES), ("2.000635", COMMUNES),
       ("1.012784", CENTRES), ("1.012786", CENTRES))
"""Procedures in force since the 2025 reform, each with the desks that receive it."""
DEADLINE_S = 90.0
BIRTH = "3.000722"
SCENARIOS = {2: "refused", 3: "supplement", 5: "withdrawn"}
"""Dossiers (by their order of submission) that leave the happy path; each is a birth registration."""
MERGER = {"000.00.24.H49": "000.00.23.H49",  # UBND xã Đường Hoa → UBND xã Quảng Hà
          "000.01.24.H49": "000.01.23.H49",  # Công an xã Đường Hoa → Công an xã Quảng Hà
          "000.02.24.H49": "000.02.23.H49"}  # its service centre → Quảng Hà's
"""The merger the demo rehearses in its copy of the rules: each of xã Đường Hoa's agencies ends and
passes to xã Quảng Hà's, which are in force already and get nothing new."""
MERGING, MERGING_POLICE = "000.00.24.H49", "000.01.24.H49"
CROSSING_RECEIVED = dt.time(21, 0)
"""The crossing dossier came in online yesterday evening: after the 15:00 cut-off, it counts from the
next working day, so the desk registering it today is on time."""
REFUSAL = "Người được khai sinh đã được đăng ký thường trú tại địa phương khác."
MISSING = "Thiếu bản sao giấy chứng nhận kết hôn của cha mẹ."
WITHDRAWAL = "Người nộp xin rút hồ sơ để bổ sung giấy tờ nhân thân."
FINISHED = (DossierState.COMPLETED, DossierState.REFUSED, DossierState.WITHDRAWN)
SUPPLEMENT_FILE = Supplement("giay-chung-nhan-ket-hon.pdf", "application/pdf", b"%PDF-1.7\n% ban sao\n",
                             "Bản sao giấy chứng nhận kết hôn")
MARKER = ".exchange-demo"
"""In the folder a demo made: only such a folder (or an empty one) is replaced by the next run."""


@dataclass
class Demo:
    out: Path
    broker: str
    count: int
    say: Callable[[str], None] = field(default=lambda text: print(text, flush=True))
    rules_source: Path = field(default_factory=lambda: Path(str(resources.files("exchange") / "routing_rules")))
    """The shipped rules: the demo runs on a copy of them (``rules_dir``), which it edits."""
    nodes: tuple[str, ...] = ()
    """The agencies with a running node: every agency a route of the demo's dossiers names."""
    today: dt.date = field(default_factory=lambda: dt.datetime.now(ICT).date())
    crossing: str = ""
    """The dossier that crosses the merger."""
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    contexts: dict[str, NodeContext] = field(default_factory=dict)
    submitted: dict[str, tuple[str, str, float]] = field(default_factory=dict)
    late_code: str = ""
    started: float = 0.0
    scenarios: dict[str, str] = field(default_factory=dict)
    """Dossier code → the scenario it plays (refused, supplement, withdrawn)."""
    asked: set[str] = field(default_factory=set)

    @property
    def agencies(self) -> tuple[str, ...]:
        """Every node the demo sets up: the running ones, then the intruder (set up, never started)."""
        return (*self.nodes, INTRUDER)

    @property
    def rules_dir(self) -> Path:
        return self.out / "rules"

    def config(self, agency: str) -> Path:
        return self.out / "nodes" / agency / "node.toml"

    # set up, start, stop -----------------------------------------------------------------

    def setup(self) -> None:
        self._clear()
        (self.out / "dossiers").mkdir(parents=True)
        (self.out / MARKER).write_text("made by `exchange demo`: it replaces this folder at its next run\n", "utf-8")
        shutil.copytree(self.rules_source, self.rules_dir, ignore=shutil.ignore_patterns("__pycache__"))
        last = self.today + dt.timedelta(days=1)
        write_merger(self.rules_dir, last)  # rehearsed: the merger takes effect after tomorrow
        rules = load_rules(self.rules_dir)
        self.nodes = route_nodes(rules, dt.datetime.now(ICT), last + dt.timedelta(days=1))
        ca = pki.init_ca(self.out / "ca", "Quang Ninh Province Exchange CA (demo)")
        for agency in self.agencies:
            init_node(AgencyCode(agency), ca, self.rules_dir, rules, self.broker, self.out / "nodes" / agency)
        self.say(f"set up a provincial CA and {len(self.agencies)} nodes in {self.out}, on a copy of the "
                 f"shipped rules in {self.rules_dir}")

    def _clear(self) -> None:
        """Empty a folder an earlier demo made; refuse any other folder that is not empty."""
        if not self.out.exists():
            return
        if not self.out.is_dir() or self.out.is_symlink():
            raise ConfigError(f"{self.out} is not a folder: choose another --out")
        if not any(self.out.iterdir()):
            return
        if not (self.out / MARKER).is_file():
            raise ConfigError(f"{self.out} is not empty and was not made by `exchange demo`: refusing to "
                              "replace what is in it; choose another --out or an empty folder")
        shutil.rmtree(self.out)

    def start(self) -> None:
        for agency in self.nodes:
            log = (self.out / "nodes" / agency / "node.log").open("ab")
            self.processes[agency] = subprocess.Popen(
                [sys.executable, "-m", "exchange", "run", "--config", str(self.config(agency))],
                stdout=log, stderr=subprocess.STDOUT, env=_node_environment())
            log.close()
        deadline = time.monotonic() + 60
        for agency in self.processes:
            path = self.out / "nodes" / agency / "node.log"
            while not _logged(path, "node.started"):
                if time.monotonic() > deadline or self.processes[agency].poll() is not None:
                    raise ExchangeError(f"node {agency} did not start; see {path}")
                time.sleep(0.1)
        self.contexts = {a: NodeContext.open(NodeConfig.load(self.config(a))) for a in self.nodes}
        self.say(f"started {len(self.processes)} node processes "
                 f"({'RabbitMQ at ' + self.broker.split('@')[-1] if self.broker else 'embedded transport'})")

    def stop(self) -> None:
        for ctx in self.contexts.values():
            ctx.close()
        self.contexts = {}
        for process in self.processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for agency, process in self.processes.items():
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                self.say(f"node {agency} did not stop in time: killed")
        self.processes = {}

    # the merger ------------------------------------------------------------------------

    def rehearse_merger(self) -> None:
        """A birth registration received at xã Đường Hoa, which ends tomorrow in the demo's rules,
        reaches its police: the residence step is ready there."""
        ctx = self.contexts[MERGING]
        self.say(f"rehearsing a merger: xã Đường Hoa ends tomorrow and passes to xã Quảng Hà: in "
                 f"{self.rules_dir / 'agencies.xml'}, its committee ({MERGING}), police and service centre have "
                 f"{self.today + dt.timedelta(days=1)} as their last day, each Quảng Hà's as its successor")
        received = dt.datetime.combine(self.today - dt.timedelta(days=1), CROSSING_RECEIVED, ICT)
        spec = samples.SampleSpec(AgencyCode(MERGING), ProcedureCode(BIRTH), size_kb=8, sequence=1,
                                  received_at=received.astimezone(dt.UTC))
        path = self.out / "dossiers" / f"{MERGING}-crossing.xml"
        path.write_bytes(samples.to_bytes(samples.sample_dossier(spec)))
        code = submit(ctx, path.read_bytes(), str(path))
        self.crossing = str(code)
        self.submitted[self.crossing] = (BIRTH, MERGING, time.monotonic())
        complete(ctx, code, "register")  # the desk registers the birth: residence and insurance go out
        police = self.contexts[MERGING_POLICE]
        _wait_for(lambda: _step_state(police, self.crossing, "residence") is StepState.READY, 30.0,
                  f"the residence step of {code} did not reach {MERGING_POLICE}; see {self.out / 'nodes'}")
        self.say(f"  {code} ({BIRTH}) received online at {MERGING} on {received:%Y-%m-%d %H:%M} (after the "
                 f"cut-off: it counts from the next working day), registered; its residence step is ready at "
                 f"{MERGING_POLICE} ({_name(police, MERGING_POLICE)})")

    def the_day_comes(self) -> None:
        """The merger, rewritten as ended yesterday; every node reloads its rules; the merged commune's
        police hands its step over (``rules migrate``)."""
        yesterday = self.today - dt.timedelta(days=1)
        write_merger(self.rules_dir, yesterday)
        self.reload_rules()
        ctx = self.contexts[MERGING_POLICE]
        at = dt.datetime.now(dt.UTC)
        moves = migrate.plan(ctx, at)
        if not any(m.dossier == self.crossing and m.action == migrate.HANDED_OVER for m in moves):
            raise ExchangeError(f"rules migrate at {MERGING_POLICE} found nothing to hand over: {moves}")
        migrate.apply(ctx, moves, at)
        self.say(f"the day has come: {_name(ctx, MERGING)} ended on {yesterday} in the rules; rules reloaded by "
                 f"{len(self.processes)} nodes; migrate {MERGING_POLICE}: "
                 + "; ".join(m.describe(ctx, True) for m in moves))

    def reload_rules(self) -> None:
        """SIGHUP to every node process, and wait until each logged that it reloaded its rules; the
        demo's own view of each node (its agency system's) reloads them too."""
        logs = {a: self.out / "nodes" / a / "node.log" for a in self.processes}
        before = {a: _count_logged(path, "rules.reloaded") for a, path in logs.items()}
        for process in self.processes.values():
            process.send_signal(signal.SIGHUP)

        def reloaded() -> bool:
            for agency, path in logs.items():
                if _count_logged(path, "rules.reload_refused"):
                    raise ExchangeError(f"node {agency} refused the rewritten rules; see {path}")
            return all(_count_logged(path, "rules.reloaded") > before[a] for a, path in logs.items())

        _wait_for(reloaded, 30.0, f"the nodes did not all reload their rules; see {self.out / 'nodes'}")
        for ctx in self.contexts.values():
            ctx.rulebook.reload()

    # the agency systems ---------------------------------------------------------------

    def submit_all(self) -> None:
        today = dt.datetime.now(ICT).replace(microsecond=0)
        sequences = itertools.count(1)
        mix = itertools.cycle(MIX)
        for i in range(self.count):
            procedure, desks = next(mix)
            if i in SCENARIOS:
                procedure, desks = BIRTH, COMMUNES
            desk = desks[i % len(desks)]
            received = today
            if i == 1:  # received on paper a week ago, entered only now: its steps run late
                received = today - dt.timedelta(days=9)
            spec = samples.SampleSpec(AgencyCode(desk), ProcedureCode(procedure), size_kb=8,
                                      sequence=next(sequences), received_at=received.astimezone(dt.UTC))
            data = samples.to_bytes(samples.sample_dossier(spec))
            path = self.out / "dossiers" / f"{desk}-{i + 1:03d}.xml"
            path.write_bytes(data)
            code = str(submit(self.contexts[desk], data, str(path)))
            self.submitted[code] = (procedure, desk, time.monotonic())
            if i == 1:
                self.late_code = code
            if i in SCENARIOS:
                self.scenarios[code] = SCENARIOS[i]
        self.say(f"submitted {self.count} dossiers of {len(MIX)} procedures at {len(COMMUNES) + len(CENTRES)} desks")
        for code in (c for c, plan in self.scenarios.items() if plan == "withdrawn"):
            told = withdraw(self.contexts[str(DossierCode(code).agency)], DossierCode(code), WITHDRAWAL)
            self.say(f"  {code}: the applicant withdrew it at the desk; told {', '.join(told) or 'nobody yet'}")

    def intrude(self) -> None:
        """Another commune's police sends an envelope for a step it does not perform: it must be refused."""
        code = next(c for c, (p, d, _) in self.submitted.items() if p == BIRTH and d in COMMUNES)
        desk = DossierCode(code).agency
        root, _ = dossiers.load(next((self.out / "dossiers").glob(f"{desk}-*.xml")).read_bytes())
        signer = Signer.load(self.out / "nodes" / INTRUDER / "cert.pem", self.out / "nodes" / INTRUDER / "key.pem")
        header = Header(kind=Kind.TRANSFER, sender=AgencyCode(INTRUDER), recipient=desk,
                        dossier=DossierCode(root.findtext("{urn:vn-exchange:dossier:1}Code") or code),
                        procedure=ProcedureCode(BIRTH), step="return")
        config = NodeConfig.load(self.config(INTRUDER))
        with open_transport(config) as transport:
            transport.declare(AgencyCode(INTRUDER))
            transport.publish(Message(desk, signer.seal(header, root), header.message_id))
        self.say(f"an envelope from {INTRUDER} (Công an xã Quảng Đức, on none of these routes) sent to {desk}, "
                 "off the route")

    def work(self) -> None:
        """Complete every step where it is ready, until every dossier is completed."""
        self.started = time.monotonic()
        done: set[str] = set()
        while len(done) < len(self.submitted):
            if time.monotonic() - self.started > DEADLINE_S:
                raise ExchangeError(f"only {len(done)} of {len(self.submitted)} dossiers completed in "
                                    f"{DEADLINE_S:.0f}s; see the node logs in {self.out / 'nodes'}")
            progressed = self._work_once(done)
            if not progressed:
                time.sleep(0.1)

    def _work_once(self, done: set[str]) -> bool:
        progressed = False
        for agency, ctx in self.contexts.items():
            if agency == SLOW_AGENCY and time.monotonic() - self.started < SLOW_SECONDS:
                continue  # this agency's system is down for a while
            for step in ctx.store.ready_steps(agency):
                try:
                    self._decide(ctx, DossierCode(step.dossier), step.step)
                except StepNotReady as exc:  # the dossier ended (withdrawn, refused) as the agency decided
                    self.say(f"  {step.dossier}: {exc}")
                progressed = True
            for row in ctx.store.dossiers(state=DossierState.SUPPLEMENT_REQUESTED):
                if row.origin == agency:  # the applicant brings the missing document to the desk
                    sent = supplement(ctx, DossierCode(row.code), [SUPPLEMENT_FILE])
                    self.say(f"  {row.code}: the applicant brought the missing document; resumed {', '.join(sent)}")
                    progressed = True
            for state in FINISHED:
                for code in (row.code for row in ctx.store.dossiers(state=state) if row.origin == agency):
                    if code in self.submitted and code not in done:
                        done.add(code)
                        procedure, desk, _ = self.submitted[code]
                        self.say(f"  [{len(done):3d}/{len(self.submitted)}] {code}  {procedure}  {state} at {desk}")
                        if code == self.crossing:
                            self.say(f"  {code} crossed the merger: {state} at {dt.datetime.now(ICT):%H:%M:%S}, "
                                     f"its final status back at {desk}, the merged commune's desk that received it")
        return progressed

    def _decide(self, ctx: NodeContext, code: DossierCode, step: str) -> None:
        """What the agency decides at a step: accepted, except where the dossier plays a scenario."""
        plan = self.scenarios.get(str(code))
        if step == "residence" and plan == "refused":
            complete(ctx, code, step, "refused", REFUSAL)
            self.say(f"  {code}: the police refused it: {REFUSAL}")
        elif step == "residence" and plan == "supplement" and str(code) not in self.asked:
            self.asked.add(str(code))
            complete(ctx, code, step, "supplement", MISSING)
            self.say(f"  {code}: the police asked for more documents: {MISSING}")
        else:
            complete(ctx, code, step)

    # checks and report ---------------------------------------------------------------

    def audit(self) -> tuple[list[str], list[str]]:
        """Verify every node's log and reconcile every pair that exchanged envelopes."""
        verified, gaps = [], []
        bundles: dict[str, Path] = {}
        for agency in self.nodes:
            config = NodeConfig.load(self.config(agency))
            source = DatabaseSource(config.database)
            report = verify_log(source, Trust.from_cert_file(config.cert))
            verified.append(f"{agency}: {report.entries} entries, {report.checkpoints} checkpoints, "
                            + ("holds" if report.holds else "FAILS: " + "; ".join(report.problems)))
            bundles[agency] = self.out / "bundles" / f"{agency}.bundle"
            bundles[agency].parent.mkdir(exist_ok=True)
            export_bundle(source, bundles[agency])
            source.conn.close()
        entries = {a: [Entry.decode(d)[1] for _, d in BundleSource(b).entries()]
                   for a, b in bundles.items()}
        for a, b in itertools.combinations(bundles, 2):
            if any(e.counterpart == b for e in entries[a]):
                matched, found = reconcile(BundleSource(bundles[a]), BundleSource(bundles[b]))
                gaps += found
                verified.append(f"reconciled {a} ↔ {b}: {matched} transfers matched, {len(found)} gaps")
        return verified, gaps


def route_nodes(rules: RuleSet, at: dt.datetime, after_merger: dt.date) -> tuple[str, ...]:
    """The agencies that need a node, desks first: every agency that a route of the mix, or of the
    crossing dossier, names at ``at``, and each one's successor once the merger took effect."""
    found = dict.fromkeys((*COMMUNES, *CENTRES, MERGING))
    for procedure, desks in (*MIX, (BIRTH, (MERGING,))):
        for desk in desks:
            for agency in rules.route(ProcedureCode(procedure), AgencyCode(desk), at).values():
                found[str(agency)] = None
                found[str(rules.successor(agency, after_merger, AgencyCode(desk)))] = None
    if SLOW_AGENCY not in found or INTRUDER in found:
        raise ConfigError(f"the demo's routes must name {SLOW_AGENCY} and not {INTRUDER}")
    return tuple(found)


def write_merger(folder: Path, last: dt.date) -> None:
    """Rehearse the merger in a copy of the rules: each of xã Đường Hoa's agencies ends on ``last``
    and passes to xã Quảng Hà's. Rewritten in place, so the day can be moved."""
    path = folder / "agencies.xml"
    root = safexml.parse(path.read_bytes(), source=str(path))
    for old, new in MERGER.items():
        agency = root.find(f"{{{RULES_NS}}}agencies/{{{RULES_NS}}}agency[@code='{old}']")
        if agency is None:
            raise ConfigError(f"{path}: no agency {old} to rehearse the merger with")
        agency.set("until", last.isoformat())
        for element in agency.findall(f"{{{RULES_NS}}}source") + agency.findall(f"{{{RULES_NS}}}successor"):
            agency.remove(element)
        source = etree.Element(f"{{{RULES_NS}}}source")
        source.text = "A merger rehearsed by `exchange demo` in its own copy of the rules: no real decision."
        agency.insert(1, source)  # after <name>
        etree.SubElement(agency, f"{{{RULES_NS}}}successor", agency=new)
    write_atomic(path, etree.tostring(root, xml_declaration=True, encoding="UTF-8"))


def summary_counts(demo: Demo) -> dict[str, int]:
    counts = {"transfers": 0, "retries": 0, "refusals": 0, "late": 0, "receipts": 0}
    late_dossiers: set[str] = set()
    for agency in demo.nodes:
        config = NodeConfig.load(demo.config(agency))
        source = DatabaseSource(config.database)
        for _, data in source.entries():
            entry = Entry.decode(data)[1]
            event = entry.event.value
            counts["transfers"] += event == "published"
            counts["retries"] += event == "retransmitted"
            counts["refusals"] += event == "refused"
            counts["receipts"] += event == "receipt-received"
            if event == "step-done" and entry.detail.get("late") == "yes":
                counts["late"] += 1
                late_dossiers.add(entry.dossier or "")
        source.conn.close()
    counts["late_dossiers"] = len(late_dossiers)
    return counts


def write_report(demo: Demo, lines: list[str], verified: list[str], gaps: list[str]) -> Path:
    rules = load_rules(demo.rules_dir)
    parts = ["<!doctype html><html lang='vi'><meta charset='utf-8'><title>exchange demo report</title>",
             "<style>body{font-family:sans-serif;margin:2em;max-width:1200px}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:3px 8px;font-size:13px}.late{color:#b00;font-weight:bold}"
             "h2{margin-top:2em}.route svg,.route img{max-width:100%;height:auto}"
             ".route pre,pre.route{max-width:100%;overflow-x:auto}</style>",
             "<h1>Đầm Hà – Hải Hà area (Quảng Ninh): one-stop inter-linked exchange, demo run</h1>",
             "<h2>Dossiers</h2>" + _dossier_table(demo),
             "<h2>Summary</h2><ul>" + "".join(f"<li>{html.escape(x)}</li>" for x in lines) + "</ul>",
             "<h2>Audit</h2><ul>" + "".join(f"<li>{html.escape(x)}</li>" for x in verified + gaps) + "</ul>",
             "<h2>Routes</h2>"]
    for procedure, desks in MIX:
        procedure_code = ProcedureCode(procedure)
        parts.append(f"<h3>{procedure} {html.escape(rules.procedure(procedure_code).name)}</h3>")
        parts.append(_picture(rules_tools.dot(rules, procedure_code, AgencyCode(desks[0]))))
    parts.append("<h2>Timelines</h2>")
    for dossier_code in sorted(demo.submitted):
        parts.append(_timeline(demo, dossier_code))
    path = demo.out / "report.html"
    path.write_text("\n".join(parts) + "</html>\n", "utf-8")
    return path


def _picture(source: str) -> str:
    tool = shutil.which("dot")
    if tool:
        result = subprocess.run([tool, "-Tsvg"], input=source.encode(), capture_output=True, timeout=60, check=False)
        if result.returncode == 0:
            svg = result.stdout.decode("utf-8")
            return "<div class='route'>" + svg[svg.find("<svg"):] + "</div>"
    return f"<pre class='route'>{html.escape(source)}</pre>"


def _node_environment() -> dict[str, str]:
    """The demo's nodes verify in their loops (sixteen nodes, a few dossiers: a verifier process
    each would cost more than it saves), unless EXCHANGE_NODE_VERIFIERS says otherwise."""
    return {"EXCHANGE_NODE_VERIFIERS": "0", **os.environ}


def _logged(path: Path, event: str) -> bool:
    """Whether a node's JSON log holds ``event``: read as data, line by line, not searched as text."""
    return _count_logged(path, event) > 0


def _count_logged(path: Path, event: str) -> int:
    """How many times a node's JSON log holds ``event``."""
    count = 0
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            count += json.loads(line).get("event") == event
        except (ValueError, AttributeError):
            continue  # a line that is not an event (a traceback's continuation)
    return count


def _wait_for(condition: Callable[[], bool], seconds: float, failure: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise ExchangeError(failure)
        time.sleep(0.1)


def _step_state(ctx: NodeContext, code: str, step: str) -> StepState | None:
    row = ctx.store.step(code, step)
    return row.state if row else None


def _name(ctx: NodeContext, agency: str) -> str:
    return ctx.rules.agency(AgencyCode(agency)).name


def _timeline(demo: Demo, code: str) -> str:
    rows = sorted(_entries_of(demo, code), key=lambda e: e.time)
    procedure, desk, _ = demo.submitted[code]
    body = "".join(
        f"<tr><td>{e.time.astimezone(ICT):%Y-%m-%d %H:%M:%S}</td><td>{e.node}</td><td>{e.event.value}</td>"
        f"<td>{e.step or ''}</td><td>{e.counterpart or ''}</td><td>{e.detail.get('due', '')}</td>"
        f"<td class='{'late' if e.detail.get('late') else ''}'>{'late' if e.detail.get('late') else ''}</td></tr>"
        for e in rows)
    return (f"<h3 class='timeline'>{code} ({procedure}, received at {desk})</h3><table><tr><th>time</th><th>node</th>"
            f"<th>event</th><th>step</th><th>counterpart</th><th>due</th><th>on time or late</th></tr>{body}</table>")


def _entries_of(demo: Demo, code: str) -> list[Entry]:
    rows: list[Entry] = []
    for agency in demo.nodes:
        source = DatabaseSource(NodeConfig.load(demo.config(agency)).database)
        try:
            rows.extend(Entry.decode(data)[1] for _, data in source.dossier_entries(code))
        finally:
            source.conn.close()
    return rows


def dossier_rows(demo: Demo) -> list[dict[str, str]]:
    """One summary row per dossier, as its origin sees it: code, procedure, state, due date, on time
    or late, and whether an apology slip went to the applicant."""
    rows = []
    for code in sorted(demo.submitted):
        procedure, desk, _ = demo.submitted[code]
        with NodeContext.open(NodeConfig.load(demo.config(desk))) as ctx:
            document = view(ctx, code)[0]
            due = local(ctx, document["due"])
        entries = _entries_of(demo, code)
        late = document["on_time"] is False or any(e.detail.get("late") == "yes" for e in entries)
        apology = any(e.detail.get("slip") == "apology" for e in entries)
        rows.append({"code": code, "procedure": f"{procedure} {document['procedure_name']}",
                     "state": document["state"], "due": due, "timing": "late" if late else "on time",
                     "apology": "yes" if apology else "no"})
    return rows


def crossing_line(demo: Demo, rows: list[dict[str, str]]) -> str:
    """What became of the dossier that crossed the merger, from every node's audit log."""
    entries = _entries_of(demo, demo.crossing)
    reroutes = [e for e in entries if e.event.value == "re-routed"]
    moved = sorted({e.step or "" for e in reroutes})
    done_by = {e.step: e.node for e in entries if e.event.value == "step-done"}
    state = next(row["state"] for row in rows if row["code"] == demo.crossing)
    return (f"dossier {demo.crossing} crossed the merger of xã Đường Hoa into xã Quảng Hà: {state}; "
            f"{len(reroutes)} re-route(s) audited, of step(s) {', '.join(moved) or 'none'}; residence done by "
            f"{done_by.get('residence', 'nobody')}, the result returned by {done_by.get('return', 'nobody')}")


def _dossier_table(demo: Demo) -> str:
    head = ("<tr><th>dossier</th><th>procedure</th><th>state</th><th>due</th><th>on time or late</th>"
            "<th>apology sent</th></tr>")
    body = "".join(
        f"<tr><td>{r['code']}</td><td>{html.escape(r['procedure'])}</td><td>{r['state']}</td><td>{r['due']}</td>"
        f"<td class='{'late' if r['timing'] == 'late' else ''}'>{r['timing']}</td><td>{r['apology']}</td></tr>"
        for r in dossier_rows(demo))
    return f"<table class='dossiers'><thead>{head}</thead><tbody>{body}</tbody></table>"


def _say(text: str) -> None:
    print(text, flush=True)  # progress as it goes, even when piped


def run(out: Path, broker: str = "", count: int = 24, say: Callable[[str], None] = _say) -> int:
    demo = Demo(out, broker, max(6, count), say)
    begin = time.monotonic()
    demo.setup()
    demo.start()
    try:
        demo.rehearse_merger()
        demo.the_day_comes()
        demo.submit_all()
        demo.intrude()
        demo.work()
        elapsed = time.monotonic() - demo.started
        time.sleep(1.5)  # the last receipts and status updates
    finally:
        demo.stop()
    say("nodes stopped; verifying every audit log and reconciling every pair of nodes")
    counts = summary_counts(demo)
    verified, gaps = demo.audit()
    rows = dossier_rows(demo)
    ends = Counter(row["state"] for row in rows)
    lines = [f"{len(demo.submitted)} dossiers finished in {elapsed:.1f}s "
             f"({counts['transfers'] / max(elapsed, 0.001):.1f} transfers/s): "
             f"{len(demo.submitted) - counts['late_dossiers']} on time, {counts['late_dossiers']} late",
             f"{counts['transfers']} transfers, {counts['receipts']} receipts, {counts['retries']} retries, "
             f"{counts['refusals']} refusals",
             f"{counts['late']} step(s) done late: dossier {demo.late_code} was received 9 days before it "
             "was entered" + ("; its origin got an apology with a new date" if counts["late"] else ""),
             f"the grassroots social insurance's system was down for the first {SLOW_SECONDS:.0f}s; "
             "its dossiers waited",
             f"{ends['completed']} completed, {ends['refused']} refused, {ends['withdrawn']} withdrawn; "
             f"{len(demo.asked)} supplement round(s), the clock paused meanwhile; "
             "at every join the desk's system got the dossier once, merged",
             crossing_line(demo, rows)]
    for line in lines + verified + gaps:
        say(line)
    say("writing the report")
    report = write_report(demo, lines, verified, gaps)
    say(f"report: {report}  (total {time.monotonic() - begin:.0f}s)")
    healthy = not gaps and all("holds" in v for v in verified if "entries" in v)
    return 0 if healthy else 1
