"""The detached process that runs one pipeline execution.

    python -m mlops_dagster.sagemaker.local.worker <home> <store config> <execution arn>

It reads the execution's definition snapshot from the state DB and runs the steps as SageMaker
does: a step starts once every step it depends on succeeded, and steps that do not depend on each
other run at the same time (at most the pipeline's ``MaxParallelExecutionSteps``, and at most one
per CPU core). After a step fails no new step starts; the steps already running finish, then the
execution ends Failed. It records each step and the end status. A watch thread refreshes the
heartbeat the service uses to detect a dead worker, and stops the running jobs when the execution
is set to Stopping.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
import time
import traceback
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import interpreter, model_steps, step_cache
from .interpreter import ExpressionError, Plan, Scope, evaluate, evaluate_conditions, resolve_parameters
from .models import (
    ACTIVE_EXECUTION,
    HEARTBEAT_SECONDS,
    Execution,
    LocalSageMakerBackend,
    SageMakerError,
    iso,
    job_name_for,
)

if TYPE_CHECKING:
    from mlops_dagster.objects import LocalObjects
    from mlops_dagster.resources.object_store import ObjectStore

log = logging.getLogger("mlops_dagster.sagemaker.local.worker")

STOP_POLL_SECONDS = 0.5
# Steps run at once by one worker: one per core (the jobs are CPU-bound processes).
LOCAL_STEP_SLOTS = os.cpu_count() or 1
JOB_METADATA = {"Training": "TrainingJob", "Processing": "ProcessingJob"}

# Runs the worker module without importing mlops_dagster/__init__.py, which builds the whole
# Dagster code location (the SageMaker SDK, Dagster, env validation: seconds per start) that the
# worker does not use, nor mlops_dagster/sagemaker/__init__.py (the SDK's settings and botocore's
# shared loader: 0.2 s of botocore imports before the first step). argv: <package dir> <home>
# <store config> <execution arn>.
_BOOTSTRAP = (
    "import runpy, sys, types\n"
    "root = sys.argv.pop(1)\n"
    "for name, sub in (('mlops_dagster', ''), ('mlops_dagster.sagemaker', '/sagemaker')):\n"
    "    package = types.ModuleType(name)\n"
    "    package.__path__ = [root + sub]\n"
    "    sys.modules[name] = package\n"
    "runpy.run_module('mlops_dagster.sagemaker.local.worker', run_name='__main__', alter_sys=True)\n"
)
_PACKAGE_DIR = Path(__file__).resolve().parents[2]

# Popen handles of launched workers, polled so that finished ones do not linger as zombies.
_launched: dict[int, subprocess.Popen] = {}
# The latest worker of each execution this process launched, for ``wait``.
_by_execution: dict[str, subprocess.Popen] = {}


# --- launching -------------------------------------------------------------------------------


def store_config(store: ObjectStore) -> str:
    """What the worker needs to rebuild the store in its own process."""
    from mlops_dagster.objects import LocalFiles

    if not isinstance(store, LocalFiles):
        raise TypeError(f"the local SageMaker service runs on a LocalObjectStore, not {type(store).__name__}")
    return json.dumps({"kind": "local", "root": str(Path(store.root).resolve())})


def store_from_config(config: str) -> LocalObjects:
    """A store from ``store_config`` output, or a bare root directory (without Dagster: the
    worker would spend about a second importing it)."""
    from mlops_dagster.objects import LocalObjects

    spec = json.loads(config) if config.lstrip().startswith("{") else {"kind": "local", "root": config}
    if spec.get("kind") != "local":
        raise ValueError(f"unknown store config {config!r}")
    return LocalObjects(spec["root"])


def launch(home: Path, store: ObjectStore, execution_arn: str, log_path: Path) -> subprocess.Popen:
    """Start the detached worker of an execution (own session: it outlives the caller)."""
    for pid, proc in list(_launched.items()):
        if proc.poll() is not None:
            del _launched[pid]
    for arn, proc in list(_by_execution.items()):
        if proc.returncode is not None:
            del _by_execution[arn]
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as out:
        proc = subprocess.Popen(
            # -P: the working directory is not put on sys.path (a json.py there must not shadow the stdlib)
            [sys.executable, "-P", "-c", _BOOTSTRAP, str(_PACKAGE_DIR), str(home), store_config(store), execution_arn],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    _launched[proc.pid] = proc
    _by_execution[execution_arn] = proc
    return proc


def wait(execution_arn: str, seconds: float) -> None:
    """Sleep ``seconds``, or less when the worker of the execution, launched by this process, exits."""
    proc = _by_execution.get(execution_arn)
    if proc is None or proc.poll() is not None:
        time.sleep(seconds)
        return
    try:
        proc.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        return


# --- the watch thread ------------------------------------------------------------------------


class Watch(threading.Thread):
    """Heartbeat every HEARTBEAT_SECONDS; stop the attached job once the execution leaves Executing."""

    def __init__(self, backend: LocalSageMakerBackend, arn: str, jobs: Any):
        super().__init__(name=f"watch {arn}", daemon=True)
        self.backend, self.arn, self.jobs = backend, arn, jobs
        self.stop_requested = threading.Event()
        self._done = threading.Event()
        self._lock = threading.Lock()
        self._procs: set[subprocess.Popen] = set()

    def attach(self, proc: subprocess.Popen) -> None:
        """Stop this job process too when the execution is stopped (steps run in parallel)."""
        with self._lock:
            self._procs.add(proc)

    def detach(self, proc: subprocess.Popen) -> None:
        with self._lock:
            self._procs.discard(proc)

    def run(self) -> None:
        last_beat = 0.0
        while not self._done.wait(STOP_POLL_SECONDS):
            try:
                if time.monotonic() - last_beat >= HEARTBEAT_SECONDS:
                    status = self.backend.heartbeat(self.arn)
                    last_beat = time.monotonic()
                else:
                    status = self.backend.execution_status(self.arn)
            except Exception:  # a locked or busy DB must not kill the watch; the next tick retries
                log.exception("heartbeat of %s failed", self.arn)
                continue
            if status != "Executing":  # Stopping, or ended by someone else (reaped as dead)
                self.stop_requested.set()
            if self.stop_requested.is_set():
                self._stop_job()

    def _stop_job(self) -> None:
        with self._lock:
            procs, self._procs = self._procs, set()
        for proc in procs:
            log.info("stopping job process %s", proc.pid)
            self.jobs.stop_process(proc)

    def close(self) -> None:
        self._done.set()
        self.join(timeout=10)


# --- running an execution --------------------------------------------------------------------


# What SageMaker gives as an execution's FailureReason when a step failed (the SDK's integration
# tests assert it); the local service adds which step failed and why after it.
STEP_FAILURE = "Step failure: One or multiple steps failed."


class StepFailed(Exception):
    """A step ended Failed; the message (after STEP_FAILURE) is the execution's FailureReason."""


