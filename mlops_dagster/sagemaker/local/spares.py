"""Job processes started ahead of their jobs, so a step's imports overlap the steps before it.

A fresh Python that imports pandas and scikit-learn spends ~1.4-2 s of this machine's time before
the script's first line; Train and Evaluate pay that one after the other, after Preprocess. SageMaker
provisions a step's instance while it waits to start; locally the worker does the same with the
process: the next Training or single-instance Processing step that waits for other steps gets a
spare process (``spare_runner``) that imports the script's own top-level imports (read from the
step's code in the object store with ``ast``) and waits. One spare imports at a time: the next
starts once the step before has taken its spare and found it ready (two at once, with the running
step, slow the one needed first; ``bench/e2e.py --spares both`` measures). When the step's job
starts, its launch is handed to the spare: the script then runs in that process with exactly the
job's environment, arguments, folder and /opt/ml, one process per job as before. Everything else of
the contract (staging, collecting, failure, stop) is the same code path.

A spare is used only when starting it cold could not differ (``mismatch``): the command is this
interpreter running a script without options; the variables read at interpreter or library start
(PYTHON* but PYTHONPATH, LD_*, MALLOC_*, the host's thread and locale settings, and any named after a
preloaded package, such as SKLEARN_* or JOBLIB_*) are those it started with; the script's folder and
PYTHONPATH do not hold a module named like one it preloaded. Otherwise the job starts cold, and the
job log says why. ``MLOPS_LOCAL_SPARES=0`` turns spares off. Steps ready when the execution starts
start cold: nothing could have been started ahead of them.
"""

from __future__ import annotations

import ast
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
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from mlops_dagster.objects import ObjectStoreError

from . import opt_ml

log = logging.getLogger(__name__)

