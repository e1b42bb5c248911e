"""SageMaker Training and Processing jobs, run on this machine as subprocesses (no Docker).

What SageMaker does with a container, done with directories: ``<work_dir>/opt/ml`` stands in for
``/opt/ml``. On Linux the script sees it at ``/opt/ml`` itself (a private mount namespace, see
``opt_ml``), so scripts that hard-code ``/opt/ml`` paths run unmodified and the environment and
arguments name ``/opt/ml`` as the container's do; elsewhere ``/opt/ml`` paths in arguments and
environment are remapped to the work folder (a script that touches a literal one fails by name).
Inputs are downloaded from the ObjectStore before the script runs and outputs are uploaded from
the work folder after it exits 0; stdout and stderr go to ``log_path`` (the local CloudWatch). This
interpreter (``sys.executable``) stands in for the scikit-learn container's python: the image
URI of a request is not used.

Training follows the sagemaker-training-toolkit, which the framework containers run (its
environment, config files and arguments are computed in ``contract``): channels in
``input/data/<channel>`` and ``SM_CHANNEL_<CHANNEL>``; hyperparameters decoded from the SDK's
JSON strings into ``SM_HPS``, ``SM_HP_<NAME>`` and ``--name value`` arguments; the code from
``sagemaker_submit_directory``; the model directory packed into
``<S3OutputPath>/<job>/output/model.tar.gz``; ``output/failure`` as the FailureReason.
Processing: each input to its ``LocalPath``, ``ContainerEntrypoint`` + ``ContainerArguments``
(with ``/opt/ml`` paths remapped when there is no namespace), each output's ``LocalPath`` to its ``S3Uri``.
A processing job with ``ClusterConfig.InstanceCount`` N runs as N processes at once, hosts
``algo-1``..``algo-N`` (each in ``<work_dir>/algo-<n>`` with its own resourceconfig.json and log);
a ``ShardedByS3Key`` input gives each the objects of its shard (the keys in order, dealt
round-robin), ``FullyReplicated`` gives each all of them; every instance's outputs are uploaded;
the first instance to fail fails the job and ends the others.

A job's environment is a container's, not this shell's (see ``HOST_ENV_NAMES``): the contract's
``SM_*`` variables, the request's ``Environment``, and from the host only what a process needs to
run here; ``HOME`` and ``TMPDIR`` are folders private to the job, removed when it ends. The script
runs as ``python <script>``: Python puts the script's own folder on ``sys.path`` (the code's
folder, as in the container), never the working directory; ``-P`` is not used, since it would
hide the script's sibling modules, which the toolkit's contract lets it import.

What one machine cannot do fails the job before it starts, with a reason naming it: training on
more than one instance, Pipe input mode, manifest or Gzip inputs, built-in algorithms and images without
``sagemaker_program``, processing without ``ContainerEntrypoint``.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import re
import shlex
import shutil
import signal
import site
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, BinaryIO

from botocore.exceptions import BotoCoreError
from botocore.exceptions import ClientError as BotoClientError

from mlops_dagster.objects import ObjectStoreError, split_uri
from mlops_dagster.sagemaker.local import contract, opt_ml, spares
from mlops_dagster.sagemaker.local.spares import Spare, Spares

if TYPE_CHECKING:
    from mlops_dagster.resources.object_store import ObjectStore

OPT_ML = "/opt/ml"
PROCESSING_ROOT = "/opt/ml/processing/"  # SageMaker requires every processing LocalPath under it
STOP_GRACE_SECONDS = 5.0
FAILURE_REASON_LIMIT = 1024  # SageMaker truncates FailureReason to this length
TAIL_LINES = 20
# What a job gets from this host's environment: an allow-list, as a container's image would define
# it. Anything else (API tokens, cloud credentials, PYTHONPATH, this project's own MLOPS_*/DAGSTER_*
# settings) stays out; SM_* are set per job.
HOST_ENV_NAMES = frozenset(
    {
        "PATH",  # to find programs; this interpreter's folder is put first (the container's python)
        "LANG",  # locale (and LC_* below): text decoding, sorting
        "LANGUAGE",
        "TZ",  # time zone of timestamps the script writes
        "LD_LIBRARY_PATH",  # shared libraries this host's python or numpy may need to start
        "NUMEXPR_NUM_THREADS",  # thread pools of the numeric libraries
        "NUMEXPR_MAX_THREADS",
        "VECLIB_MAXIMUM_THREADS",
    }
)
# Locale, and BLAS/OpenMP threading and CPU detection (OMP_NUM_THREADS, OPENBLAS_CORETYPE,
# OPENBLAS_L2_SIZE, MKL_NUM_THREADS, ...): a host may need these for numpy not to crash or oversubscribe.
HOST_ENV_PREFIXES = ("LC_", "OMP_", "OPENBLAS_", "GOTO_", "MKL_", "KMP_", "BLIS_", "NVPL_")
# Set for every job, as the scikit-learn container's image sets them.
CONTAINER_ENV = {"PYTHONUNBUFFERED": "1", "PYTHONDONTWRITEBYTECODE": "1", "PYTHONIOENCODING": "UTF-8"}
# And should a job use boto3 anyway: no credentials file, no config file, no instance metadata.
NO_AWS_ENV = {
    "AWS_CONFIG_FILE": os.devnull,
    "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
    "AWS_EC2_METADATA_DISABLED": "true",
}
_CHANNEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.\-_]*$")
_PYTHON = re.compile(r"^python(3(\.\d+)?)?$")
_STORE_ERRORS = (ObjectStoreError, OSError, ValueError, BotoCoreError, BotoClientError)

MAX_PROCESSING_INSTANCES = 100  # SageMaker's limit for ProcessingResources.ClusterConfig.InstanceCount
DISTRIBUTIONS = ("FullyReplicated", "ShardedByS3Key")

# Processes stop_process was called on: their run_* call reports "Stopped", not "Failed".
_stopped: weakref.WeakSet[subprocess.Popen] = weakref.WeakSet()
# A multi-instance job's first process (the one on_start gets) -> all its instances' processes,
# which share that first process's group.
_instances: dict[subprocess.Popen, list[subprocess.Popen]] = {}


@dataclass
class JobResult:
    status: str  # "Completed" | "Failed" | "Stopped"
    failure_reason: str | None  # SageMaker-like, e.g. "AlgorithmError: <failure file or log tail>"
    outputs: dict  # training: {"S3ModelArtifacts": uri}; processing: {}
    exit_code: int | None  # None when the script never ran; negative for a signal
    log_path: Path
    script_seconds: float | None = None  # wall time of the script process alone (no staging)


class JobSetupError(Exception):
    """The job cannot run or its outputs cannot be stored; the message is the FailureReason."""


def _client_error(message: str) -> JobSetupError:
    return JobSetupError(f"ClientError: {message}")


@dataclass(frozen=True)
class _View:
    """A job's /opt/ml: ``<work_dir>/opt/ml`` on the host, which the script sees at /opt/ml itself
    (``namespace``, see opt_ml) or at its host path, with /opt/ml paths remapped (``why_not`` says why)."""

    work_dir: Path
    namespace: bool
    why_not: str

    @property
    def host_ml(self) -> Path:
        return self.work_dir / "opt" / "ml"

    @property
    def seen_ml(self) -> Path:
        return Path(OPT_ML) if self.namespace else self.host_ml

    def seen(self, value: str) -> str:
        """A container path (or any value) as the script must be given it."""
        return value if self.namespace else opt_ml.on_host(value, self.work_dir)


def _view(work_dir: Path) -> _View:
    try:
        namespace, why_not = opt_ml.job_mode()
    except opt_ml.ModeError as exc:
        raise _client_error(str(exc)) from exc
    return _View(work_dir, namespace, why_not)


@dataclass
class _Launch:
    command: list[str]
    cwd: Path  # as the script sees it
    env: dict[str, str]
    max_runtime: int | None
    failure_file: Path
    view: _View
    host: str = contract.CURRENT_HOST
    log_path: Path | None = None  # an instance's own log (<log>.algo-<n>.log after the first); None: the job's


Note = Callable[[str], None]


# --------------------------------------------------------------------------- public interface


def run_training_job(
    name: str,
    request: dict,
    store: ObjectStore,
    work_dir: Path,
    log_path: Path,
    on_start: Callable[[subprocess.Popen], None] | None = None,
    job_arn: str | None = None,
    spare: Spare | None = None,
) -> JobResult:
    """Run a resolved CreateTrainingJob request (without TrainingJobName) and wait for it.

    ``job_arn``, when given, is in the container as SageMaker puts it there (TRAINING_JOB_ARN).
    ``spare``, when given, is a process started ahead for this job (see spares.py): the script runs
    in it when it can, else the job starts cold and the spare is ended.
    """
    work_dir = Path(work_dir).absolute()
    return _run_job(
        "training",
        name,
        Path(log_path),
        on_start,
        prepare=lambda note: [_prepare_training(name, request, store, work_dir, note, job_arn)],
        collect=lambda note: _collect_training(name, request, store, work_dir, note),
        spare=spare,
    )


def run_processing_job(
    name: str,
    request: dict,
    store: ObjectStore,
    work_dir: Path,
    log_path: Path,
    on_start: Callable[[subprocess.Popen], None] | None = None,
    job_arn: str | None = None,
    spare: Spare | None = None,
) -> JobResult:
    """Run a resolved CreateProcessingJob request (without ProcessingJobName) and wait for it.

    ``job_arn``, when given, is in the container as SageMaker puts it there (processingjobconfig.json);
    ``spare`` as for run_training_job (used for a single instance only).
    """
    work_dir = Path(work_dir).absolute()
    return _run_job(
        "processing",
        name,
        Path(log_path),
        on_start,
        prepare=lambda note: _prepare_processing(name, request, store, work_dir, note, job_arn),
        collect=lambda note: _collect_processing(request, store, _instance_dirs(request, work_dir), note),
        spare=spare,
    )


def execution_spares() -> Spares | None:
    """Spare processes for an execution's jobs (see spares.py), None when MLOPS_LOCAL_SPARES is off
    or the /opt/ml mode is misconfigured (each job then fails with that reason)."""
    if not spares.enabled():
        return None
    try:
        namespace, _why_not = opt_ml.job_mode()
    except opt_ml.ModeError:
        return None
    return Spares(_base_env(), namespace)


def stop_process(proc: subprocess.Popen, grace_seconds: float = STOP_GRACE_SECONDS) -> None:
    """Stop a job as StopTrainingJob does: SIGTERM to its process group, SIGKILL after the grace.

    Its run_* call then returns "Stopped". A process that has already ended is left alone.
    """
    procs = _instances.get(proc)
    if procs is None:
        if proc.poll() is not None:
            return
        _stopped.add(proc)
        _terminate(proc, grace_seconds)
        proc.wait()
        return
    if all(p.poll() is not None for p in procs):
        return
    _stopped.add(proc)
    _terminate_instances(procs, grace_seconds)


# --------------------------------------------------------------------------- running a job


def _run_job(
    kind: str,
    name: str,
    log_path: Path,
    on_start: Callable[[subprocess.Popen], None] | None,
    prepare: Callable[[Note], list[_Launch]],
    collect: Callable[[Note], dict],
    spare: Spare | None = None,
) -> JobResult:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log, _ending(spare):

        def note(line: str) -> None:
            log.write(f"{line}\n".encode())
            log.flush()

        note(f"=== {kind} job {name}: preparing inputs and code ===")
        try:
            launches = prepare(note)
        except JobSetupError as exc:
            return _finish(note, kind, name, JobResult("Failed", str(exc), {}, None, log_path))
        spare, started_ahead = _spare_for(spare, launches)

        for launch in launches[1:]:  # SageMaker gives each instance its own log stream
            launch.log_path = log_path.with_name(f"{log_path.stem}.{launch.host}{log_path.suffix}")
        for launch in launches:
            on = f" on {launch.host}" if len(launches) > 1 else ""
            where = f", log {launch.log_path}" if launch.log_path else ""
            note(
                f"=== {kind} job {name}{on}: running {shlex.join(launch.command)} (cwd {launch.cwd}{where})"
                f"{started_ahead} ==="
            )
        offsets = [log.tell() if launch.log_path is None else _size(launch.log_path) for launch in launches]
        started = time.monotonic()
        procs: list[subprocess.Popen] = []
        with contextlib.ExitStack() as stack:
            try:
                for launch in launches:
                    # HOME and TMPDIR of each instance: fresh, private (0700) and removed after it, like a
                    # container's own filesystem. In the host's temp folder, not work_dir: a short path
                    # keeps the sockets that multiprocessing/joblib create in TMPDIR under the 108-byte
                    # AF_UNIX limit.
                    scratch = Path(
                        stack.enter_context(
                            tempfile.TemporaryDirectory(prefix="mlops-job-", ignore_cleanup_errors=True)
                        )
                    )
                    launch.env = {**_scratch_env(scratch), **launch.env}  # the request's Environment may set them
                    out = log if launch.log_path is None else stack.enter_context(open(launch.log_path, "ab"))
                    group = None if len(launches) == 1 else procs[0].pid if procs else 0
                    proc = _adopt(spare, launch, out, note) if spare is not None else None
                    procs.append(proc or _launch(launch, out, scratch, group))
            except JobSetupError as exc:
                _end_instances(procs)
                return _finish(note, kind, name, JobResult("Failed", str(exc), {}, None, log_path))
            if len(procs) > 1:
                _instances[procs[0]] = procs
            try:
                if on_start is not None:
                    on_start(procs[0])
                timed_out, first_failed = _wait_instances(procs, launches[0].max_runtime)
            finally:
                # A container ends with its main process: so does whatever the script left running
                # (and the job itself when the caller's callback raised, or another instance failed).
                _end_instances(procs)
                _instances.pop(procs[0], None)
        script_seconds = time.monotonic() - started
        # Before the next note: the outcome reads the end of the script's own output.
        result = _outcome(procs, timed_out, first_failed, launches, log_path, offsets)
        note(f"=== {kind} job {name}: script ran {script_seconds:.3f} s ===")
        result.script_seconds = script_seconds
        if result.status == "Completed":
            try:
                result.outputs = collect(note)
            except JobSetupError as exc:
                result = JobResult("Failed", str(exc), {}, result.exit_code, log_path)
        return _finish(note, kind, name, result)


@contextlib.contextmanager
def _ending(spare: Spare | None):
    """A spare given to a job that never used it (a setup failure, an error) ends with the job."""
    try:
        yield
    finally:
        if spare is not None and not spare.used:
            spare.end()


def _spare_for(spare: Spare | None, launches: list[_Launch]) -> tuple[Spare | None, str]:
    """The spare this job runs in (None: it starts cold), and what the job log says about it."""
    if spare is None:
        return None, ""
    if len(launches) != 1:
        spare.end()
        return None, " (started cold: a spare process serves a single instance)"
    launch = launches[0]
    reason = spare.ready_for(launch.command, str(launch.cwd), launch.env, _host_ml(launch), launch.max_runtime)
    if reason is not None:
        return None, f" (started cold: {reason})"
    return spare, f" (in a process started ahead, which imported {', '.join(spare.modules)})"


def _host_ml(launch: _Launch) -> str | None:
    return str(launch.view.host_ml) if launch.view.namespace else None


def _adopt(spare: Spare, launch: _Launch, log: BinaryIO, note: Note) -> subprocess.Popen | None:
    """The spare running the job's script, or None (noted) when it could not be given the job."""
    reason = spare.go(launch.command, str(launch.cwd), launch.env, _host_ml(launch), log.fileno())
    if reason is not None:
        note(f"=== started cold: {reason} ===")
        return None
    return spare.proc


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _end_instances(procs: list[subprocess.Popen]) -> None:
    """SIGKILL the group the instances share (their children too), and reap them."""
    if procs:
        _signal_group(procs[0].pid, signal.SIGKILL)
    for proc in procs:
        proc.wait()


