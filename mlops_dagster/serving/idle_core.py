"""Work started ahead of its need gives the CPU to the work needed now.

The standby endpoint server (standby.py) imports 1.5 s of libraries for a deploy that comes after
the whole pipeline; on a 2-core machine, doing it while the Preprocess job and the Train job's spare
process (sagemaker/local/spares.py) import and compute slows the steps in front of it by as much as
it saves. So it imports at the lowest CPU priority: ``lowered`` sets its session's scheduling group
(Linux's autogroup: each session is one, and the groups share the CPU equally whatever their tasks'
nice values) to nice 19 and back to what it was afterwards, or as soon as ``hurried()`` says a caller
waits for the work. It then runs on whatever core time the jobs leave, from its first moment, and
yields at once when they need it.

Where the kernel has no autogroups (``/proc/sys/kernel/sched_autogroup_enabled`` is not 1), a nice
value of this process could not be undone without privileges, so it ``wait``s instead, briefly,
until the kernel's count of runnable tasks (``/proc/loadavg``) has left a core free for a while.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable, Iterator

POLL_SECONDS = 0.02
# A core idle this long: not the moment between the pipeline's start and its first job's.
SUSTAIN_SECONDS = 0.3
MAX_WAIT_SECONDS = 10.0  # then it goes on anyway: a busy machine must not make it useless
LOADAVG = "/proc/loadavg"

AUTOGROUPS = "/proc/sys/kernel/sched_autogroup_enabled"
AUTOGROUP = "/proc/self/autogroup"  # "/autogroup-123 nice 0"; writing a nice value sets the group's
LOWEST = 19
# Without CAP_SYS_ADMIN the kernel takes one autogroup nice change per 100 ms, machine-wide; a
# change refused for that (EAGAIN) is tried again.
RETRY_SECONDS = 0.11
LOWER_DEADLINE_SECONDS = 1.0
RESTORE_DEADLINE_SECONDS = 10.0


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


def autogroup_nice(path: str = AUTOGROUP, switch: str = AUTOGROUPS) -> int | None:
    """This session's autogroup nice value; None where the kernel does not group sessions."""
    try:
        with open(switch) as f:
            if f.read().strip() != "1":
                return None
        with open(path) as f:
            return int(f.read().split()[-1])
    except (OSError, IndexError, ValueError):
        return None


def set_autogroup_nice(value: int, deadline_seconds: float, path: str = AUTOGROUP) -> bool:
    """Set this session's autogroup nice value; False when the kernel refused it or kept refusing
    for ``deadline_seconds`` (the machine-wide rate limit)."""
    deadline = time.monotonic() + deadline_seconds
    while True:
        try:
            with open(path, "w") as f:
                f.write(str(value))
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(RETRY_SECONDS)
        except OSError:
            return False


@contextlib.contextmanager
def lowered(
    hurried: Callable[[], bool] | None = None, path: str = AUTOGROUP, switch: str = AUTOGROUPS
) -> Iterator[str]:
    """Run the block at the lowest CPU priority, back to the session's own once it ends or once
    ``hurried()`` (polled) is true; where that is not possible, after ``wait``. Yields how, for a log."""
    before = autogroup_nice(path, switch)
    if before is None or before >= LOWEST or not set_autogroup_nice(LOWEST, LOWER_DEADLINE_SECONDS, path):
        waited = wait(hurried=hurried)
        yield f"after {waited:.2f} s waiting for an idle core"
        return
    restored = threading.Lock()
    done = threading.Event()
    state = {"restored": False}

    def restore() -> None:
        with restored:
            if not state["restored"]:
                state["restored"] = set_autogroup_nice(before, RESTORE_DEADLINE_SECONDS, path)

    def watch() -> None:
        while not done.wait(POLL_SECONDS):
            if hurried is not None and hurried():
                restore()
                return

    watcher = threading.Thread(target=watch, name="hurry-watch", daemon=True)
    watcher.start()
    try:
        yield f"at the lowest CPU priority (autogroup nice {LOWEST})"
    finally:
        done.set()
        watcher.join()
        restore()
        if not state["restored"]:
            raise OSError(f"could not set {path} back to nice {before} within {RESTORE_DEADLINE_SECONDS:g} s")