SETTING = "MLOPS_LOCAL_SPARES"
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
    """The absolute modules a script imports at module level (in try blocks too), in order, once
    each: ``import a.b`` -> a.b, ``from a.b import c`` -> a.b; never __future__ or relative ones."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return []  # the script fails on its own, in its log
    names: list[str] = []
    for node in _module_level(tree.body):
        if isinstance(node, ast.Import):
            found = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and node.module != "__future__":
            found = [node.module]
        else:
            continue
        names.extend(name for name in found if name not in names)
    return names


def _module_level(body: list[ast.stmt]) -> list[ast.stmt]:
    """Statements that run at import: the body, and the bodies of its try and if blocks."""
    out: list[ast.stmt] = []
    for node in body:
        out.append(node)
        if isinstance(node, ast.Try):
            for block in (node.body, *(h.body for h in node.handlers), node.orelse, node.finalbody):
                out.extend(_module_level(block))
        elif isinstance(node, ast.If) and not _is_main_guard(node):
            out.extend(_module_level(node.body) + _module_level(node.orelse))
    return out


def _is_main_guard(node: ast.If) -> bool:
    test = node.test
    return isinstance(test, ast.Compare) and isinstance(test.left, ast.Name) and test.left.id == "__name__"


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
    used: bool = field(default=False)  # given its job: the job runner owns the process now
    on_ready: Callable[[], None] | None = None  # called once its job may run in it (Spares: the next spare)
    ended: bool = field(default=False)

    def ready_for(self, command: list[str], cwd: str, env: dict[str, str], host_ml: str | None) -> str | None:
        """None when the job can run in this spare and the spare has done its imports; else why
        not (the spare is then ended, and the caller starts the job cold)."""
        reason = mismatch(self, command, cwd, env, host_ml) or self._wait_ready()
        if reason is not None:
            self.end()
        if self.on_ready is not None:
            self.on_ready()
        return reason

    def go(self, command: list[str], cwd: str, env: dict[str, str], host_ml: str | None, log_fd: int) -> str | None:
        """Give the job to the spare (after ``ready_for``): None once the script runs in it."""
        _copy(self.pre_log, log_fd)  # what the imports printed, as a cold start's log would have
        message = {"argv": command[1:], "cwd": cwd, "env": env, "host_ml": host_ml}
        try:
            self.control.sendmsg(
                [json.dumps(message).encode()], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, _fd_bytes(log_fd))]
            )
        except OSError as exc:
            self.end()
            return f"the spare process could not be given the job: {exc}"
        self.used = True
        self.end()  # its folder: the job has its own HOME and TMPDIR
        return None

    def _wait_ready(self) -> str | None:
        self.control.settimeout(READY_TIMEOUT_SECONDS)
        try:
            answer = self.control.recv(16)
        except (TimeoutError, OSError) as exc:
            return f"the spare process was not ready: {exc}"
        if answer != b"ready":
            code = self.proc.poll()
            return f"the spare process ended before it was ready (exit code {code}; see {self.pre_log})"
        return None

    def end(self) -> None:
        """End an unused spare (its whole session) and remove its folder; once."""
        if self.ended:
            return
        self.ended = True
        self.control.close()
        if not self.used:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait()
        shutil.rmtree(self.scratch, ignore_errors=True)


def mismatch(spare: Spare, command: list[str], cwd: str, env: dict[str, str], host_ml: str | None) -> str | None:
    """Why running this job in the spare could differ from starting it cold; None when it cannot."""
    if len(command) < 2 or command[0] != sys.executable or command[1].startswith("-"):
        return f"the command is not {sys.executable} <script>: {command[:2]}"
    if (host_ml is not None) != spare.namespace:
        return "the job's /opt/ml mode is not the spare's"
    for key in sorted(set(env) | set(spare.env)):
        if key in _LATE or env.get(key) == spare.env.get(key):
            continue
        packages = tuple(name.split(".")[0].upper() + "_" for name in spare.modules)
        if key.startswith(_STARTUP_PREFIXES) or key.startswith(packages) or key in spare.env:
            return f"the job sets {key}, which is read when the interpreter or a library starts"
    preloaded = {name.split(".")[0] for name in spare.modules}
    seen = [Path(cwd, command[1]).parent]
    seen += [Path(cwd, entry) for entry in env.get("PYTHONPATH", "").split(os.pathsep) if entry]
    folders = [_host_path(folder, host_ml) for folder in seen]
    for folder in folders:
        for name in preloaded:
            if (folder / f"{name}.py").exists() or (folder / name).is_dir():
                return f"{folder} holds a module {name!r}, which the spare imported from the environment"
    return None


def _host_path(path: Path, host_ml: str | None) -> Path:
    """Where a folder the job sees is on the host (its /opt/ml is host_ml in a namespace)."""
    text = str(path)
    if host_ml is not None and (text == opt_ml.OPT_ML or text.startswith(opt_ml.OPT_ML + "/")):
        return Path(host_ml + text[len(opt_ml.OPT_ML) :])
    return path


def _fd_bytes(fd: int) -> bytes:
    return fd.to_bytes(4, sys.byteorder, signed=True)


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
    """The spares of one execution, keyed by step name: at most ``limit`` waiting at once, started
    in run order (the next when one is taken, so a step's imports overlap the step before it)."""

    def __init__(self, env: dict[str, str], namespace: bool, limit: int = 1):
        self.env, self.namespace = env, namespace
        self.limit = limit  # spares importing or waiting at once
        self.waiting: dict[str, Spare] = {}
        self.tried: set[str] = set()
        self.steps: list[tuple[str, str, Any]] = []
        self.get_bytes: Callable[[str], bytes] | None = None
        self.lock = threading.Lock()  # steps take their spares from the worker's step threads

    def plan(self, steps: list[tuple[str, str, Any]], get_bytes: Callable[[str], bytes]) -> None:
        """The execution's steps (name, type, arguments) in run order, and where to read their code."""
        self.steps, self.get_bytes = steps, get_bytes

    def fill(self, started: list[str] = ()) -> None:
        """Start spares for the next steps that have none, up to ``limit`` waiting; never for
        ``started`` (steps that start now, cold)."""
        with self.lock:
            self.tried.update(started)
            for name, step_type, arguments in self.steps:
                if len(self.waiting) >= self.limit:
                    return
                if name in self.tried or step_type not in ("Training", "Processing"):
                    continue
                self.tried.add(name)
                self._start(name, step_type, arguments)

    def _start(self, name: str, step_type: str, arguments: Any) -> None:
        source = script_source(step_type, arguments, self.get_bytes) if self.get_bytes else None
        modules = top_level_imports(source) if source is not None else []
        if not modules:
            return
        try:
            self.waiting[name] = start(modules, self.env, self.namespace)
        except OSError as exc:
            log.warning("step %s: no spare process: %s", name, exc)
        else:
            log.info("step %s: spare process %s importing %s", name, self.waiting[name].proc.pid, ", ".join(modules))

    def take(self, name: str) -> Spare | None:
        """The step's spare (None: it starts cold). The next step's spare starts once this one's
        imports are done (or now, without one): two importing at once slow the one needed first."""
        with self.lock:
            self.tried.add(name)
            spare = self.waiting.pop(name, None)
        if spare is None:
            self.fill()
        else:
            spare.on_ready = self.fill
        return spare

    def discard(self, names: set[str] | list[str]) -> None:
        """End the spares of steps that will not run (a branch not taken, the execution's end)."""
        with self.lock:
            self.tried.update(names)
            ended = [self.waiting.pop(name) for name in names if name in self.waiting]
        for spare in ended:
            spare.end()

    def close(self) -> None:
        self.discard(list(self.waiting))