def _wait_instances(procs: list[subprocess.Popen], max_runtime: int | None) -> tuple[bool, int | None]:
    """(timed out, index of the first instance that failed): until all ended, one failed, or max_runtime."""
    if len(procs) == 1:
        timed_out = _wait(procs[0], max_runtime)
        return timed_out, (0 if not timed_out and procs[0].returncode != 0 else None)
    ended: queue.SimpleQueue[int] = queue.SimpleQueue()
    for index, proc in enumerate(procs):
        threading.Thread(target=lambda i=index, p=proc: (p.wait(), ended.put(i)), daemon=True).start()
    deadline = None if max_runtime is None else time.monotonic() + max_runtime
    for _ in procs:
        try:
            index = ended.get(timeout=None if deadline is None else max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            _terminate_instances(procs, STOP_GRACE_SECONDS)
            return True, None
        if procs[index].returncode != 0 and procs[0] not in _stopped:  # (a stop gives the rest their grace)
            return False, index  # the job fails with it; the caller ends the other instances
    return False, None


def _terminate_instances(procs: list[subprocess.Popen], grace_seconds: float) -> None:
    """SIGTERM to the instances' shared group, SIGKILL after the grace (the group is ours: the
    first instance leads it, and it lives while any member does, even once that one has ended)."""
    _signal_group(procs[0].pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_seconds
    for proc in procs:
        try:
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            break
    _signal_group(procs[0].pid, signal.SIGKILL)
    for proc in procs:
        proc.wait()


def _launch(launch: _Launch, log: BinaryIO, scratch: Path, group: int | None) -> subprocess.Popen:
    """Start one instance: ``group`` None, in a session and group of its own (one instance); else in
    process group ``group`` (0: a new one, for the first of several instances; then the first's pid).

    Several instances share one group, so one signal stops them all; a group cannot be joined across
    sessions, so theirs stays in this session (the worker that runs them has no terminal).
    """
    command, cwd = launch.command, launch.cwd
    if launch.view.namespace:
        # The launcher binds the work folder on /opt/ml, changes to cwd (which may be under /opt/ml)
        # and execs the command: the job's process is the script's, as without it.
        stage = scratch / "opt"
        stage.mkdir()
        command = opt_ml.launcher_command(str(launch.view.host_ml), str(stage), str(cwd), command)
        cwd = launch.view.work_dir
    try:
        return subprocess.Popen(
            command,
            cwd=cwd,
            env=launch.env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            # Its own process group, so that stop_process reaches its children (and the other instances).
            start_new_session=group is None,
            process_group=group,
        )
    except OSError as exc:
        raise _client_error(f"cannot start {launch.command[0]!r}: {exc}") from exc


def _wait(proc: subprocess.Popen, max_runtime: int | None) -> bool:
    """Wait for the process; True when it outlived max_runtime and was killed."""
    try:
        proc.wait(timeout=max_runtime)
        return False
    except subprocess.TimeoutExpired:
        _terminate(proc, STOP_GRACE_SECONDS)
        return True


def _outcome(
    procs: list[subprocess.Popen],
    timed_out: bool,
    first_failed: int | None,
    launches: list[_Launch],
    log_path: Path,
    offsets: list[int],
) -> JobResult:
    code = procs[0].returncode
    if procs[0] in _stopped:
        return JobResult("Stopped", None, {}, code, log_path)
    if timed_out:
        reason = (
            f"MaxRuntimeExceeded: the job ran longer than StoppingCondition.MaxRuntimeInSeconds "
            f"({launches[0].max_runtime} s) and was stopped"
        )
        return JobResult("Failed", reason, {}, code, log_path)
    if first_failed is not None:
        launch, code = launches[first_failed], procs[first_failed].returncode
        reason = _algorithm_error(code, launch, launch.log_path or log_path, offsets[first_failed])
        if len(procs) > 1:  # which instance, as SageMaker's log streams name it
            reason = reason.replace("AlgorithmError: ", f"AlgorithmError: {launch.host}: ", 1)[:FAILURE_REASON_LIMIT]
        return JobResult("Failed", reason, {}, code, log_path)
    return JobResult("Completed", None, {}, code, log_path)


def _finish(note: Note, kind: str, name: str, result: JobResult) -> JobResult:
    summary = f"=== {kind} job {name}: {result.status}"
    if result.exit_code is not None:
        summary += f" (exit code {result.exit_code})"
    if result.failure_reason:
        summary += f": {result.failure_reason.splitlines()[0]}"
    note(summary + " ===")
    return result


def _algorithm_error(code: int, launch: _Launch, log_path: Path, offset: int) -> str:
    """The script's own failure file if it wrote one (SageMaker's rule), else the end of its log.

    Without a namespace, a script that failed on a literal /opt/ml path is told so by name; with
    one, a launcher that could not bind /opt/ml is a ClientError.
    """
    if launch.failure_file.is_file():
        text = launch.failure_file.read_text(errors="replace").strip()
        if text:
            return ("AlgorithmError: " + text)[:FAILURE_REASON_LIMIT]
    how = f"killed by signal {_signal_name(-code)}" if code < 0 else f"exit code {code}"
    tail = _log_tail(log_path, offset)
    last = tail.splitlines()[-1] if tail else ""
    if launch.view.namespace and code == opt_ml.SETUP_FAILED and last.startswith(opt_ml.SETUP_FAILED_PREFIX):
        return f"ClientError: {last} (set {opt_ml.MODE_VARIABLE}=remap to run jobs without it)"
    if not launch.view.namespace:
        literal = opt_ml.literal_path_failure(tail, str(launch.view.host_ml), launch.view.why_not)
        if literal:
            head = literal + ". Last lines of the log:\n"
            room = FAILURE_REASON_LIMIT - len(head)
            return (head + (tail[-room:] if room > 0 else ""))[:FAILURE_REASON_LIMIT]
    head = f"AlgorithmError: {how}" + (", last lines of the log:\n" if tail else " (the script printed nothing)")
    return head + tail[-(FAILURE_REASON_LIMIT - len(head)) :]


def _log_tail(log_path: Path, offset: int, lines: int = TAIL_LINES) -> str:
    with open(log_path, "rb") as f:
        f.seek(max(offset, f.seek(0, os.SEEK_END) - 64 * 1024))
        text = f.read().decode(errors="replace")
    return "\n".join(line.rstrip() for line in text.rstrip().splitlines()[-lines:])


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return str(number)


def _terminate(proc: subprocess.Popen, grace_seconds: float) -> None:
    """SIGTERM, then SIGKILL after the grace: to the group when the process leads one."""
    try:
        own_group = os.getpgid(proc.pid) == proc.pid
    except ProcessLookupError:
        return

    def send(sig: signal.Signals) -> None:
        if own_group:
            _signal_group(proc.pid, sig)
        else:  # never signal a group we did not create (it could be the caller's own)
            proc.send_signal(sig)

    send(signal.SIGTERM)
    try:
        proc.wait(timeout=grace_seconds)
    except subprocess.TimeoutExpired:
        pass
    send(signal.SIGKILL)


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass  # the group is already gone


# --------------------------------------------------------------------------- training


def _prepare_training(
    name: str, request: dict, store: ObjectStore, work_dir: Path, note: Note, job_arn: str | None = None
) -> _Launch:
    _check_training_request(request)
    _output_base(request, name)  # a bad S3OutputPath fails now, not after the training
    max_runtime = _max_runtime(request)
    view = _view(work_dir)
    ml = _fresh_opt_ml(work_dir)
    given = _string_hyperparameters(request.get("HyperParameters"))
    decoded = {key: _decode_hyperparameter(value) for key, value in given.items()}
    _framework, user_hps = contract.split_hyperparameters(decoded)
    program = _required_string(decoded, "sagemaker_program")
    submit_dir = _required_string(decoded, "sagemaker_submit_directory")

    _training_dirs(ml)
    _download_channels(request, store, ml / "input" / "data", note)
    resource_config, data_config = _write_training_config(ml / "input" / "config", given, request)
    code_dir = ml / "code"
    _fetch_source_dir(store, submit_dir, work_dir / "staging", code_dir, note)
    _check_program(code_dir, program, submit_dir)

    args = [view.seen(arg) for arg in contract.to_cmd_args(user_hps)]
    image = (request.get("AlgorithmSpecification") or {}).get("TrainingImage")
    # In the container's order: the image's and the platform's variables, the request's, the toolkit's.
    env = {**_base_env(), **contract.platform_env(name, image, job_arn)}
    env.update(_remapped_environment(request.get("Environment"), view))
    env.update(contract.toolkit_env(view.seen_ml, decoded, resource_config, data_config, env))
    # The toolkit puts the code folder on the path; a PYTHONPATH from the request's Environment follows it.
    seen_code = view.seen_ml / "code"
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(seen_code), env.get("PYTHONPATH")) if p)
    command = [sys.executable, program, *args]
    return _Launch(command, seen_code, env, max_runtime, ml / "output" / "failure", view)


