"""Job processes started ahead of their jobs, so a step's imports overlap the steps before it.

A fresh Python that imports pandas and scikit-learn spends ~1.4-2 s of this machine's time before
the script's first line; Train and Evaluate pay that one after the other, after Preprocess. SageMaker
provisions a step's instance while it waits to start; locally the worker does the same with the
process: the next Training or single-instance Processing step that waits for other steps gets a
spare process (``spare_runner``) that imports the imports the script starts with (its leading
import statements, read from the step's code in the object store with ``ast``; none after the first
other statement, which may set what they do) and waits. One spare imports at a time: the next
starts once the step before has taken its spare and found it ready (two at once, with the running
step, slow the one needed first; ``bench/e2e.py --spares both`` measures). When the step's job
starts, its launch is handed to the spare: the script then runs in that process with exactly the
job's environment, arguments, folder and /opt/ml, one process per job as before. Everything else of
the contract (staging, collecting, failure, stop) is the same code path.

A spare is used only when starting it cold could not differ (``mismatch``): the command is this
interpreter running a script without options; the variables read at interpreter or library start
(PYTHON* but PYTHONPATH, LD_*, MALLOC_*, the host's thread and locale settings, and any named after a
module the spare holds, such as SKLEARN_* or JOBLIB_*) are those it started with; the script's folder
and PYTHONPATH do not hold a module named like one the spare holds (what it was asked to import, their
dependencies and its runner's own, which it reports when ready). Otherwise the job starts cold, and
the job log says why. While a step waits for its spare's imports, a stop request or the job's
MaxRuntimeInSeconds ends the wait. What still differs from a cold start: ``sys.orig_argv`` and
/proc/self/cmdline name the runner, and ``sys.modules`` holds the runner's few standard modules.
``MLOPS_LOCAL_SPARES=0`` turns spares off. Steps ready when the execution starts start cold:
nothing could have been started ahead of them.
"""

from __future__ import annotations

import ast
import contextlib
import io
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from mlops_dagster.objects import ObjectStoreError

from . import opt_ml

log = logging.getLogger(__name__)

SETTING = "MLOPS_LOCAL_SPARES"
JOB_STEP_TYPES = ("Training", "Processing")
READY = b"ready "  # as spare_runner.READY: then the JSON list of the modules it holds
MAX_READY_MESSAGE = 1 << 20
STOP_POLL_SECONDS = 0.5
READY_TIMEOUT_SECONDS = 120.0  # a spare not ready by then is ended and the job starts cold
RUNNER = Path(__file__).with_name("spare_runner.py")
MAX_LIMIT = 1
# Read when an interpreter or a numeric library starts: a job that sets them differently than the
# spare started with must start cold.
_STARTUP_PREFIXES = ("PYTHON", "LD_", "MALLOC_", "LC_", "LANG", "OMP_", "OPENBLAS_", "GOTO_", "MKL_", "KMP_")
_STARTUP_PREFIXES += ("BLIS_", "NVPL_", "NUMEXPR_", "VECLIB_", "TZ", "PATH")
_LATE = ("HOME", "TMPDIR", "PYTHONPATH")  # set before the script runs (HOME: no user site in either)


def enabled(env: dict[str, str] | None = None) -> bool:
    """False when ``MLOPS_LOCAL_SPARES`` is 0/false/no/off."""
    value = (os.environ if env is None else env).get(SETTING, "1").strip().lower()
    return value not in ("0", "false", "no", "off")


# --------------------------------------------------------------------------- what a script imports


def top_level_imports(source: str | bytes) -> list[str]:
    """The modules a script imports before it runs any other code, in order, once each: its
    leading ``import a.b`` (-> a.b) and ``from a.b import c`` (-> a.b) statements, and try blocks
    of nothing but imports. It stops at the first other statement: code that sets
    ``os.environ``, ``sys.path`` or warning filters must run before the imports after it, and
    only the script can run it. Never __future__ or relative imports."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return []  # the script fails on its own, in its log
    body = tree.body
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
        body = body[1:]  # the docstring
    names: list[str] = []
    for node in body:
        found = _prelude_imports(node)
        if found is None:
            break
        names.extend(name for name in found if name not in names)
    return names


def _prelude_imports(node: ast.stmt) -> list[str] | None:
    """The modules an import statement (or a try block of them) loads; None for any other code."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if isinstance(node, ast.ImportFrom):
        absolute = node.level == 0 and node.module and node.module != "__future__"
        return [node.module] if absolute else []
    if isinstance(node, ast.Pass):
        return []
    if isinstance(node, ast.Try):
        found: list[str] = []
        for block in (node.body, *(h.body for h in node.handlers), node.orelse, node.finalbody):
            for inner in block:
                names = _prelude_imports(inner)
                if names is None:
                    return None
                found.extend(names)
        return found
    return None


