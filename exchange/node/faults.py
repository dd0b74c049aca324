"""The crash tests' hook: a named point at which the node kills itself, the worst moment to die."""

from __future__ import annotations

import os
import signal

import structlog

log = structlog.get_logger(__name__)

FAULT_ENV = "EXCHANGE_FAULT"
"""The name of the point at which the process kills itself; set by crash tests, nothing else."""


def fault(point: str) -> None:
    """Die here with SIGKILL (no cleanup, as in a power cut) when EXCHANGE_FAULT names ``point``."""
    if os.environ.get(FAULT_ENV) == point:
        log.warning("fault.injected", point=point)
        os.kill(os.getpid(), signal.SIGKILL)