def _collect_training(name: str, request: dict, store: ObjectStore, work_dir: Path, note: Note) -> dict:
    ml = work_dir / "opt" / "ml"
    base = _output_base(request, name)
    staging = work_dir / "staging"
    model_uri = f"{base}/model.tar.gz"
    _upload(store, _pack(ml / "model", staging / "model.tar.gz"), model_uri, note)
    output_data = ml / "output" / "data"
    if any(p.is_file() for p in output_data.rglob("*")):
        _upload(store, _pack(output_data, staging / "output.tar.gz"), f"{base}/output.tar.gz", note)
    return {"S3ModelArtifacts": model_uri}


def _check_training_request(request: dict) -> None:
    algorithm = request.get("AlgorithmSpecification") or {}
    if algorithm.get("AlgorithmName"):
        raise _client_error(f"built-in algorithm {algorithm['AlgorithmName']!r} cannot run locally")
    if algorithm.get("ContainerEntrypoint"):
        raise _client_error("AlgorithmSpecification.ContainerEntrypoint is not supported locally")
    _check_input_mode("AlgorithmSpecification.TrainingInputMode", algorithm.get("TrainingInputMode"))
    _check_one_instance("ResourceConfig", request.get("ResourceConfig") or {})


def _string_hyperparameters(hyperparameters: object) -> dict[str, str]:
    """The HyperParameters as SageMaker stores them: strings (a resolved number is JSON-encoded)."""
    if hyperparameters is None:
        return {}
    if not isinstance(hyperparameters, dict):
        raise _client_error(f"HyperParameters must be a map of strings, got {type(hyperparameters).__name__}")
    return {str(k): v if isinstance(v, str) else json.dumps(v) for k, v in hyperparameters.items()}


