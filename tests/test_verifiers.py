"""Envelopes verified in worker processes (``node.verifiers``): each verdict is the one the loop
would reach itself, hostile envelopes included; verdicts of a replaced opener are not used; a
worker that cannot have the loop's key never starts; workers do not outlive a killed node; and a
node's loop takes windows in with them, each envelope once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import pytest
from lxml import etree

from exchange.adapters.embedded import EmbeddedConsumer
from exchange.demo import samples
from exchange.envelope import pki
from exchange.envelope.encryption import Recipient, RecipientCertificate
from exchange.envelope.model import VerifiedEnvelope
from exchange.envelope.sealing import Opener
from exchange.errors import ConfigError, InvalidEnvelope
from exchange.node.config import NodeConfig
from exchange.node.daemon import Daemon
from exchange.node.verifiers import Opened, VerifierPool
from exchange.node.workflow import submit
from tests import in_process
from tests.agencies import BIRTH, COMMUNE, POLICE
from tests.conftest import Pki, make_dossier, transfer_header
from tests.in_process import Trio
from tests.node_cluster import Cluster
from tests.test_hostile_envelopes import ENVELOPES

START_S = 60.0
"""Workers are fresh interpreters: generous, for a busy CI machine."""


def police_files(pki_env: Pki) -> tuple[Path, Path]:
    pki_env.signer(POLICE)  # issued on first use
    directory = pki_env.agency_dir(POLICE)
    return directory / pki.AGENCY_CERT, directory / pki.AGENCY_KEY


@pytest.fixture(scope="module")
def police_opener(pki_env: Pki) -> Opener:
    cert, key = police_files(pki_env)
    return pki_env.opener(recipient=Recipient.load(cert, key))


@pytest.fixture(scope="module")
def pool(pki_env: Pki, police_opener: Opener) -> Iterator[VerifierPool]:
    pool = VerifierPool.start(police_opener, *police_files(pki_env), workers=2)
    assert pool is not None
    try:
        assert pool.wait_ready(START_S)
        yield pool
    finally:
        pool.close()


def corpus(pki_env: Pki, sealed: bytes, other_pki: Pki) -> dict[str, bytes]:
    """Every hostile envelope of the CLI corpus, a genuine one in clear and encrypted, and one from
    a CA nobody here trusts."""
    bodies = {name: build(pki_env, sealed) for name, (build, _, _) in ENVELOPES.items()}
    dossier = make_dossier(sequence=2)
    encrypt_to = RecipientCertificate.of(pki.load_cert(police_files(pki_env)[0]))
    bodies["genuine"] = sealed
    bodies["genuine, encrypted"] = pki_env.signer(COMMUNE).seal(transfer_header(dossier), dossier, encrypt_for=encrypt_to)
    bodies["from an untrusted CA"] = other_pki.signer(COMMUNE).seal(transfer_header(dossier), dossier)
    return bodies


def test_a_workers_verdict_is_the_loops_own(pool: VerifierPool, police_opener: Opener, pki_env: Pki,
                                            sealed: bytes, other_pki: Pki) -> None:
    """For every envelope of the corpus the workers refuse what the loop refuses, with the same
    refusal, reason code and message, and accept what it accepts, as the same envelope."""
    bodies = corpus(pki_env, sealed, other_pki)
    batch = pool.submit([(f"message {name}", body) for name, body in bodies.items()])
    assert batch is not None
    verdicts = batch.verdicts(police_opener)
    accepted = 0
    for (name, body), verdict in zip(bodies.items(), verdicts, strict=True):
        local = loop_verdict(police_opener, name, body)
        if isinstance(local, InvalidEnvelope):
            assert isinstance(verdict, InvalidEnvelope), name
            assert (type(verdict), verdict.reason_code, verdict.message) == \
                (type(local), local.reason_code, local.message), name
            continue
        assert isinstance(verdict, Opened), name
        admitted = verdict.admit(police_opener, f"message {name}")
        assert etree.tostring(admitted.payload) == etree.tostring(local.payload), name
        assert replace(admitted, payload=local.payload) == local, name
        accepted += 1
    assert accepted >= 3  # the genuine ones and the corpus's accepted edge cases


def loop_verdict(opener: Opener, name: str, body: bytes) -> VerifiedEnvelope | InvalidEnvelope:
    try:
        return opener.open(body, source=f"message {name}")
    except InvalidEnvelope as refusal:
        return refusal


def test_verdicts_of_an_opener_since_replaced_are_not_used(pool: VerifierPool, police_opener: Opener,
                                                           sealed: bytes) -> None:
    """A reload (new trust, CRL or key) replaces the loop's opener: what the workers found with the
    old one comes back as "open it yourself"."""
    batch = pool.submit([("message genuine", sealed)])
    assert batch is not None
    reloaded = replace(police_opener)
    assert batch.verdicts(reloaded) == [None]


def test_a_worker_without_the_loops_key_never_starts(pki_env: Pki, police_opener: Opener) -> None:
    """A key file that is not the key the loop runs with (changed on disk, not yet reloaded): the
    workers refuse to start and the pool takes nothing, so the loop verifies alone."""
    pki_env.signer(COMMUNE)
    cert = police_files(pki_env)[0]
    pool = VerifierPool.start(police_opener, cert, pki_env.agency_dir(COMMUNE) / pki.AGENCY_KEY, workers=1)
    assert pool is not None
    try:
        assert not pool.wait_ready(START_S)
        assert pool.submit([("message x", b"<x/>")]) is None
    finally:
        pool.close()


def test_no_pool_for_an_opener_on_another_clock(pki_env: Pki, police_opener: Opener) -> None:
    """Workers read the host's clock: an opener on another clock (a test's) verifies in the loop."""
    frozen = replace(police_opener, clock=lambda: police_opener.clock())
    assert VerifierPool.start(frozen, *police_files(pki_env), workers=1) is None
    assert VerifierPool.start(police_opener, *police_files(pki_env), workers=0) is None


WORKERS_OF_A_KILLED_NODE = """
import sys
from exchange.envelope.encryption import Recipient
from exchange.envelope.model import VerifiedEnvelope
from exchange.envelope.sealing import Opener
from exchange.envelope.trust import TrustStore
from exchange.node.verifiers import VerifierPool
from pathlib import Path
ca, cert, key = (Path(a) for a in sys.argv[1:4])
pool = VerifierPool.start(Opener(TrustStore.load(ca), recipient=Recipient.load(cert, key)), cert, key, 2)
assert pool.wait_ready(60)
print(" ".join(str(p) for p in pool._executor._processes), flush=True)
sys.stdin.read()
"""


def test_workers_end_with_a_killed_node(pki_env: Pki) -> None:
    """SIGKILL leaves a process pool's workers waiting on their queue; ours notice their node is
    gone and exit within a few seconds."""
    cert, key = police_files(pki_env)
    node = subprocess.Popen([sys.executable, "-c", WORKERS_OF_A_KILLED_NODE, str(pki_env.root / "ca"), str(cert),
                             str(key)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert node.stdout is not None
        workers = [int(pid) for pid in node.stdout.readline().split()]
        assert len(workers) == 2
        assert all(alive(pid) for pid in workers)
        node.send_signal(signal.SIGKILL)
        node.wait()
        deadline = time.monotonic() + 10
        while any(alive(pid) for pid in workers) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(alive(pid) for pid in workers)
    finally:
        node.kill()
        node.communicate()


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as stat:  # a zombie is not running
        return stat.read().rsplit(")", 1)[1].split()[0] != "Z"


@pytest.fixture
def trio(tmp_path: Path) -> Iterator[Trio]:
    with in_process.trio(Cluster(tmp_path)) as nodes:
        yield nodes


def submitted(trio: Trio, count: int) -> None:
    commune, _, _, transport = trio
    for sequence in range(1, count + 1):
        spec = samples.SampleSpec(COMMUNE, BIRTH, size_kb=2, sequence=sequence)
        submit(commune, samples.to_bytes(samples.sample_dossier(spec)))
    in_process.publish(commune, transport)


@contextmanager
def verifying(trio: Trio, window: int) -> Iterator[tuple[Daemon, EmbeddedConsumer]]:
    """The police's loop, turned by hand, with one verifier process ready, and its consumer."""
    _, police, _, transport = trio
    daemon = Daemon(police, transport, window=window)
    daemon.verifiers = VerifierPool.start(police.opener, police.config.cert, police.config.key, 1)
    assert daemon.verifiers is not None
    try:
        assert daemon.verifiers.wait_ready(START_S)
        with transport.consume(police.agency) as consumer:
            yield daemon, consumer
    finally:
        daemon.verifiers.close()


