"""Work started ahead of its need gives the CPU to the work needed now.

The standby endpoint server (standby.py) imports 1.5 s of libraries for a deploy that comes after
the whole pipeline; on a 2-core machine, doing it while the Preprocess job and the Train job's spare
process (sagemaker/local/spares.py) import and compute slows the steps in front of it by as much as
it saves. So it imports at the lowest CPU priority: ``lowered`` sets its session's scheduling group
(Linux's autogroup: each session is one, and the groups share the CPU equally whatever their tasks'
nice values) to nice 19 and back to what it was afterwards, or as soon as ``hurried()`` says a caller
waits for the work. It then runs on whatever core time the jobs leave, from its first moment, and
yields at once when they need it.

The scheduler uses autogroups only for processes in the root CPU cgroup: in a container, or a
systemd unit with the cpu controller on, the process's cgroup is its group and the autogroup's nice
value changes nothing. There, where the kernel has no autogroups (``/proc/sys/kernel/
sched_autogroup_enabled`` is not 1), and in a process that does not lead its own session (it would
lower the others of the session too), a nice value could not be undone without privileges, so it
``wait``s instead, briefly, until the kernel's count of runnable tasks (``/proc/loadavg``) has left
a core free for a while.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

POLL_SECONDS = 0.02
# A core idle this long: not the moment between the pipeline's start and its first job's.
SUSTAIN_SECONDS = 0.3
MAX_WAIT_SECONDS = 10.0  # then it goes on anyway: a busy machine must not make it useless
LOADAVG = "/proc/loadavg"

AUTOGROUPS = "/proc/sys/kernel/sched_autogroup_enabled"
CGROUP, CGROUP_ROOT = "/proc/self/cgroup", "/sys/fs/cgroup"
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


def in_root_cpu_cgroup(cgroup: str = CGROUP, cgroup_root: str = CGROUP_ROOT) -> bool:
    """True when the scheduler puts this process in the root CPU group, the only one where it uses
    autogroups (a container, or a systemd unit with the cpu controller on, has its own group, whose
    share nothing here changes)."""
    try:
        with open(cgroup) as f:
            lines = [line.rstrip("\n").split(":", 2) for line in f if line.strip()]
    except OSError:
        return False
    for fields in lines:  # cgroup v1: the hierarchy with the cpu controller
        if len(fields) == 3 and "cpu" in fields[1].split(","):
            return fields[2] == "/"
    unified = [fields[2] for fields in lines if len(fields) == 3 and fields[0] == "0" and fields[1] == ""]
    if not unified:
        return False
    # cgroup v2: the cpu controller is on in a folder that has cpu.weight (never the real root; a
    # container's namespaced root has it), and the nearest such folder up the tree is the group.
    folder = Path(cgroup_root, unified[0].lstrip("/"))
    return not any((f / "cpu.weight").exists() for f in (folder, *folder.parents) if f.is_relative_to(cgroup_root))


def autogroup_nice(
    path: str = AUTOGROUP, switch: str = AUTOGROUPS, cgroup: str = CGROUP, cgroup_root: str = CGROUP_ROOT
) -> int | None:
    """This session's autogroup nice value; None where it would not change its share of the CPU
    (autogroups off, or this process outside the root CPU group)."""
    try:
        with open(switch) as f:
            if f.read().strip() != "1":
                return None
        if not in_root_cpu_cgroup(cgroup, cgroup_root):
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


@dataclass
class Lowered:
    """How a ``lowered`` block ran, for its log line."""

    how: str
    hurried_after: float | None = None  # seconds into the block when a caller hurried it

    def __str__(self) -> str:
        hurried = "" if self.hurried_after is None else f", hurried after {self.hurried_after:.2f} s"
        return f"{self.how}{hurried}"


@contextlib.contextmanager
def lowered(
    hurried: Callable[[], bool] | None = None,
    path: str = AUTOGROUP,
    switch: str = AUTOGROUPS,
    own_session: bool | None = None,
    cgroup: str = CGROUP,
    cgroup_root: str = CGROUP_ROOT,
) -> Iterator[Lowered]:
    """Run the block at the lowest CPU priority, back to the session's own once it ends or once
    ``hurried()`` (polled) is true; where that is not possible, after ``wait``. Only a process that
    leads its own session lowers it (``own_session``; None: this process is its session's leader),
    never a session it shares with others, such as a terminal's."""
    started = time.monotonic()
    if own_session is None:
        own_session = os.getsid(0) == os.getpid()
    before = autogroup_nice(path, switch, cgroup, cgroup_root) if own_session else None
    if before is None or before >= LOWEST or not set_autogroup_nice(LOWEST, LOWER_DEADLINE_SECONDS, path):
        waited = wait(hurried=hurried)
        yield Lowered(f"after {waited:.2f} s waiting for an idle core")
        return
    result = Lowered(f"at the lowest CPU priority (autogroup nice {LOWEST})")
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
                result.hurried_after = time.monotonic() - started
                restore()
                return

    watcher = threading.Thread(target=watch, name="hurry-watch", daemon=True)
    watcher.start()
    try:
        yield result
    finally:
        done.set()
        watcher.join()
        restore()
        if not state["restored"]:
            raise OSError(f"could not set {path} back to nice {before} within {RESTORE_DEADLINE_SECONDS:g} s")