def _decode_hyperparameter(value: str) -> object:
    """The SDK JSON-encodes each value ('"train.py"', '100'); the toolkit decodes what it can."""
    try:
        return json.loads(value)
    except ValueError:
        return value


def _required_string(hyperparameters: dict, key: str) -> str:
    value = hyperparameters.get(key)
    if not isinstance(value, str) or not value:
        raise _client_error(
            f"hyperparameter {key!r} is missing: only framework-container jobs (an SDK estimator "
            "with an entry_point) run locally"
        )
    return value


def _download_channels(request: dict, store: ObjectStore, data_dir: Path, note: Note) -> dict[str, Path]:
    channels: dict[str, Path] = {}
    for channel in request.get("InputDataConfig") or []:
        name = channel.get("ChannelName")
        if not isinstance(name, str) or not _CHANNEL_NAME.match(name):
            raise _client_error(f"invalid ChannelName {name!r}")
        if name in channels:
            raise _client_error(f"channel {name!r} appears twice in InputDataConfig")
        what = f"channel '{name}'"
        source = (channel.get("DataSource") or {}).get("S3DataSource")
        if source is None:
            raise _client_error(f"{what}: only S3DataSource inputs run locally")
        _check_input_mode(f"{what} InputMode", channel.get("InputMode"))
        _check_s3_input(what, source.get("S3DataType"), channel.get("CompressionType"))
        channels[name] = data_dir / name
        _download_prefix(store, source.get("S3Uri"), channels[name], what, note)
    return channels