class StepStopped(Exception):
    """The execution was stopped while a step ran."""


class ExecutionRunner:
    def __init__(
        self, backend: LocalSageMakerBackend, store: ObjectStore, execution: Execution, jobs: Any, watch: Watch
    ):
        self.backend, self.store, self.execution, self.jobs, self.watch = backend, store, execution, jobs, watch
        self.arn = execution.arn
        self.plan: Plan | None = None
        self.properties: dict[str, dict] = {}
        self.outcomes: dict[str, str] = {}  # condition step -> "IfSteps" | "ElseSteps"
        self.parameters: dict[str, Any] = {}
        self.spares = jobs.execution_spares()
        self.reusable: set[str] = set()  # job steps with an earlier job the step cache may reuse
        self.running_jobs: set[str] = set()  # job steps that the step cache did not serve

    def run(self) -> None:
        try:
            self._run()
        finally:
            if self.spares is not None:
                self.spares.close()

    def _run(self) -> None:
        try:
            self.plan = Plan.parse(self.execution.definition)
            self.parameters = resolve_parameters(self.plan.parameters, self.execution.parameters)
        except (interpreter.DefinitionError, ExpressionError) as err:
            self._end("Failed", f"the pipeline definition cannot run: {err}")
            return
        problem = self.plan.unsupported()
        if problem:
            self._end("Failed", problem)
            return
        if self.spares is not None:
            steps = [(name, self.plan.steps[name].type, self.plan.steps[name].arguments) for name in self.plan.order]
            self.reusable = {name for name in self.plan.order if self._has_cached_job(self.plan.steps[name])}
            self.spares.plan(steps, self.store.get_bytes, wanted=self._spare_wanted)
            self.spares.stop = self.watch.stop_requested
        slots = self._slots()
        failure: str | None = None
        stopped = False
        pending = list(self.plan.order)
        skipped: set[str] = set()
        running: dict[Future, str] = {}
        with ThreadPoolExecutor(max_workers=slots, thread_name_prefix="step") as pool:
            while True:
                stopped = stopped or self.watch.stop_requested.is_set()
                if not stopped and failure is None:
                    ready = self._ready(pending, skipped, slots - len(running))
                    for name in ready:
                        running[pool.submit(self._run_step, self.plan.steps[name])] = name
                    if self.spares is not None:
                        self.spares.discard(skipped)
                        self.spares.fill(started=ready)
                if not running:
                    break
                done, _ = wait_futures(running, timeout=STOP_POLL_SECONDS, return_when=FIRST_COMPLETED)
                for future in done:
                    del running[future]
                    try:
                        future.result()
                    except StepFailed as err:
                        failure = failure or str(err)  # the first failure is the execution's reason
                    except StepStopped:
                        stopped = True
        if failure is not None:
            self._end("Failed", f"{STEP_FAILURE} {failure}")
        elif stopped:
            self._end("Stopped")
        else:
            self._end("Succeeded")

    def _slots(self) -> int:
        """How many steps may run at once: the pipeline's MaxParallelExecutionSteps, at most a core each."""
        try:
            parallelism = self.backend.get_pipeline(self.execution.pipeline_arn).parallelism or {}
        except SageMakerError:  # the pipeline was deleted while its execution ran
            parallelism = {}
        limit = parallelism.get("MaxParallelExecutionSteps") or LOCAL_STEP_SLOTS
        return max(1, min(int(limit), LOCAL_STEP_SLOTS))

    def _ready(self, pending: list[str], skipped: set[str], free: int) -> list[str]:
        """Take from ``pending`` (in run order) up to ``free`` steps that can start now; drop the
        steps that can never run (on a branch not taken, or after a step that was skipped)."""
        ready = []
        for name in list(pending):
            step = self.plan.steps[name]
            not_taken = step.branch and step.branch[0] in self.outcomes and self.outcomes[step.branch[0]] != step.branch[1]
            if not_taken or step.depends_on & skipped:
                pending.remove(name)
                skipped.add(name)
            elif len(ready) < free and all(dep in self.properties for dep in step.depends_on):
                pending.remove(name)
                ready.append(name)
        return ready

    def _end(self, status: str, reason: str | None = None) -> None:
        if status == "Failed" and self.watch.stop_requested.is_set():
            status, reason = "Stopped", None  # a failure caused by the stop is the stop
        if not self.backend.finish_execution(self.arn, status, reason):
            log.warning(
                "execution %s had already ended (%s); not recording %s",
                self.arn,
                self.backend.execution_status(self.arn),
                status,
            )
        log.info("execution %s: %s%s", self.arn, status, f" ({reason})" if reason else "")

    def _scope(self, **execution_variables: str) -> Scope:
        variables = {**self.execution.variables(), "CurrentDateTime": iso(time.time()), **execution_variables}
        # A copy: steps running in other threads add their properties meanwhile.
        return Scope(self.plan, self.parameters, variables, dict(self.properties), self.store.get_bytes)

    def _run_step(self, step: interpreter.StepDef) -> None:
        log.info("step %s (%s): starting", step.name, step.type)
        runner = {
            "Processing": self._run_job,
            "Training": self._run_job,
            "Condition": self._run_condition,
            "RegisterModel": self._run_register,
            "Fail": self._run_fail,
            "Model": lambda s: model_steps.run_model_step(self, s),
            "Transform": lambda s: model_steps.run_transform_step(self, s),
        }[step.type]
        runner(step)

    def _fail(self, step: interpreter.StepDef, reason: str, metadata: dict | None = None) -> None:
        self.backend.update_step(self.arn, step.name, "Failed", reason, metadata)
        raise StepFailed(f"step '{step.name}' ({step.type}) failed: {reason}")

    def _resolve(self, step: interpreter.StepDef, node: Any, **variables: str) -> Any:
        try:
            return evaluate(node, self._scope(**variables))
        except ExpressionError as err:
            self._fail(step, f"cannot resolve its arguments: {err}")

    # step types

    def _run_job(self, step: interpreter.StepDef) -> None:
        kind = step.type.lower()
        name = job_name_for(self.execution.id, step.name)
        self.backend.start_step(self.arn, step.name, step.type, "Starting")
        request = self._resolve(step, step.arguments, **{f"{step.type}JobName": name})
        if self._reuse_cached_job(step, kind, request):
            if self.spares is not None:
                self.spares.discard([step.name])
            return
        self.running_jobs.add(step.name)
        if self.spares is not None:
            self.spares.fill()  # the steps after this one run too: their inputs are new
        job = self.backend.create_job(name, kind, request, self.arn, step.name)
        self.backend.update_step(self.arn, step.name, "Starting", metadata={JOB_METADATA[step.type]: {"Arn": job.arn}})

        started: list[subprocess.Popen] = []

        def on_start(proc: subprocess.Popen) -> None:
            started.append(proc)
            self.backend.job_started(name, proc.pid)
            self.backend.update_step(self.arn, step.name, "Executing")
            self.watch.attach(proc)

        run = self.jobs.run_training_job if kind == "training" else self.jobs.run_processing_job
        # Taken last: from here the job runner ends it, used or not.
        spare = self.spares.take(step.name) if self.spares is not None else None
        try:
            result = run(
                name,
                request,
                self.store,
                self.backend.job_dir(name),
                self.backend.job_log_path(name),
                on_start=on_start,
                job_arn=job.arn,  # TRAINING_JOB_ARN / ProcessingJobArn, as SageMaker gives the container
                spare=spare,
            )
        except Exception as err:  # a bug or an I/O error in the job runner: the job and step fail, with why
            log.exception("job %s", name)
            result = self.jobs.JobResult(
                "Failed", f"InternalError: {type(err).__name__}: {err}", {}, None, self.backend.job_log_path(name)
            )
        finally:
            if started:
                self.watch.detach(started[0])
        stopped = self.watch.stop_requested.is_set() and result.status != "Completed"
        status = "Stopped" if stopped else result.status
        job = self.backend.finish_job(name, status, result.failure_reason, result.outputs, result.exit_code)
        if status == "Stopped":
            self.backend.update_step(self.arn, step.name, "Stopped")
            raise StepStopped()
        if status != "Completed":
            self._fail(step, f"{step.type.lower()} job {name} failed: {result.failure_reason} (log: {result.log_path})")
        self.properties[step.name] = job.describe()
        self.backend.update_step(self.arn, step.name, "Succeeded")

    def _has_cached_job(self, step: interpreter.StepDef) -> bool:
        """A job step with caching on and an earlier job of its name in the cache window."""
        window = step_cache.window_seconds(step.type, step.cache_config) if step.type in JOB_METADATA else None
        if window is None:
            return False
        since = time.time() - window
        return bool(self.backend.cached_jobs(self.execution.pipeline_name, step.name, step.type.lower(), since, 1))

    def _spare_wanted(self, name: str) -> bool:
        """A spare for a step the step cache will serve imports for nothing, on a core the running
        steps need. So a step that may be served gets one only once its inputs are new (it will run
        too): a job ran before it. Where every step before it was served, it starts cold, right after
        them."""
        return name not in self.reusable or self._after_a_job(name)

    def _after_a_job(self, name: str) -> bool:
        """A step it depends on ran a job, directly or through steps that run none (a Condition,
        RegisterModel, Model or Transform step passes on what came before it)."""
        return any(
            dep in self.running_jobs or (self.plan.steps[dep].type not in JOB_METADATA and self._after_a_job(dep))
            for dep in self.plan.steps[name].depends_on
        )

    def _reuse_cached_job(self, step: interpreter.StepDef, kind: str, request: dict) -> bool:
        """SageMaker's step cache (step_cache.py): end the step with an earlier execution's job, if
        one matches; False when the step must run."""
        window = step_cache.window_seconds(step.type, step.cache_config)  # Plan.unsupported checked it
        if window is None:
            return False
        key = step_cache.cache_key(step.type, request)
        since = time.time() - window
        for job in self.backend.cached_jobs(self.execution.pipeline_name, step.name, kind, since):
            if step_cache.cache_key(step.type, job.request) == key:
                self.properties[step.name] = job.describe()
                self.backend.update_step(
                    self.arn, step.name, "Succeeded", metadata={JOB_METADATA[step.type]: {"Arn": job.arn}},
                    cache_source=job.execution_arn,
                )  # fmt: skip
                log.info("step %s: cache hit, reusing %s job %s of %s", step.name, kind, job.name, job.execution_arn)
                return True
        return False

    def _run_condition(self, step: interpreter.StepDef) -> None:
        self.backend.start_step(self.arn, step.name, step.type)
        try:
            outcome = evaluate_conditions(step.arguments.get("Conditions") or [], self._scope())
        except ExpressionError as err:
            self._fail(step, f"cannot evaluate its conditions: {err}")
        self.outcomes[step.name] = "IfSteps" if outcome else "ElseSteps"
        self.properties[step.name] = {"Outcome": outcome}
        metadata = {"Condition": {"Outcome": "True" if outcome else "False"}}
        self.backend.update_step(self.arn, step.name, "Succeeded", metadata=metadata)

    def _run_register(self, step: interpreter.StepDef) -> None:
        self.backend.start_step(self.arn, step.name, step.type)
        args = self._resolve(step, step.arguments)
        # SageMaker records which execution generated a registered model (its lineage).
        args.setdefault("MetadataProperties", {}).setdefault("GeneratedBy", self.arn)
        try:
            package = self.backend.create_package(
                args.get("ModelPackageGroupName") or "",
                args,
                args.get("ModelApprovalStatus"),
                args.get("ModelPackageDescription"),
                create_group=True,
                artifact_store=self.store,  # records the artifact's sha256, which hosting requires
            )
        except SageMakerError as err:  # e.g. a bad ModelApprovalStatus: the step fails with the registry's message
            self._fail(step, f"cannot register the model: {err}")
        self.properties[step.name] = package.describe()
        self.backend.update_step(self.arn, step.name, "Succeeded", metadata={"RegisterModel": {"Arn": package.arn}})

    def _run_fail(self, step: interpreter.StepDef) -> None:
        self.backend.start_step(self.arn, step.name, step.type)
        message = interpreter.to_text(self._resolve(step, step.arguments.get("ErrorMessage", "")))
        # As SageMaker: the step's FailureReason is the message, absent when the message is empty.
        reason = message or None
        self.backend.update_step(self.arn, step.name, "Failed", reason, {"Fail": {"ErrorMessage": message}})
        raise StepFailed(f"step '{step.name}' (Fail) failed: {message or '(no ErrorMessage)'}")


