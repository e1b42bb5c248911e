"""Spare job processes (mlops_dagster/sagemaker/local/spares.py): a script run in a process started
ahead sees exactly what a cold start gives it, falls back to a cold start when it could not, and
the worker uses them for the steps that wait."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest

# ruff: noqa: F811 - the fixtures imported below are parameters of the tests
from test_local_jobs import (  # noqa: F401 - fixtures
    EXEC,
    opt_ml_mode,
    processing_input,
    processing_request,
    script,
    store,
)
from test_local_sagemaker import ROLE, sdk_pipeline, sm, steps_of, wait  # noqa: F401 - fixtures

from mlops_dagster.sagemaker.local import jobs, opt_ml, spares
from mlops_dagster.sagemaker.local.jobs import run_processing_job

CODE = f"{EXEC}/code/probe.py"
ENTRY = ["python3", "/opt/ml/processing/input/code/probe.py"]

# What the script can observe of how it was started.
PROBE = script(
    """
    import json, os, pickle, sys, tempfile
    import __main__

    class Thing:
        pass

    if sys.argv[1:] == ["--fail"]:
        raise ValueError("probe failed on purpose")
    if sys.argv[1:] == ["--interrupt"]:
        raise KeyboardInterrupt
    print(json.dumps({
        "argv": sys.argv,
        "path": sys.path,
        "file": __file__,
        "name": __name__,
        "loader": type(__loader__).__name__,
        "spec": __spec__,
        "package": __package__,
        "main_is_module": __main__.__dict__ is globals(),
        "pickles": pickle.loads(pickle.dumps(Thing())).__class__.__name__,
        "cwd": os.getcwd(),
        "env": {k: v for k, v in sorted(os.environ.items()) if k not in ("HOME", "TMPDIR")},
        "tmp_is_job_tmp": tempfile.gettempdir() == os.environ["TMPDIR"],
        "home_is_job_home": os.path.expanduser("~") == os.environ["HOME"],
        "own_session": os.getsid(0) == os.getpid(),
        "opt_ml": sorted(os.listdir("/opt/ml")) if os.path.isdir("/opt/ml") else None,
        "this_project": "mlops_dagster" in sys.modules or "opt_ml_launcher" in sys.modules,
    }), flush=True)
    """
)


def put_probe(store, text: str = PROBE) -> None:
    store.put_bytes(CODE, text.encode())


def probe_request(args: list[str] | None = None, environment: dict | None = None) -> dict:
    request = processing_request(
        [processing_input("code", CODE, "/opt/ml/processing/input/code")], {}, ENTRY, args or []
    )
    if environment:
        request["Environment"] = environment
    return request


def run(store, root: Path, request: dict, spare: spares.Spare | None = None) -> jobs.JobResult:
    name = "pipelines-exec1-Probe-abc"
    return run_processing_job(name, request, store, root / "work", root / "job.log", spare=spare)


def new_spare(modules: list[str]) -> spares.Spare:
    namespace, _ = opt_ml.job_mode()
    return spares.start(modules, jobs._base_env(), namespace)


def observed(result: jobs.JobResult, root: Path) -> dict:
    lines = [line for line in result.log_path.read_text().splitlines() if line.startswith("{")]
    return json.loads(lines[-1].replace(str(root), "<root>"))


def test_a_script_in_a_spare_sees_what_a_cold_start_gives_it(store, tmp_path: Path, opt_ml_mode: str):
    put_probe(store)
    request = probe_request(["--alpha", "1"], environment={"MY_SETTING": "x"})
    cold = run(store, tmp_path / "cold", request)
    spare = new_spare(["json", "pickle", "tempfile"])
    warm = run(store, tmp_path / "warm", request, spare=spare)

    assert cold.status == warm.status == "Completed", (cold.log_path.read_text(), warm.log_path.read_text())
    seen_cold, seen_warm = observed(cold, tmp_path / "cold"), observed(warm, tmp_path / "warm")
    assert seen_warm == seen_cold
    assert seen_warm["argv"] == ["/opt/ml/processing/input/code/probe.py", "--alpha", "1"] or opt_ml_mode == "remap"
    assert seen_warm["name"] == "__main__" and seen_warm["main_is_module"] and seen_warm["pickles"] == "Thing"
    assert seen_warm["env"]["MY_SETTING"] == "x" and not seen_warm["this_project"]
    assert seen_warm["tmp_is_job_tmp"] and seen_warm["home_is_job_home"] and seen_warm["own_session"]
    assert "in a process started ahead, which imported json, pickle, tempfile" in warm.log_path.read_text()
    assert spare.used and not spare.scratch.exists()  # its own folder went once the job had its own
    assert spare.proc.poll() is not None  # the job ended with its script


@pytest.mark.parametrize(
    ("text", "args", "code", "says"),
    [
        (PROBE, ["--fail"], 1, "ValueError: probe failed on purpose"),
        (PROBE, ["--interrupt"], -2, "KeyboardInterrupt"),  # the interpreter ends itself with SIGINT
        ("import json\nreturn 1\n", [], 1, "SyntaxError: 'return' outside function"),  # cannot compile
    ],
)
def test_a_failing_script_in_a_spare_fails_as_a_cold_one(store, tmp_path: Path, text, args, code, says):
    put_probe(store, text)
    request = probe_request(args)
    cold = run(store, tmp_path / "cold", request)
    warm = run(store, tmp_path / "warm", request, spare=new_spare(["json"]))
    assert "in a process started ahead" in warm.log_path.read_text()
    assert cold.status == warm.status == "Failed" and cold.exit_code == warm.exit_code == code
    assert warm.failure_reason == cold.failure_reason
    assert says in warm.failure_reason
    assert "spare_runner" not in warm.log_path.read_text()  # from the script's own frame


@pytest.mark.parametrize(
    ("environment", "sibling", "why"),
    [
        ({"OMP_NUM_THREADS": "1"}, None, "the job sets OMP_NUM_THREADS"),
        ({"JSON_MODE": "fast"}, None, "the job sets JSON_MODE"),  # named after a preloaded package
        (None, "json.py", "code holds a module 'json'"),  # the script's folder shadows a preloaded module
        (None, "socket.py", "code holds a module 'socket'"),  # ... or one the spare's runner loaded
    ],
)
def test_a_job_the_spare_cannot_take_starts_cold_and_says_why(store, tmp_path: Path, environment, sibling, why):
    put_probe(store)
    if sibling:
        store.put_bytes(f"{EXEC}/code/{sibling}", b"VALUE = 'sibling'\n")
        request = probe_request(environment=environment)
        request["ProcessingInputs"][0]["S3Input"]["S3Uri"] = f"{EXEC}/code"
    else:
        request = probe_request(environment=environment)
    spare = new_spare(["json"] if sibling != "socket.py" else ["csv"])
    result = run(store, tmp_path, request, spare=spare)
    log = result.log_path.read_text()
    assert "started cold: " in log and why in log.replace('"', "'")
    assert not spare.used and spare.proc.poll() is not None and not spare.scratch.exists()
    if sibling != "json.py":  # the probe itself ran (a sibling json.py breaks its json import, as cold)
        assert result.status == "Completed", log


def test_a_module_that_fails_to_import_in_the_spare_fails_in_the_script(store, tmp_path: Path):
    put_probe(store, "import no_such_module_here\n")
    result = run(store, tmp_path, probe_request(), spare=new_spare(["no_such_module_here"]))
    assert result.status == "Failed"
    assert "ModuleNotFoundError: No module named 'no_such_module_here'" in result.failure_reason
    assert "in a process started ahead" in result.log_path.read_text()


def test_a_spare_whose_worker_goes_away_exits(tmp_path: Path):
    spare = new_spare(["json"])
    assert spare.control.recv(1 << 20).startswith(b"ready [")
    spare.control.close()  # as when the worker dies
    assert spare.proc.wait(timeout=30) == 0
    spare.used = True  # nothing left to kill
    spare.end()


def test_top_level_imports_are_what_runs_at_import():
    source = script(
        """
        from __future__ import annotations
        import os, numpy as np
        from sklearn.ensemble import RandomForestRegressor
        from . import sibling
        try:
            import pandas
        except ImportError:
            import csv
        if os.name == "posix":
            import json
        def later():
            import scipy
        if __name__ == "__main__":
            import argparse
        """
    )
    # Up to the first statement that is not an import: the `if` may decide what runs next.
    assert spares.top_level_imports(source) == ["os", "numpy", "sklearn.ensemble", "pandas", "csv"]
    assert spares.top_level_imports("def broken(:\n") == []
    # Code before an import may change what the import does (threads, paths, filters): not preloaded.
    setting = '"""Doc."""\nimport os\nos.environ["OPENBLAS_NUM_THREADS"] = "1"\nimport numpy\n'
    assert spares.top_level_imports(setting) == ["os"]
    guarded = "try:\n    import pandas\nexcept ImportError:\n    pandas = None\nimport numpy\n"
    assert spares.top_level_imports(guarded) == []  # the handler runs code: stop there


def test_script_source_reads_the_code_as_the_job_will(store):
    put_probe(store)
    arguments = probe_request()
    assert spares.script_source("Processing", arguments, store.get_bytes) == PROBE.encode()
    arguments["ProcessingResources"]["ClusterConfig"]["InstanceCount"] = 2  # a spare serves one instance
    assert spares.script_source("Processing", arguments, store.get_bytes) is None
    expression = probe_request()
    expression["ProcessingInputs"][0]["S3Input"]["S3Uri"] = {"Get": "Parameters.Code"}
    assert spares.script_source("Processing", expression, store.get_bytes) is None
    missing = probe_request()
    missing["ProcessingInputs"][0]["S3Input"]["S3Uri"] = f"{EXEC}/nowhere/probe.py"
    assert spares.script_source("Processing", missing, store.get_bytes) is None


def test_spares_are_off_with_the_setting(monkeypatch):
    monkeypatch.setenv(spares.SETTING, "0")
    assert jobs.execution_spares() is None
    monkeypatch.setenv(spares.SETTING, "1")
    assert isinstance(jobs.execution_spares(), spares.Spares)


def test_the_worker_runs_waiting_steps_in_spares(sm, sdk_pipeline: str, mlops_home: Path, tmp_path: Path, monkeypatch):
    """The example pipeline: Train and Evaluate (which wait for earlier steps) run in spares; Preprocess,
    ready at once, starts cold; no spare outlives the execution."""
    scratch = tmp_path / "worker-tmp"  # the worker's TMPDIR: its spares' folders are in it
    scratch.mkdir()
    monkeypatch.setenv("TMPDIR", str(scratch))
    arn = sm.start_pipeline_execution(PipelineName=sdk_pipeline)["PipelineExecutionArn"]
    assert wait(sm, arn)["PipelineExecutionStatus"] == "Succeeded"
    logs = {}
    for name, step in steps_of(sm, arn).items():
        job = (step.get("Metadata") or {}).get("TrainingJob") or (step.get("Metadata") or {}).get("ProcessingJob")
        if job:
            logs[name] = sm.job_log_path(job["Arn"].rsplit("/", 1)[-1]).read_text()
    assert "in a process started ahead" not in logs["Preprocess"]
    assert "in a process started ahead, which imported argparse, csv, json, os) ===" in logs["Train"]
    assert "in a process started ahead, which imported argparse, csv, json, os, tarfile) ===" in logs["Evaluate"]
    assert not [p for p in Path("/proc").glob("[0-9]*") if _is_spare(p, scratch)]
    assert not list(scratch.glob("mlops-spare-*"))

    assert _spares_started(mlops_home, arn) == ["Train", "Evaluate"]

    # Again on the same data: every job step is a cache hit, and no spare was started for nothing.
    again = sm.start_pipeline_execution(PipelineName=sdk_pipeline)["PipelineExecutionArn"]
    assert wait(sm, again)["PipelineExecutionStatus"] == "Succeeded"
    assert all(steps_of(sm, again)[name].get("CacheHitResult") for name in ("Preprocess", "Train", "Evaluate"))
    assert _spares_started(mlops_home, again) == []
    assert not [p for p in Path("/proc").glob("[0-9]*") if _is_spare(p, scratch)]
    assert not list(scratch.glob("mlops-spare-*"))

    # Train changed (as after an edit of train.py): Preprocess is served, Train runs cold at once (a
    # spare could not have imported anything meanwhile), and Evaluate, whose input is Train's new
    # model, gets its spare while Train runs.
    body = json.loads(sm.describe_pipeline(PipelineName=sdk_pipeline)["PipelineDefinition"])
    train = next(step for step in body["Steps"] if step["Name"] == "Train")
    train["Arguments"]["HyperParameters"]["changed"] = "1"
    sm.update_pipeline(PipelineName=sdk_pipeline, PipelineDefinition=json.dumps(body), RoleArn=ROLE)
    edited = sm.start_pipeline_execution(PipelineName=sdk_pipeline)["PipelineExecutionArn"]
    assert wait(sm, edited)["PipelineExecutionStatus"] == "Succeeded"
    steps = steps_of(sm, edited)
    assert steps["Preprocess"].get("CacheHitResult") and not steps["Train"].get("CacheHitResult")
    assert _spares_started(mlops_home, edited) == ["Evaluate"]
    evaluate = steps["Evaluate"]["Metadata"]["ProcessingJob"]["Arn"].rsplit("/", 1)[-1]
    assert "in a process started ahead" in sm.job_log_path(evaluate).read_text()
    assert not [p for p in Path("/proc").glob("[0-9]*") if _is_spare(p, scratch)]


def _spares_started(home: Path, arn: str) -> list[str]:
    """The steps the execution's worker started a spare for, from its log."""
    text = (home / "sagemaker" / "workers" / f"{arn.rsplit('/', 1)[-1]}.log").read_text()
    return re.findall(r"step (\S+): spare process \d+ importing", text)