def _write_training_config(config_dir: Path, hyperparameters: dict, request: dict) -> tuple[dict, dict]:
    """hyperparameters.json (as given), resourceconfig.json and inputdataconfig.json (both returned)."""
    instance_type = (request.get("ResourceConfig") or {}).get("InstanceType") or "local"
    resource_config = contract.training_resource_config(instance_type)
    data_config = contract.input_data_config(request)
    _write_json(config_dir / "hyperparameters.json", hyperparameters)
    _write_json(config_dir / "resourceconfig.json", resource_config)
    _write_json(config_dir / "inputdataconfig.json", data_config)
    return resource_config, data_config


def _fetch_source_dir(store: ObjectStore, uri: str, staging: Path, code_dir: Path, note: Note) -> None:
    """Download sagemaker_submit_directory (a sourcedir.tar.gz) and unpack it into code_dir."""
    staging = _fresh_dir(staging)
    archive = _download_object(store, uri, staging / "sourcedir.tar.gz", "sagemaker_submit_directory")
    code_dir.mkdir(parents=True, exist_ok=True)
    try:
        with tarfile.open(archive, "r:*") as tar:
            # The "data" filter refuses members that would land outside code_dir (../, links, devices).
            tar.extractall(code_dir, filter="data")
    except (tarfile.TarError, OSError) as exc:
        raise _client_error(f"cannot unpack the source directory {uri}: {exc}") from exc
    note(f"code: {uri} -> {code_dir}")