def run_execution(home: Path, store: ObjectStore, execution_arn: str, jobs: Any = None) -> str:
    """Run one execution to its end in this process; returns the end status.

    ``jobs`` is the job runner (``run_training_job``, ``run_processing_job``, ``stop_process``,
    ``JobResult``, ``execution_spares``): the real ``jobs`` module unless a test passes a fake.
    """
    if jobs is None:
        from . import jobs
    region, account = execution_arn.split(":")[3:5]
    backend = LocalSageMakerBackend(home, region=region, account_id=account)
    execution = backend.get_execution(execution_arn)
    status = backend.heartbeat(execution_arn)
    if status not in ACTIVE_EXECUTION:
        log.warning("execution %s is already %s; nothing to run", execution_arn, status)
        return status
    watch = Watch(backend, execution_arn, jobs)
    if status == "Stopping":
        watch.stop_requested.set()
    watch.start()
    try:
        ExecutionRunner(backend, store, execution, jobs, watch).run()
    except Exception as err:
        log.exception("worker of %s", execution_arn)
        backend.finish_execution(execution_arn, "Failed", f"local worker error: {type(err).__name__}: {err}")
        for step in backend.list_steps(execution_arn):
            if step.status in ("Starting", "Executing", "Stopping"):
                backend.update_step(execution_arn, step.name, "Failed", f"local worker error: {err}")
    finally:
        watch.close()
    return backend.execution_status(execution_arn)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    home, config, arn = argv
    # INFO for this worker's own messages only: libraries it imports are chatty at INFO.
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s")
    log.setLevel(logging.INFO)
    logging.getLogger("mlops_dagster.sagemaker.local.spares").setLevel(logging.INFO)  # which spares start
    log.info("worker %s for %s", os.getpid(), arn)
    try:
        status = run_execution(Path(home), store_from_config(config), arn)
    except Exception:
        traceback.print_exc()
        return 1
    log.info("worker %s done: %s", os.getpid(), status)
    return 0


if __name__ == "__main__":
    sys.exit(main())