def test_a_verifier_killed_under_load_costs_nothing(trio: Trio) -> None:
    """Fault injection: the verifier process is SIGKILLed after the first windows; the loop
    verifies the rest itself, and every transfer is accepted once."""
    _, police, _, transport = trio
    submitted(trio, 80)
    with verifying(trio, window=8) as (daemon, consumer):
        for _ in range(3):
            assert daemon.inbound(consumer, 0.05)
        assert daemon.verifiers is not None
        for pid in daemon.verifiers._executor._processes:
            os.kill(pid, signal.SIGKILL)
        while daemon.inbound(consumer, 0.05):
            pass
    assert daemon.metrics.received.labels("accepted")._value.get() == 80
    assert daemon.metrics.verified.labels("workers")._value.get() >= 8
    assert daemon.metrics.verified.labels("loop")._value.get() >= 40
    assert len(police.store.dossiers()) == 80
    assert transport.depth(police.agency) == 0


def test_a_node_takes_windows_in_with_its_verifiers(trio: Trio) -> None:
    """The police's loop, with a verifier process, takes 150 transfers in windows of 16 (each next
    window verified while one is recorded): every one accepted once, most verified by the worker."""
    _, police, _, transport = trio
    submitted(trio, 150)
    with verifying(trio, window=16) as (daemon, consumer):
        while daemon.inbound(consumer, 0.05):
            pass
    received = daemon.metrics.received.labels("accepted")._value.get()
    by_workers = daemon.metrics.verified.labels("workers")._value.get()
    assert received == 150
    assert len(police.store.dossiers()) == 150
    assert by_workers >= 100
    assert transport.depth(police.agency) == 0