def _check_program(code_dir: Path, program: str, submit_dir: str) -> None:
    path = PurePosixPath(program)
    if path.is_absolute() or ".." in path.parts or not (code_dir / program).is_file():
        raise _client_error(f"sagemaker_program {program!r} is not a file in {submit_dir}")


def _training_dirs(ml: Path) -> dict[str, Path]:
    """The toolkit's directories (its names), created as SageMaker creates them before the script."""
    dirs = {
        "model_dir": ml / "model",
        "output_dir": ml / "output",
        "output_data_dir": ml / "output" / "data",
        "output_intermediate_dir": ml / "output" / "intermediate",
        "input_dir": ml / "input",
        "input_config_dir": ml / "input" / "config",
    }
    for path in dirs.values():
        path.mkdir(parents=True, exist_ok=True)
    return dirs


def _output_base(request: dict, name: str) -> str:
    """<S3OutputPath>/<job name>/output: where SageMaker puts model.tar.gz and output.tar.gz."""
    path = (request.get("OutputDataConfig") or {}).get("S3OutputPath")
    try:
        split_uri(path)
    except ValueError as exc:
        raise _client_error(f"OutputDataConfig.S3OutputPath: {exc}") from exc
    return f"{path.rstrip('/')}/{name}/output"


PACK_LEVEL = 6


def _pack(source: Path, archive: Path) -> Path:
    """A tar.gz of the directory's content, with the files at the archive root (as SageMaker packs it)."""
    archive.parent.mkdir(parents=True, exist_ok=True)
    # gzip's default level, as `tar -czf` packs: tarfile's default, 9, took 2.5 s instead of 0.4 s
    # on a 7 MB forest for 2% smaller archives, and was most of the Train step's time outside its script.
    with tarfile.open(archive, "w:gz", compresslevel=PACK_LEVEL) as tar:
        for entry in sorted(source.iterdir()):
            tar.add(entry, arcname=entry.name)
    return archive


# --------------------------------------------------------------------------- processing


def _prepare_processing(
    name: str, request: dict, store: ObjectStore, work_dir: Path, note: Note, job_arn: str | None = None
) -> list[_Launch]:
    """One launch per instance of ClusterConfig.InstanceCount, each in its own folder with its inputs."""
    max_runtime = _max_runtime(request)
    app = request.get("AppSpecification") or {}
    entrypoint = app.get("ContainerEntrypoint")
    if not isinstance(entrypoint, list) or not entrypoint:
        raise _client_error(
            "AppSpecification.ContainerEntrypoint is required locally (an image's own entry point needs Docker)"
        )
    dirs = _instance_dirs(request, work_dir)
    hosts = [f"algo-{number}" for number in range(1, len(dirs) + 1)]
    for instance_dir in dirs:
        _processing_outputs(request, instance_dir)  # a bad output fails now, not after the script
    view = _view(work_dir)
    job_config = contract.processing_job_config(name, request, job_arn)
    arguments = [*entrypoint, *(app.get("ContainerArguments") or [])]
    launches = []
    for index, (host, instance_dir) in enumerate(zip(hosts, dirs, strict=True)):
        instance_view = _View(instance_dir, view.namespace, view.why_not)
        ml = _fresh_opt_ml(instance_dir)
        _download_processing_inputs(request, store, instance_dir, (index, len(dirs)), note)
        for _output, local in _processing_outputs(request, instance_dir):
            local.mkdir(parents=True, exist_ok=True)  # SageMaker creates them before the script runs
        config_dir = ml / "config"
        config_dir.mkdir(parents=True, exist_ok=True)
        _write_json(config_dir / "processingjobconfig.json", job_config)
        _write_json(config_dir / "resourceconfig.json", contract.processing_resource_config(host, hosts))
        command = [instance_view.seen(str(part)) for part in arguments]
        if _PYTHON.match(command[0]):
            command[0] = sys.executable  # the container's python is this one
        env = _base_env()
        env.update(_remapped_environment(request.get("Environment"), instance_view))
        failure_file = ml / "output" / "failure"
        launches.append(_Launch(command, instance_dir, env, max_runtime, failure_file, instance_view, host))
    return launches