def script_source(step_type: str, arguments: Any, get_bytes: Callable[[str], bytes]) -> bytes | None:
    """The step's script, read from the object store as the job will download it; None when the
    step does not name it with plain values (expressions, an image's own entry point, several
    instances) or it cannot be read: such a step starts cold."""
    try:
        if step_type == "Training":
            return _training_script(arguments, get_bytes)
        if step_type == "Processing":
            return _processing_script(arguments, get_bytes)
    except (ObjectStoreError, OSError, ValueError, KeyError, TypeError, tarfile.TarError) as exc:
        log.info("no spare: cannot read the script of a %s step: %s", step_type, exc)
    return None


def _training_script(arguments: dict, get_bytes: Callable[[str], bytes]) -> bytes | None:
    hyperparameters = arguments.get("HyperParameters") or {}
    program, submit = (_json_string(hyperparameters.get(k)) for k in ("sagemaker_program", "sagemaker_submit_directory"))
    if not program or not submit or not submit.startswith("s3://"):
        return None
    with tarfile.open(fileobj=io.BytesIO(get_bytes(submit)), mode="r:*") as archive:
        wanted = PurePosixPath(program)
        for member in archive.getmembers():
            if member.isfile() and PurePosixPath(member.name.removeprefix("./")) == wanted:
                handle = archive.extractfile(member)
                return handle.read() if handle else None
    return None


def _processing_script(arguments: dict, get_bytes: Callable[[str], bytes]) -> bytes | None:
    cluster = (arguments.get("ProcessingResources") or {}).get("ClusterConfig") or {}
    entrypoint = (arguments.get("AppSpecification") or {}).get("ContainerEntrypoint")
    if cluster.get("InstanceCount", 1) != 1 or not isinstance(entrypoint, list) or len(entrypoint) < 2:
        return None
    script = PurePosixPath(str(entrypoint[1]))
    for item in arguments.get("ProcessingInputs") or []:
        s3 = item.get("S3Input") or {}
        uri, local = s3.get("S3Uri"), s3.get("LocalPath")
        if not isinstance(uri, str) or not isinstance(local, str) or not script.is_relative_to(local):
            continue
        relative = script.relative_to(local).as_posix()
        # An S3Uri is a prefix: the object itself (its name is the script's) or a folder holding it.
        candidates = [uri] if uri.endswith("/" + relative) else []
        candidates.append(uri.rstrip("/") + "/" + relative)
        for candidate in candidates:
            try:
                return get_bytes(candidate)
            except (KeyError, OSError, ValueError):
                continue
    return None


def _json_string(value: Any) -> str | None:
    """A hyperparameter as the SDK writes it ('"train.py"'); None for an expression."""
    if not isinstance(value, str):
        return None
    try:
        decoded = json.loads(value)
    except ValueError:
        return value
    return decoded if isinstance(decoded, str) else None


# --------------------------------------------------------------------------- the processes


