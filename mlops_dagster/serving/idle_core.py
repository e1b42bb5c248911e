"""Wait for an idle core before work that was started ahead of its need.

The standby endpoint server (standby.py) imports 1.5 s of libraries for a deploy that comes after
the whole pipeline; on a 2-core machine, doing it while the Preprocess job and the Train job's spare
process (sagemaker/local/spares.py) import and compute slows the steps in front of it by as much as
it saves. It first waits, briefly, until the kernel's count of runnable tasks (``/proc/loadavg``)
leaves a core free, unless a server start already waits for it.
"""

import os
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