def _instance_dirs(request: dict, work_dir: Path) -> list[Path]:
    """Each instance's work folder: work_dir itself for one instance, else work_dir/algo-<n>."""
    cluster = (request.get("ProcessingResources") or {}).get("ClusterConfig") or {}
    count = _instance_count("ProcessingResources.ClusterConfig", cluster, MAX_PROCESSING_INSTANCES)
    return [work_dir] if count == 1 else [work_dir / f"algo-{n}" for n in range(1, count + 1)]


def _download_processing_inputs(
    request: dict, store: ObjectStore, instance_dir: Path, shard: tuple[int, int], note: Note
) -> None:
    """Each S3Input to its LocalPath: all of it (FullyReplicated), or this instance's shard."""
    index, count = shard
    for position, item in enumerate(request.get("ProcessingInputs") or []):
        what = f"processing input '{item.get('InputName', position)}'"
        source = item.get("S3Input")
        if source is None:
            raise _client_error(f"{what}: only S3Input inputs run locally (not DatasetDefinition)")
        _check_input_mode(f"{what} S3InputMode", source.get("S3InputMode"))
        _check_s3_input(what, source.get("S3DataType"), source.get("S3CompressionType"))
        distribution = source.get("S3DataDistributionType") or "FullyReplicated"
        if distribution not in DISTRIBUTIONS:
            raise _client_error(f"{what}: S3DataDistributionType {distribution!r} is not one of {DISTRIBUTIONS}")
        local = _processing_path(source.get("LocalPath"), instance_dir, what)
        sharded = distribution == "ShardedByS3Key" and count > 1
        if sharded:
            what = f"{what} (shard {index + 1} of {count})"
        _download_prefix(store, source.get("S3Uri"), local, what, note, shard if sharded else None)


def _collect_processing(request: dict, store: ObjectStore, instance_dirs: list[Path], note: Note) -> dict:
    """Each output's LocalPath to its S3Uri, from every instance (SageMaker's EndOfJob upload)."""
    for instance_dir in instance_dirs:
        for output, local in _processing_outputs(request, instance_dir):
            base = output["S3Output"]["S3Uri"].rstrip("/")
            files = sorted(p for p in local.rglob("*") if p.is_file())
            for path in files:
                _upload(store, path, f"{base}/{path.relative_to(local).as_posix()}", None)
            note(f"output '{output.get('OutputName')}': {len(files)} files {local} -> {base}")
    return {}


def _processing_outputs(request: dict, work_dir: Path) -> list[tuple[dict, Path]]:
    """(output, local directory) for each ProcessingOutputConfig output, checked."""
    pairs = []
    for index, output in enumerate((request.get("ProcessingOutputConfig") or {}).get("Outputs") or []):
        what = f"processing output '{output.get('OutputName', index)}'"
        if output.get("S3Output") is None:
            raise _client_error(f"{what}: only S3Output outputs run locally (not FeatureStoreOutput)")
        _split_uri(output["S3Output"].get("S3Uri"), what)
        pairs.append((output, _processing_path(output["S3Output"].get("LocalPath"), work_dir, what)))
    return pairs


def _processing_path(local_path: object, work_dir: Path, what: str) -> Path:
    """A LocalPath (which SageMaker requires under /opt/ml/processing/) remapped under work_dir."""
    if not isinstance(local_path, str) or not local_path.startswith(PROCESSING_ROOT):
        raise _client_error(f"{what}: LocalPath {local_path!r} must begin with {PROCESSING_ROOT}")
    if ".." in PurePosixPath(local_path).parts:
        raise _client_error(f"{what}: LocalPath {local_path!r} has '..' parts")
    return Path(opt_ml.on_host(local_path, work_dir))


def _split_uri(uri: object, what: str) -> tuple[str, str]:
    """split_uri, with a bad URI as the job's ClientError naming what it was for."""
    try:
        return split_uri(uri)  # type: ignore[arg-type]
    except ValueError as exc:
        raise _client_error(f"{what}: {exc}") from exc


# --------------------------------------------------------------------------- shared helpers


def _check_one_instance(where: str, config: dict) -> None:
    count = _instance_count(where, config)
    if count != 1:
        raise _client_error(f"{where}.InstanceCount is {count}: local mode runs one instance")


def _instance_count(where: str, config: dict, limit: int | None = None) -> int:
    """InstanceCount, checked (one when absent); heterogeneous groups cannot run here."""
    if config.get("InstanceGroups"):
        raise _client_error(f"{where}.InstanceGroups (heterogeneous clusters) cannot run locally")
    count = config.get("InstanceCount", 1)
    try:
        count = int(count)
    except (TypeError, ValueError) as exc:
        raise _client_error(f"{where}.InstanceCount must be an integer, got {count!r}") from exc
    if count < 1:
        raise _client_error(f"{where}.InstanceCount must be at least 1, got {count}")
    if limit is not None and count > limit:
        raise _client_error(f"{where}.InstanceCount is {count}: at most {limit} instances")
    return count