@dataclass
class Spare:
    """One process started ahead of a job, waiting with ``modules`` imported."""

    proc: subprocess.Popen
    control: socket.socket
    scratch: Path
    env: dict[str, str]
    modules: list[str]
    namespace: bool
    pre_log: Path
    loaded: list[str] = field(default_factory=list)  # top-level modules it holds once ready
    used: bool = False  # given its job: the job runner owns the process now
    ended: bool = False
    on_ready: Callable[[], None] | None = None  # called once its job knows (Spares: the next spare starts)
    stop: threading.Event | None = None  # the execution's stop request: waiting for the imports ends

    def ready_for(
        self, command: list[str], cwd: str, env: dict[str, str], host_ml: str | None, max_wait: float | None = None
    ) -> str | None:
        """None when the spare has done its imports and the job can run in it; else why not (the
        spare is then ended, and the caller starts the job cold). Waits at most ``max_wait``
        (the job's MaxRuntimeInSeconds: a cold start spends its imports inside it too)."""
        reason = self._wait_ready(max_wait) or mismatch(self, command, cwd, env, host_ml)
        if reason is not None:
            self.end()
        self._notify()
        return reason

    def _notify(self) -> None:
        """Tell the owner, once, that this spare no longer imports (ready, or ended)."""
        callback, self.on_ready = self.on_ready, None
        if callback is not None:
            callback()

    def go(self, command: list[str], cwd: str, env: dict[str, str], host_ml: str | None, log_fd: int) -> str | None:
        """Give the job to the spare (after ``ready_for``): None once the script runs in it."""
        _copy(self.pre_log, log_fd)  # what the imports printed, as a cold start's log would have
        message = {"argv": command[1:], "cwd": cwd, "env": env, "host_ml": host_ml}
        try:
            socket.send_fds(self.control, [json.dumps(message).encode()], [log_fd])
        except OSError as exc:
            self.end()
            return f"the spare process could not be given the job: {exc}"
        self.used = True
        self.end()  # its folder: the job has its own HOME and TMPDIR
        return None

    def _wait_ready(self, max_wait: float | None) -> str | None:
        limit = READY_TIMEOUT_SECONDS if max_wait is None else min(READY_TIMEOUT_SECONDS, max_wait)
        deadline = time.monotonic() + limit
        self.control.settimeout(STOP_POLL_SECONDS)
        while True:
            try:
                answer = self.control.recv(MAX_READY_MESSAGE)
                break
            except TimeoutError:
                if self.stop is not None and self.stop.is_set():
                    return "the execution is stopping"
                if time.monotonic() >= deadline:
                    return f"the spare process was not ready within {limit:g} s"
            except OSError as exc:
                return f"the spare process was not ready: {exc}"
        if not answer.startswith(READY):
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=5)
            tail = _tail(self.pre_log)
            return f"the spare process ended before it was ready (exit code {self.proc.returncode}){tail}"
        try:
            self.loaded = json.loads(answer[len(READY) :])
        except ValueError:
            return f"the spare process answered {answer[:80]!r}"
        return None

    def end(self) -> None:
        """End an unused spare (its whole session) and remove its folder; once."""
        if self.ended:
            return
        self.ended = True
        self.control.close()
        self._notify()
        if not self.used:
            if self.proc.returncode is None:  # not reaped: its pid (and group) are still its own
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        shutil.rmtree(self.scratch, ignore_errors=True)


def _shadows(folder: Path, name: str) -> bool:
    """True when ``folder`` on sys.path would give module ``name`` (a package without __init__.py
    would not: a regular module later on the path wins over a namespace portion)."""
    if (folder / f"{name}.py").is_file() or (folder / name / "__init__.py").is_file():
        return True
    return any(folder.glob(f"{name}.*.so")) or (folder / f"{name}.pyc").is_file()


def _tail(path: Path, limit: int = 600) -> str:
    try:
        text = path.read_text(errors="replace").strip()
    except OSError:
        return ""
    return f": {text[-limit:]}" if text else ""


def mismatch(spare: Spare, command: list[str], cwd: str, env: dict[str, str], host_ml: str | None) -> str | None:
    """Why running this job in the ready spare could differ from starting it cold; None when it
    cannot. ``spare.loaded`` is every top-level module it holds: the ones asked for, their
    dependencies and the runner's own."""
    if len(command) < 2 or command[0] != sys.executable or command[1].startswith("-"):
        return f"the command is not {sys.executable} <script>: {command[:2]}"
    if (host_ml is not None) != spare.namespace:
        return "the job's /opt/ml mode is not the spare's"
    packages = tuple(name.upper() + "_" for name in spare.loaded if not name.startswith("_"))
    for key in sorted(set(env) | set(spare.env)):
        if key in _LATE or env.get(key) == spare.env.get(key):
            continue
        if key.startswith(_STARTUP_PREFIXES) or key.startswith(packages) or key in spare.env:
            return f"the job sets {key}, which is read when the interpreter or a library starts"
    seen = [Path(cwd, command[1]).parent]
    pythonpath = env.get("PYTHONPATH")
    seen += [Path(cwd, entry) for entry in pythonpath.split(os.pathsep)] if pythonpath else []
    # In a namespace the job sees its folder <work_dir>/opt/ml at /opt/ml (host_ml is the former).
    work_dir = None if host_ml is None else Path(host_ml).parent.parent
    for folder in (Path(opt_ml.on_host(str(f), work_dir)) if work_dir else f for f in seen):
        for name in spare.loaded:
            if _shadows(folder, name):
                return f"{folder} holds a module {name!r}, which the spare imported from the environment"
    return None


def _copy(path: Path, fd: int) -> None:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return
    if data:
        os.write(fd, data)


def start(modules: list[str], env: dict[str, str], namespace: bool) -> Spare:
    """Start a spare that imports ``modules`` in the container environment ``env`` (to which its own
    HOME and TMPDIR are added)."""
    scratch = Path(tempfile.mkdtemp(prefix="mlops-spare-"))
    home, tmp, stage = scratch / "home", scratch / "tmp", scratch / "opt"
    for folder in (home, tmp, stage):
        folder.mkdir()
    env = {**env, "HOME": str(home), "TMPDIR": str(tmp)}
    parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    pre_log = scratch / "imports.log"
    try:
        with open(pre_log, "wb") as out:
            proc = subprocess.Popen(
                [sys.executable, str(RUNNER), str(child.fileno()), "1" if namespace else "0", str(stage), *modules],
                cwd=scratch,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                pass_fds=(child.fileno(),),
                start_new_session=True,  # as a job: stop_process signals its group
            )
    except OSError:
        parent.close()
        shutil.rmtree(scratch, ignore_errors=True)
        raise
    finally:
        child.close()
    return Spare(proc, parent, scratch, env, modules, namespace, pre_log)


