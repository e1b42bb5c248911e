"""Unmodified SageMaker scripts that use literal /opt/ml paths (issue 11 part 4).

On Linux each local job runs in a private mount namespace with its work folder bound on /opt/ml
(mlops_dagster/sagemaker/local/opt_ml.py); elsewhere (or with MLOPS_LOCAL_OPT_ML=remap) such a
script fails with a reason naming the /opt/ml path it tried.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

import pytest
from test_local_jobs import (
    EXEC,
    TRAIN_URI,
    VALIDATION_URI,
    alive,
    members,
    processing_input,
    processing_request,
    put_sourcedir,
    put_training_data,
    run_in_thread,
    script,
    train,
    training_request,
    wait_for,
)
from test_local_sagemaker import BUCKET, definition, processing_step, training_step

from mlops_dagster.resources.object_store import LocalObjectStore
from mlops_dagster.sagemaker.local import opt_ml, worker
from mlops_dagster.sagemaker.local.jobs import run_processing_job, stop_process

HOST_HAS_OPT_ML = os.path.lexists("/opt/ml")

# Only literal paths: no argument, no environment variable.
PROCESS = script(
    """
    import json, os, sys
    rows = open("/opt/ml/processing/input/data/train.csv").read().splitlines()
    with open("/opt/ml/processing/output/rows.txt", "w") as f:
        f.write(str(len(rows) - 1))
    os.makedirs("/opt/ml/processing/output/nested")
    with open("/opt/ml/config/processingjobconfig.json") as f:
        config = json.load(f)
    with open("/opt/ml/processing/output/nested/job.json", "w") as f:
        json.dump({"name": config["ProcessingJobName"], "cwd": os.getcwd(), "argv": sys.argv}, f)
    """
)
TRAIN = script(
    """
    import json, os, sys
    with open("/opt/ml/input/config/hyperparameters.json") as f:
        hps = json.load(f)
    rows = open("/opt/ml/input/data/train/train.csv").read().splitlines()
    with open("/opt/ml/model/model.json", "w") as f:
        json.dump({"rows": len(rows) - 1, "depth": json.loads(hps["max_depth"]), "cwd": os.getcwd()}, f)
    with open("/opt/ml/output/data/metrics.txt", "w") as f:
        f.write("ok")
    """
)
SLEEPER = script(
    """
    import json, os, subprocess, sys, time
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    with open("/opt/ml/output/data/pids.tmp", "w") as f:
        json.dump([os.getpid(), child.pid], f)
    os.replace("/opt/ml/output/data/pids.tmp", "/opt/ml/output/data/pids.json")
    time.sleep(120)
    """
)
OUT = f"{EXEC}/Preprocess/output/out"


@pytest.fixture
def store(mlops_home: Path) -> LocalObjectStore:
    return LocalObjectStore(root=str(mlops_home / "s3"))


@pytest.fixture
def namespace(monkeypatch) -> None:
    works, why_not = opt_ml.probe()
    if not works:
        pytest.skip(f"this machine cannot give a job its own /opt/ml: {why_not}")
    monkeypatch.setenv(opt_ml.MODE_VARIABLE, "namespace")


@pytest.fixture
def remap(monkeypatch) -> None:
    if HOST_HAS_OPT_ML:
        pytest.skip("this host has /opt/ml: a script's literal path would not fail")
    monkeypatch.setenv(opt_ml.MODE_VARIABLE, "remap")


@pytest.fixture(autouse=True)
def host_opt_ml_untouched():
    """No test here may create /opt/ml on the host (the bind exists in the job's namespace only)."""
    yield
    assert os.path.lexists("/opt/ml") == HOST_HAS_OPT_ML


def process(store, tmp_path: Path, code: str = PROCESS):
    code_uri = "s3://mlops-local/mlops/code/literal.py"
    store.put_bytes(code_uri, code.encode())
    store.put_bytes(f"{TRAIN_URI}/train.csv", b"a,medv\n1,2\n3,4\n")
    request = processing_request(
        inputs=[
            processing_input("code", code_uri, "/opt/ml/processing/input/code"),
            processing_input("data", TRAIN_URI, "/opt/ml/processing/input/data"),
        ],
        outputs={"out": "/opt/ml/processing/output"},
        entrypoint=["python3", "/opt/ml/processing/input/code/literal.py"],
        args=["--flag"],
    )
    work = tmp_path / "work" / "Preprocess"
    return run_processing_job("Preprocess", request, store, work, tmp_path / "p.log"), work


def literal_training_request(store) -> dict:
    put_training_data(store)
    put_sourcedir(store, {"train.py": TRAIN})
    return training_request({"train": TRAIN_URI, "validation": VALIDATION_URI}, {"max_depth": "5"})


# --------------------------------------------------------------------------- in a namespace


def test_a_processing_script_with_literal_paths_runs_and_its_outputs_are_uploaded(store, tmp_path, namespace):
    result, work = process(store, tmp_path)
    assert result.status == "Completed", result.failure_reason
    assert store.list(f"{OUT}/") == [f"{OUT}/nested/job.json", f"{OUT}/rows.txt"]
    assert store.get_bytes(f"{OUT}/rows.txt") == b"2"
    job = json.loads(store.get_bytes(f"{OUT}/nested/job.json"))
    # The container's paths, unchanged: the entrypoint as requested.
    assert job == {
        "name": "Preprocess",
        "cwd": str(work),
        "argv": ["/opt/ml/processing/input/code/literal.py", "--flag"],
    }
    assert "processing job Preprocess: Completed" in result.log_path.read_text()


def test_a_training_script_with_literal_paths_runs_and_its_model_is_uploaded(store, tmp_path, namespace):
    result = train(store, tmp_path, literal_training_request(store))
    assert result.status == "Completed", result.failure_reason
    model = members(store, result.outputs["S3ModelArtifacts"])
    assert json.loads(model["model.json"]) == {"rows": 1, "depth": 5, "cwd": "/opt/ml/code"}
    output = result.outputs["S3ModelArtifacts"].replace("model.tar.gz", "output.tar.gz")
    assert members(store, output) == {"metrics.txt": b"ok"}


def test_the_scripts_exit_code_is_the_jobs(store, tmp_path, namespace):
    result, _ = process(store, tmp_path, "import sys\nprint('bad rows')\nsys.exit(3)\n")
    assert (result.status, result.exit_code) == ("Failed", 3)
    assert result.failure_reason == "AlgorithmError: exit code 3, last lines of the log:\nbad rows"


def test_a_stopped_job_in_a_namespace_leaves_no_process_behind(store, tmp_path, namespace):
    put_training_data(store)
    put_sourcedir(store, {"train.py": SLEEPER})
    name = "pipelines-exec1-Train-stop"
    thread, results, started, procs = run_in_thread(
        lambda on_start: train(store, tmp_path, training_request({"training": TRAIN_URI}), name, on_start=on_start)
    )
    assert started.wait(30), "on_start was not called"
    pids_file = tmp_path / "work" / name / "opt/ml/output/data/pids.json"
    wait_for(pids_file.exists, "the script to start its child")
    pids = json.loads(pids_file.read_text())
    assert procs[0].pid == pids[0]  # no launcher in between: the job's process is the script

    stop_process(procs[0], grace_seconds=30)
    thread.join(30)
    assert results, "the job did not return"
    assert (results[0].status, results[0].exit_code) == ("Stopped", -signal.SIGTERM)
    for pid in pids:
        wait_for(lambda pid=pid: not alive(pid), f"process {pid} to end")


# --------------------------------------------------------------------------- without one


def test_without_a_namespace_a_literal_input_path_fails_by_name(store, tmp_path, remap):
    result, work = process(store, tmp_path)
    assert result.status == "Failed"
    reason = result.failure_reason
    assert reason.startswith(
        "AlgorithmError: the script used the container path /opt/ml/processing/input/data/train.csv, "
        "which does not exist on this machine: local jobs here cannot get their own /opt/ml "
        f"(MLOPS_LOCAL_OPT_ML=remap), so the job's /opt/ml is {work}/opt/ml."
    )
    assert "MLOPS_LOCAL_OPT_ML=auto" in reason and "FileNotFoundError" in reason  # the log's end follows
    assert len(reason) <= 1024
    assert store.list(f"{OUT}/") == []


def test_without_a_namespace_a_literal_training_path_fails_by_name(store, tmp_path, remap):
    result = train(store, tmp_path, literal_training_request(store))
    assert result.status == "Failed"
    assert "the container path /opt/ml/input/config/hyperparameters.json, which" in result.failure_reason
    assert "SM_MODEL_DIR" in result.failure_reason


@pytest.mark.parametrize(
    ("line", "path"),
    [
        ("PermissionError: [Errno 13] Permission denied: '/opt/ml'", "/opt/ml"),
        ("OSError: Cannot save file into a non-existent directory: '/opt/ml/processing/out'", "/opt/ml/processing/out"),
        (
            'FileNotFoundError: [Errno 2] No such file or directory: "/opt/ml/model/it\'s.joblib"',
            "/opt/ml/model/it's.joblib",
        ),
        ("bash: /opt/ml/code/run.sh: No such file or directory", "/opt/ml/code/run.sh"),
        ("print('/opt/ml/model')", None),
        ("cp: cannot create regular file '/opt/ml/model/x': No such file or directory", "/opt/ml/model/x"),
        ("ValueError: bad value '/opt/mlx/a'", None),
        ("all good", None),
    ],
)
def test_literal_path_failures_are_recognized(line, path):
    reason = opt_ml.literal_path_failure(f"Traceback\n{line}\n", "/w/opt/ml", "why")
    assert (reason is not None and f"the container path {path}, which" in reason) == (path is not None)


def test_a_forced_namespace_this_machine_cannot_make_fails_the_job_with_why(store, tmp_path, monkeypatch):
    monkeypatch.setattr(opt_ml, "probe", lambda: (False, "user namespaces are disabled"))
    monkeypatch.setenv(opt_ml.MODE_VARIABLE, "namespace")
    result, _ = process(store, tmp_path)
    assert (result.status, result.exit_code) == ("Failed", None)
    assert result.failure_reason == (
        "ClientError: MLOPS_LOCAL_OPT_ML=namespace, but this machine cannot bind /opt/ml for a job: "
        "user namespaces are disabled"
    )


def test_an_unknown_mode_fails_the_job_naming_the_setting(store, tmp_path, monkeypatch):
    monkeypatch.setenv(opt_ml.MODE_VARIABLE, "docker")
    result, _ = process(store, tmp_path)
    assert result.failure_reason == "ClientError: MLOPS_LOCAL_OPT_ML='docker' is not one of auto, namespace, remap"


def test_the_launcher_says_why_it_could_not_bind(tmp_path, namespace):
    stage = tmp_path / "stage"
    stage.mkdir()
    command = opt_ml.launcher_command(str(tmp_path / "missing"), str(stage), "/", ["--check"])
    proc = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert proc.returncode == opt_ml.SETUP_FAILED
    assert proc.stderr.startswith(f"{opt_ml.SETUP_FAILED_PREFIX}: ")
    assert str(tmp_path / "missing") in proc.stderr


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv"), reason="needs root (to drop it) and setpriv")
def test_an_unprivileged_user_gets_the_bind_too(namespace):
    """Users' laptops are not root: the launcher needs no privilege (run here as nobody)."""
    scratch = Path(tempfile.mkdtemp(prefix="mlops-opt-ml-nobody-"))
    try:
        ml, stage = scratch / "ml", scratch / "stage"
        ml.mkdir()
        stage.mkdir()
        (ml / "input.txt").write_text("from the host")
        for folder in (scratch, ml, stage):
            folder.chmod(0o777)
        command = opt_ml.launcher_command(
            str(ml), str(stage), "/", ["sh", "-c", "id -u; cat /opt/ml/input.txt; echo written > /opt/ml/out.txt"]
        )
        drop = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
        proc = subprocess.run([*drop, *command], capture_output=True, text=True, timeout=60)
        assert (proc.returncode, proc.stderr) == (0, "")
        assert proc.stdout.splitlines() == ["65534", "from the host"]  # the user keeps its own id
        assert (ml / "out.txt").read_text() == "written\n"
        assert (ml / "out.txt").stat().st_uid == 65534
    finally:
        shutil.rmtree(scratch)


# --------------------------------------------------------------------------- through the service

SHARD_COUNT = script(
    """
    import json, os
    host = json.load(open("/opt/ml/config/resourceconfig.json"))["current_host"]
    files = sorted(os.listdir("/opt/ml/processing/input/data"))
    with open("/opt/ml/processing/counted/" + host + ".json", "w") as f:
        json.dump(files, f)
    """
)
TRAIN_ON_COUNTS = script(
    """
    import json, os
    channel = "/opt/ml/input/data/counts"
    seen = {name: json.load(open(os.path.join(channel, name))) for name in sorted(os.listdir(channel))}
    with open("/opt/ml/model/seen.json", "w") as f:
        json.dump(seen, f)
    """
)


def test_a_pipeline_of_literal_path_scripts_on_two_sharded_instances(sm_in_process, namespace):
    """The service end to end: a 2-instance Processing step (ShardedByS3Key) feeding a Training
    step, both scripts using only literal /opt/ml paths."""
    sm, store = sm_in_process, sm_in_process.store
    for key in ("p1.csv", "p2.csv", "p3.csv"):
        store.put_bytes(f"s3://{BUCKET}/parts/{key}", b"x\n")
    data = {
        "InputName": "data",
        "S3Input": {
            "S3Uri": f"s3://{BUCKET}/parts",
            "LocalPath": "/opt/ml/processing/input/data",
            "S3DataType": "S3Prefix",
            "S3InputMode": "File",
            "S3DataDistributionType": "ShardedByS3Key",
        },
    }
    count = processing_step(store, "Count", SHARD_COUNT, outputs=["counted"], inputs=[data])
    count["Arguments"]["ProcessingResources"]["ClusterConfig"]["InstanceCount"] = 2
    fit = training_step(store, "Fit", TRAIN_ON_COUNTS)
    counted = "Steps.Count.ProcessingOutputConfig.Outputs['counted'].S3Output.S3Uri"
    fit["Arguments"]["InputDataConfig"] = [
        {"ChannelName": "counts", "DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": {"Get": counted}}}}
    ]
    sm.create_pipeline(
        PipelineName="literal", PipelineDefinition=definition([count, fit]), RoleArn="arn:aws:iam::0:role/x"
    )
    arn = sm.start_pipeline_execution(PipelineName="literal")["PipelineExecutionArn"]
    worker.run_execution(sm.home, store, arn)

    execution = sm.describe_pipeline_execution(PipelineExecutionArn=arn)
    assert execution["PipelineExecutionStatus"] == "Succeeded", execution.get("FailureReason")
    steps = {
        s["StepName"]: s for s in sm.list_pipeline_execution_steps(PipelineExecutionArn=arn)["PipelineExecutionSteps"]
    }
    job = sm.describe_processing_job(
        ProcessingJobName=steps["Count"]["Metadata"]["ProcessingJob"]["Arn"].rsplit("/", 1)[-1]
    )
    assert job["ProcessingResources"]["ClusterConfig"]["InstanceCount"] == 2
    training = sm.describe_training_job(
        TrainingJobName=steps["Fit"]["Metadata"]["TrainingJob"]["Arn"].rsplit("/", 1)[-1]
    )
    seen = json.loads(members(store, training["ModelArtifacts"]["S3ModelArtifacts"])["seen.json"])
    assert seen == {"algo-1.json": ["p1.csv", "p3.csv"], "algo-2.json": ["p2.csv"]}


def test_the_launcher_refuses_a_malformed_command_line():
    launcher = opt_ml.launcher_command("ml", "stage", "/", ["true"])[:4]  # python -I -S <launcher>
    proc = subprocess.run([*launcher, "only-one-argument"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.startswith("usage: opt_ml_launcher.py <host_ml> <stage> <cwd> -- <command...>")