def _check_input_mode(where: str, mode: object) -> None:
    if mode not in (None, "File", "FastFile"):  # FastFile looks like File to the script
        raise _client_error(f"{where} {mode!r} is not supported locally (File or FastFile)")


def _check_s3_input(what: str, data_type: object, compression: object) -> None:
    if data_type not in (None, "S3Prefix"):
        raise _client_error(f"{what}: S3DataType {data_type!r} is not supported locally (S3Prefix only)")
    if compression not in (None, "None"):
        raise _client_error(f"{what}: compression {compression!r} is not supported locally")


def _max_runtime(request: dict) -> int | None:
    value = (request.get("StoppingCondition") or {}).get("MaxRuntimeInSeconds")
    if value is None:
        return None
    try:
        seconds = int(value)
    except (TypeError, ValueError):
        seconds = 0
    if seconds <= 0:
        raise _client_error(f"StoppingCondition.MaxRuntimeInSeconds must be a positive integer, got {value!r}")
    return seconds


def _download_prefix(
    store: ObjectStore, uri: object, dest: Path, what: str, note: Note, shard: tuple[int, int] | None = None
) -> None:
    """S3Prefix semantics as in SageMaker's local mode: an exact object key gives that one file;
    otherwise every object under the prefix, at its key relative to the prefix.

    ``shard`` (index, count): ShardedByS3Key, the objects in key order dealt round-robin to the
    instances; this instance gets every count-th from its index (possibly none).
    """
    _bucket, prefix = _split_uri(uri, what)
    dest.mkdir(parents=True, exist_ok=True)
    try:
        objects = [u for u in store.list(uri) if not u.endswith("/")]  # type: ignore[arg-type]
    except _STORE_ERRORS as exc:
        raise _client_error(f"cannot list {uri} for {what}: {exc}") from exc
    exact = [u for u in objects if split_uri(u)[1] == prefix]
    if prefix and not prefix.endswith("/") and exact:
        if shard is None or shard[0] == 0:
            _download_object(store, exact[0], dest / PurePosixPath(prefix).name, what)
        note(f"{what}: {uri} -> {dest}")
        return
    if not objects:
        raise _client_error(f"no objects under {uri} for {what}")
    total = len(objects)
    if shard is not None:
        objects = sorted(objects, key=lambda u: split_uri(u)[1])[shard[0] :: shard[1]]
    for object_uri in objects:
        relative = split_uri(object_uri)[1][len(prefix) :].lstrip("/")
        parts = [p for p in relative.split("/") if p]
        if not parts or any(p in (".", "..") for p in parts):
            raise _client_error(f"object {object_uri} of {what} has no safe path under {uri}")
        _download_object(store, object_uri, dest.joinpath(*parts), what)
    note(f"{what}: {uri} ({len(objects)} of the {total} objects under the prefix) -> {dest}")


def _download_object(store: ObjectStore, uri: str, path: Path, what: str) -> Path:
    try:
        return store.download(uri, path)
    except FileNotFoundError as exc:  # ObjectNotFound
        raise _client_error(f"no object at {uri} for {what}") from exc
    except _STORE_ERRORS as exc:
        raise _client_error(f"cannot download {uri} for {what}: {exc}") from exc


def _upload(store: ObjectStore, path: Path, uri: str, note: Note | None) -> None:
    try:
        store.put_file(uri, path)
    except _STORE_ERRORS as exc:
        raise _client_error(f"cannot upload {path.name} to {uri}: {exc}") from exc
    if note is not None:
        note(f"uploaded {uri}")


def _remapped_environment(environment: object, view: _View) -> dict[str, str]:
    if not environment:
        return {}
    if not isinstance(environment, dict):
        raise _client_error(f"Environment must be a map of strings, got {type(environment).__name__}")
    return {str(k): view.seen(str(v)) for k, v in environment.items()}


def _base_env() -> dict[str, str]:
    """What every job starts from: the allow-listed host variables and the container's own.

    The job's python is this interpreter, so it finds this environment's packages (a venv's, from
    its pyvenv.cfg) without PYTHONPATH.
    """
    env = {k: v for k, v in os.environ.items() if k in HOST_ENV_NAMES or k.startswith(HOST_ENV_PREFIXES)}
    interpreter_dir = str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join(p for p in (interpreter_dir, env.get("PATH", os.defpath)) if p)
    env.setdefault("LANG", "C.UTF-8")
    env.update(CONTAINER_ENV)
    env.update(NO_AWS_ENV)
    if site.ENABLE_USER_SITE and site.getusersitepackages() in sys.path:
        # Packages installed with pip --user live under the real HOME, which the job does not get.
        env["PYTHONUSERBASE"] = site.getuserbase()
    return env


def _scratch_env(scratch: Path) -> dict[str, str]:
    """HOME and TMPDIR in the job's private scratch folder."""
    home, tmp = scratch / "home", scratch / "tmp"
    home.mkdir()
    tmp.mkdir()
    return {"HOME": str(home), "TMPDIR": str(tmp)}


def _fresh_opt_ml(work_dir: Path) -> Path:
    """<work_dir>/opt/ml, emptied: a rerun must not pick up an earlier run's model or outputs."""
    return _fresh_dir(work_dir / "opt" / "ml")


def _fresh_dir(path: Path) -> Path:
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    return path


def _write_json(path: Path, value: object) -> None:
    path.write_text(json.dumps(value, indent=2, sort_keys=True))