def node_toml(tmp_path: Path, node_lines: str) -> Path:
    path = tmp_path / "node.toml"
    path.write_text(f'[node]\nagency = "{COMMUNE}"\nstate_dir = "state"\n{node_lines}\n[pki]\nca = "ca.pem"\n'
                    'cert = "cert.pem"\nkey = "key.pem"\n[audit]\ncheckpoint_key = "ck.pem"\n[rules]\ndir = "rules"\n',
                    "utf-8")
    return path


def test_verifiers_are_set_in_node_toml_or_the_environment(tmp_path: Path) -> None:
    """``[node] verifiers`` (or EXCHANGE_NODE_VERIFIERS) sets the worker processes; unset, one on a
    host of two cores or more."""
    assert NodeConfig.load(node_toml(tmp_path, "verifiers = 3"), environ={}).verifier_processes == 3
    path = node_toml(tmp_path, "")
    assert NodeConfig.load(path, environ={"EXCHANGE_NODE_VERIFIERS": "0"}).verifier_processes == 0
    assert NodeConfig.load(path, environ={}).verifier_processes == (1 if (os.cpu_count() or 1) > 1 else 0)


@pytest.mark.parametrize(("line", "complaint"), [
    ("verifiers = -1", r"\[node\] verifiers is -1; expected 0"),
    ('verifiers = "two"', r"\[node\] verifiers is 'two'; expected a number"),
])
def test_a_bad_verifiers_setting_is_refused_by_name(tmp_path: Path, line: str, complaint: str) -> None:
    """A negative or non-numeric count is a ConfigError naming the file."""
    with pytest.raises(ConfigError, match=r"node\.toml: " + complaint):
        NodeConfig.load(node_toml(tmp_path, line), environ={})
