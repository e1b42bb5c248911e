"""Wait for an idle core before work that was started ahead of its need.

The standby endpoint server (standby.py) imports 1.5 s of libraries for a deploy that comes after
the whole pipeline; on a 2-core machine, doing it while the Preprocess job and the Train job's spare
process (sagemaker/local/spares.py) import and compute slows the steps in front of it by as much as
it saves. It first waits, briefly, until the kernel's count of runnable tasks (``/proc/loadavg``)
has left a core free for a while (the standby starts with the execution, a moment before its first
job does), unless a server start already waits for it.
"""

import os
import time
from collections.abc import Callable

POLL_SECONDS = 0.02
# A core idle this long: not the moment between the pipeline's start and its first job's.
SUSTAIN_SECONDS = 0.3
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
    sustain_seconds: float = SUSTAIN_SECONDS,
) -> float:
    """Return once fewer tasks than cores have run besides this one for ``sustain_seconds``, or
    ``hurried()`` says the work is needed now, or after ``max_seconds``; the seconds waited."""
    cores = cores or os.cpu_count() or 1
    started = time.monotonic()
    idle_since: float | None = None
    while True:
        others = others_running(loadavg)
        now = time.monotonic()
        if others is None or now - started >= max_seconds or (hurried is not None and hurried()):
            return now - started
        if others >= cores:
            idle_since = None
        elif idle_since is None:
            idle_since = now
        if idle_since is not None and now - idle_since >= sustain_seconds:
            return now - started
        time.sleep(POLL_SECONDS)
