"""Wait for an idle core before work that was started ahead of its need.

A spare job process or the standby endpoint server imports a second of libraries for a step that
comes later; on a 2-core machine, doing it while the running step and another spare also compute
slows the running step by as much as it saves. Such a process first waits, briefly, until the
kernel's count of runnable tasks (``/proc/loadavg``) leaves a core free. Standard library only: the
spare runner imports it before anything else.
"""

import os
import select
import time
from collections.abc import Callable

POLL_SECONDS = 0.02
MAX_WAIT_SECONDS = 10.0  # then it goes on anyway: a busy machine must not make it useless
LOADAVG = "/proc/loadavg"


def others_running(loadavg: str = LOADAVG) -> int | None:
    """Runnable tasks on the machine besides this one; None where the kernel does not say."""
    try:
        with open(loadavg) as f:
            running = f.read().split()[3].split("/")[0]
        return max(0, int(running) - 1)
    except (OSError, IndexError, ValueError):
        return None


def wait(
    max_seconds: float = MAX_WAIT_SECONDS,
    cores: int | None = None,
    loadavg: str = LOADAVG,
    hurried: Callable[[], bool] | None = None,
) -> float:
    """Return once fewer tasks than cores run besides this one, or ``hurried()`` says the work is
    needed now, or after ``max_seconds``; the seconds waited."""
    cores = cores or os.cpu_count() or 1
    started = time.monotonic()
    while True:
        others = others_running(loadavg)
        waited = time.monotonic() - started
        if others is None or others < cores or waited >= max_seconds or (hurried is not None and hurried()):
            return waited
        time.sleep(POLL_SECONDS)


def readable(fd: int) -> Callable[[], bool]:
    """``hurried`` for a descriptor: True once something arrived on it."""
    return lambda: bool(select.select([fd], [], [], 0)[0])