def _is_spare(proc_dir: Path, scratch: Path) -> bool:
    """A live spare of this test's worker (its command line names its folder in ``scratch``)."""
    try:
        cmdline = (proc_dir / "cmdline").read_bytes()
        stat = (proc_dir / "stat").read_text()
    except OSError:
        return False
    return b"spare_runner.py" in cmdline and str(scratch).encode() in cmdline and stat.rsplit(")", 1)[1].split()[0] != "Z"


_OTHER_ENDS: list[socket.socket] = []


def _fake_spare(tmp_path: Path, code: str, answers: bool = True) -> spares.Spare:
    """A Spare around a process running ``code`` that never says it is ready; ``answers`` False:
    its end of the socket is closed, as when the process died."""
    scratch = tmp_path / f"spare-{len(list(tmp_path.iterdir()))}"
    scratch.mkdir()
    pre_log = scratch / "imports.log"
    parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with open(pre_log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-c", code], stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    if answers:
        _OTHER_ENDS.append(child)  # open, silent
    else:
        child.close()
    return spares.Spare(proc, parent, scratch, {}, ["json"], False, pre_log)


def test_a_spare_that_died_says_why_in_the_reason(tmp_path: Path):
    spare = _fake_spare(tmp_path, "print('boom: cannot import'); raise SystemExit(3)", answers=False)
    reason = spare.ready_for([sys.executable, "x.py"], str(tmp_path), {}, None)
    assert reason.startswith("the spare process ended before it was ready (exit code 3): boom: cannot import")
    assert spare.ended and not spare.scratch.exists()


def test_waiting_for_a_spare_ends_on_a_stop_request_or_the_max_runtime(tmp_path: Path):
    stop = threading.Event()
    stopping = _fake_spare(tmp_path, "import time; time.sleep(60)")
    stopping.stop = stop
    threading.Timer(0.3, stop.set).start()
    assert stopping.ready_for([sys.executable, "x.py"], str(tmp_path), {}, None) == "the execution is stopping"
    assert stopping.proc.returncode is not None  # ended, not left sleeping
    slow = _fake_spare(tmp_path, "import time; time.sleep(60)")
    assert slow.ready_for([sys.executable, "x.py"], str(tmp_path), {}, None, max_wait=1) == (
        "the spare process was not ready within 1 s"
    )
    assert slow.proc.returncode is not None


def test_one_spare_imports_at_a_time(tmp_path: Path, monkeypatch):
    """B's spare starts with the execution; C's only once B's step has taken B's spare and found it
    ready (not merely taken it), or B's spare ended."""
    started: list[spares.Spare] = []

    def fake_start(modules, env, namespace):
        started.append(_fake_spare(tmp_path, "import time; time.sleep(60)"))
        return started[-1]

    monkeypatch.setattr(spares, "start", fake_start)
    monkeypatch.setattr(spares, "script_source", lambda step_type, arguments, get_bytes: b"import json\n")
    pool = spares.Spares({}, namespace=False)
    pool.plan([(name, "Processing", {}) for name in "ABC"], get_bytes=lambda uri: b"")
    pool.fill(started=["A"])  # A starts cold, with the execution
    assert list(pool.waiting) == ["B"] and len(started) == 1
    b = pool.take("B")
    pool.fill()  # the worker's loop: B's spare still imports, so no second one
    assert len(started) == 1 and not pool.waiting
    b.end()  # as when B's job found it not usable (or ready)
    assert list(pool.waiting) == ["C"] and len(started) == 2
    pool.close()
    assert all(spare.ended and spare.proc.returncode is not None for spare in started)



def test_a_step_the_cache_may_serve_gets_a_spare_once_a_job_ran_before_it():
    """Through steps that run no job too: a job in a Condition's branch after Evaluate, a Processing
    step after a RegisterModel step."""
    from mlops_dagster.sagemaker.local.worker import ExecutionRunner

    step = lambda step_type, *deps: SimpleNamespace(type=step_type, depends_on=set(deps))  # noqa: E731
    runner = ExecutionRunner.__new__(ExecutionRunner)  # the rule only: no execution, no backend
    runner.plan = SimpleNamespace(
        steps={
            "Preprocess": step("Processing"),
            "Train": step("Training", "Preprocess"),
            "Evaluate": step("Processing", "Train", "Preprocess"),
            "Check": step("Condition", "Evaluate"),
            "Register": step("RegisterModel", "Check", "Train"),
            "Report": step("Processing", "Register"),
            "Package": step("Processing", "Train"),
            "Fresh": step("Processing", "Preprocess"),
        }
    )
    runner.reusable = {"Preprocess", "Train", "Evaluate", "Report", "Package"}  # "Fresh" has no earlier job
    runner.running_jobs = set()
    assert [name for name in runner.plan.steps if runner._spare_wanted(name)] == ["Check", "Register", "Fresh"]
    runner.running_jobs.add("Preprocess")  # new data: the steps that take Preprocess's outputs run
    assert runner._spare_wanted("Train") and runner._spare_wanted("Evaluate")
    assert not runner._spare_wanted("Package") and not runner._spare_wanted("Report")  # not yet: until Train runs
    runner.running_jobs = {"Train"}  # an edit of train.py: Preprocess was served, Train runs
    assert runner._spare_wanted("Evaluate") and runner._spare_wanted("Report")  # through Check and Register
    assert runner._spare_wanted("Package") and not runner._spare_wanted("Preprocess")