class Spares:
    """The spares of one execution, keyed by step name, started in run order: one importing at a
    time (``limit``), the next once the step before has taken its spare and found it ready (two
    importing at once, beside the running step, slow the one needed first)."""

    def __init__(self, env: dict[str, str], namespace: bool, limit: int = 1):
        self.env, self.namespace, self.limit = env, namespace, limit
        self.waiting: dict[str, Spare] = {}  # started, not yet taken
        self.importing = 0  # taken by their steps, not yet ready (they still take a core)
        self.starting = 0  # being started by fill
        self.tried: set[str] = set()  # steps that got a spare, or will never get one
        self.taken: set[str] = set()  # steps that started (with their spare or cold)
        self.closed = False
        self.steps: list[tuple[str, str, Any]] = []
        self.get_bytes: Callable[[str], bytes] | None = None
        self.wanted: Callable[[str], bool] = lambda name: True
        self.stop: threading.Event | None = None  # the execution's stop request
        self.lock = threading.Lock()  # steps take their spares from the worker's step threads

    def plan(
        self,
        steps: list[tuple[str, str, Any]],
        get_bytes: Callable[[str], bytes],
        wanted: Callable[[str], bool] | None = None,
    ) -> None:
        """The execution's steps (name, type, arguments) in run order, and where to read their code;
        ``wanted(name)``, asked again on each ``fill``, is False while a step's spare would likely
        go unused (the worker: the step cache will probably serve it)."""
        self.steps, self.get_bytes = steps, get_bytes
        if wanted is not None:
            self.wanted = wanted

    def fill(self, started: Iterable[str] = ()) -> None:
        """Start spares for the next steps that have none, while fewer than ``limit`` import or
        wait; never for ``started`` (steps that start now, cold)."""
        while True:
            with self.lock:
                self.tried.update(started)
                started = ()
                busy = len(self.waiting) + self.importing + self.starting
                step = None if self.closed or busy >= self.limit else self._next()
                if step is None:
                    return
                self.tried.add(step[0])
                self.starting += 1
            spare = self._start(*step)  # outside the lock: it reads the code and starts a process
            with self.lock:
                self.starting -= 1
                keep = spare is not None and not self.closed and step[0] not in self.taken
                if keep:
                    self.waiting[step[0]] = spare
            if spare is not None and not keep:
                spare.end()  # the execution ended, or the step started, meanwhile

    def _next(self) -> tuple[str, str, Any] | None:
        for name, step_type, arguments in self.steps:
            if name not in self.tried and step_type in JOB_STEP_TYPES and self.wanted(name):
                return name, step_type, arguments
        return None

    def _start(self, name: str, step_type: str, arguments: Any) -> Spare | None:
        source = script_source(step_type, arguments, self.get_bytes) if self.get_bytes else None
        modules = top_level_imports(source) if source is not None else []
        if not modules:
            return None
        try:
            spare = start(modules, self.env, self.namespace)
        except OSError as exc:
            log.warning("step %s: no spare process: %s", name, exc)
            return None
        spare.stop = self.stop
        log.info("step %s: spare process %s importing %s", name, spare.proc.pid, ", ".join(modules))
        return spare

    def take(self, name: str) -> Spare | None:
        """The step's spare (None: it starts cold); the next spare starts once this one is ready."""
        with self.lock:
            self.tried.add(name)
            self.taken.add(name)
            spare = self.waiting.pop(name, None)
            if spare is not None:
                self.importing += 1
                spare.on_ready = self._ready
        if spare is None:
            self.fill()
        return spare

    def _ready(self) -> None:
        with self.lock:
            self.importing -= 1
        self.fill()

    def discard(self, names: Iterable[str]) -> None:
        """End the spares of steps that will not run (a branch not taken, a step cache hit)."""
        with self.lock:
            names = set(names)
            self.tried.update(names)
            ended = [self.waiting.pop(name) for name in names if name in self.waiting]
        for spare in ended:
            spare.end()
        if ended:
            self.fill()

    def close(self) -> None:
        """End every spare not taken (the execution ended)."""
        with self.lock:
            self.closed = True
            ended, self.waiting = list(self.waiting.values()), {}
        for spare in ended:
            spare.end()
