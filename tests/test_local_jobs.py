"""Local Training and Processing jobs: the SageMaker container contract, without Docker.

Requests are shaped like the Arguments of the SDK's Train and Preprocess steps (with every
expression resolved); the scripts are written on the fly and shipped as SageMaker ships them.
"""

from __future__ import annotations

import io
import json
import os
import signal
import sys
import tarfile
import textwrap
import threading
import time
from pathlib import Path

import pytest

from mlops_dagster.resources.object_store import LocalObjectStore
from mlops_dagster.sagemaker.local import opt_ml
from mlops_dagster.sagemaker.local.jobs import JobResult, run_processing_job, run_training_job, stop_process

REPO = Path(__file__).resolve().parent.parent
IMAGE = "683313688378.dkr.ecr.us-east-1.amazonaws.com/sagemaker-scikit-learn:1.2-1-cpu-py3"
ROLE = "arn:aws:iam::000000000000:role/mlops-local"
CODE_URI = "s3://mlops-local/mlops/mlops-pipeline/code/abc123/sourcedir.tar.gz"
EXEC = "s3://mlops-local/mlops/mlops-pipeline/exec-1"
TRAIN_URI = f"{EXEC}/Preprocess/output/train"  # no trailing slash, as the pipeline passes it
VALIDATION_URI = f"{EXEC}/Preprocess/output/validation"
OUTPUT_PATH = "s3://mlops-local/mlops/"
JOB_OUTPUTS = "s3://mlops-local/mlops/pipelines-"  # where any training job of these tests would upload


# --------------------------------------------------------------------------- helpers


@pytest.fixture
def store(mlops_home: Path) -> LocalObjectStore:
    return LocalObjectStore(root=str(mlops_home / "s3"))


@pytest.fixture(params=["namespace", "remap"])
def opt_ml_mode(request, monkeypatch) -> str:
    """Each way a job gets its /opt/ml (see opt_ml), forced; the namespace only where this machine has one."""
    if request.param == "namespace" and not opt_ml.probe()[0]:
        pytest.skip(f"no mount namespace for /opt/ml on this machine: {opt_ml.probe()[1]}")
    monkeypatch.setenv(opt_ml.MODE_VARIABLE, request.param)
    return request.param


def seen_ml(mode: str, work: Path) -> str:
    """Where the script of a job in ``work`` sees its /opt/ml."""
    return "/opt/ml" if mode == "namespace" else f"{work}/opt/ml"


def script(text: str) -> str:
    return textwrap.dedent(text).lstrip()


def put_sourcedir(store: LocalObjectStore, files: dict[str, str], uri: str = CODE_URI) -> str:
    """A sourcedir.tar.gz with the files at its root, as the SDK uploads it."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
    store.put_bytes(uri, buffer.getvalue())
    return uri


def training_request(
    channels: dict[str, str],
    hyperparameters: dict[str, str] | None = None,
    program: str = "train.py",
    submit_dir: str = CODE_URI,
    max_runtime: int = 86400,
    environment: dict[str, str] | None = None,
) -> dict:
    """The Train step's Arguments from the example definition, resolved."""
    request = {
        "AlgorithmSpecification": {"TrainingInputMode": "File", "TrainingImage": IMAGE},
        "OutputDataConfig": {"S3OutputPath": OUTPUT_PATH},
        "StoppingCondition": {"MaxRuntimeInSeconds": max_runtime},
        "ResourceConfig": {"VolumeSizeInGB": 30, "InstanceCount": 1, "InstanceType": "ml.m5.large"},
        "RoleArn": ROLE,
        "InputDataConfig": [
            {
                "DataSource": {
                    "S3DataSource": {
                        "S3DataType": "S3Prefix",
                        "S3Uri": uri,
                        "S3DataDistributionType": "FullyReplicated",
                    }
                },
                "ContentType": "text/csv",
                "ChannelName": channel,
            }
            for channel, uri in channels.items()
        ],
        "HyperParameters": {
            **(hyperparameters or {}),
            "sagemaker_submit_directory": json.dumps(submit_dir),
            "sagemaker_program": json.dumps(program),
            "sagemaker_container_log_level": "20",
            "sagemaker_region": '"us-east-1"',
        },
        "DebugHookConfig": {"S3OutputPath": OUTPUT_PATH, "CollectionConfigurations": []},
        "ProfilerConfig": {"S3OutputPath": OUTPUT_PATH, "DisableProfiler": False},
    }
    if environment:
        request["Environment"] = environment
    return request


def processing_input(name: str, uri: str, local_path: str) -> dict:
    return {
        "InputName": name,
        "AppManaged": False,
        "S3Input": {
            "S3Uri": uri,
            "LocalPath": local_path,
            "S3DataType": "S3Prefix",
            "S3InputMode": "File",
            "S3DataDistributionType": "FullyReplicated",
            "S3CompressionType": "None",
        },
    }


def processing_request(inputs: list[dict], outputs: dict[str, str], entrypoint: list[str], args: list[str]) -> dict:
    """The Preprocess step's Arguments from the example definition, resolved."""
    return {
        "ProcessingResources": {
            "ClusterConfig": {"InstanceType": "ml.m5.large", "InstanceCount": 1, "VolumeSizeInGB": 30}
        },
        "AppSpecification": {"ImageUri": IMAGE, "ContainerArguments": args, "ContainerEntrypoint": entrypoint},
        "RoleArn": ROLE,
        "ProcessingInputs": inputs,
        "ProcessingOutputConfig": {
            "Outputs": [
                {
                    "OutputName": name,
                    "AppManaged": False,
                    "S3Output": {
                        "S3Uri": f"{EXEC}/Preprocess/output/{name}",
                        "LocalPath": local_path,
                        "S3UploadMode": "EndOfJob",
                    },
                }
                for name, local_path in outputs.items()
            ]
        },
    }


def train(store, tmp_path: Path, request: dict, name: str = "pipelines-exec1-Train-abc", **kwargs) -> JobResult:
    return run_training_job(name, request, store, tmp_path / "work" / name, tmp_path / "logs" / f"{name}.log", **kwargs)


def members(store, uri: str) -> dict[str, bytes]:
    """Name -> content (b"" for directories) of a tar.gz object."""
    with tarfile.open(fileobj=io.BytesIO(store.get_bytes(uri)), mode="r:gz") as tar:
        return {m.name: tar.extractfile(m).read() if m.isfile() else b"" for m in tar.getmembers()}


def put_training_data(store) -> None:
    store.put_bytes(f"{TRAIN_URI}/train.csv", b"a,medv\n1,2\n")
    store.put_bytes(f"{TRAIN_URI}/nested/part-2.csv", b"a,medv\n3,4\n")
    store.put_bytes(f"{VALIDATION_URI}/validation.csv", b"a,medv\n5,6\n")


def wait_for(condition, what: str, limit: float = 30.0) -> None:
    deadline = time.monotonic() + limit
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"gave up waiting for {what}")
        time.sleep(0.05)


def alive(pid: int) -> bool:
    """True while the process exists and is not a zombie (PID 1 in a container may not reap)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def run_in_thread(target) -> tuple[threading.Thread, list, threading.Event, list]:
    """Start a job in a thread; returns the thread, its result list, the start event and the Popen list."""
    started, procs, results = threading.Event(), [], []

    def on_start(proc) -> None:
        procs.append(proc)
        started.set()

    thread = threading.Thread(target=lambda: results.append(target(on_start)), daemon=True)
    thread.start()
    return thread, results, started, procs


DUMP_TRAIN = script(
    """
    import json, os, sys
    model, channel = os.environ["SM_MODEL_DIR"], os.environ["SM_CHANNEL_TRAINING"]
    files = sorted(os.path.relpath(os.path.join(d, f), channel) for d, _, fs in os.walk(channel) for f in fs)
    with open(os.path.join(os.environ["SM_INPUT_CONFIG_DIR"], "hyperparameters.json")) as f:
        hps = json.load(f)
    seen = {"argv": sys.argv, "env": dict(os.environ), "cwd": os.getcwd(), "executable": sys.executable,
            "training_files": files, "hyperparameters": hps,
            "validation_files": sorted(os.listdir(os.environ["SM_CHANNEL_VALIDATION"]))}
    with open(os.path.join(model, "seen.json"), "w") as f:
        json.dump(seen, f)
    os.makedirs(os.path.join(model, "sub"))
    with open(os.path.join(channel, "train.csv")) as src, open(os.path.join(model, "sub", "weights.txt"), "w") as dst:
        dst.write(src.read())
    with open(os.path.join(os.environ["SM_OUTPUT_DATA_DIR"], "metrics.txt"), "w") as f:
        f.write("ok")
    print("trained")
    """
)


# --------------------------------------------------------------------------- training


def test_training_job_follows_the_container_contract(store, tmp_path, opt_ml_mode):
    put_training_data(store)
    store.put_bytes(f"{EXEC}/Preprocess/output/test/test.csv", b"not a channel\n")
    put_sourcedir(store, {"train.py": DUMP_TRAIN})
    hyperparameters = {"target": '"medv"', "n_estimators": "100", "flag": "true", "k": "3"}
    request = training_request(
        {"training": TRAIN_URI, "validation": f"{VALIDATION_URI}/validation.csv"},
        hyperparameters,
        environment={"MY_SETTING": "x", "MY_PATH": "/opt/ml/model/extra"},
    )
    name = "pipelines-exec1-Train-abc"
    result = train(store, tmp_path, request, name)

    assert result.status == "Completed", result.failure_reason
    assert (result.failure_reason, result.exit_code) == (None, 0)
    model_uri = f"s3://mlops-local/mlops/{name}/output/model.tar.gz"
    assert result.outputs == {"S3ModelArtifacts": model_uri}
    model = members(store, model_uri)
    assert set(model) == {"seen.json", "sub", "sub/weights.txt"}  # files at the root, no "./"
    assert model["sub/weights.txt"] == b"a,medv\n1,2\n"
    assert members(store, f"s3://mlops-local/mlops/{name}/output/output.tar.gz") == {"metrics.txt": b"ok"}
    # gzip's default level (tar -czf), not the slowest: the gzip header's XFL byte is 2 only at level 9.
    assert store.get_bytes(model_uri)[:2] == b"\x1f\x8b" and store.get_bytes(model_uri)[8] == 0

    seen = json.loads(model["seen.json"])
    work = tmp_path / "work" / name
    ml = seen_ml(opt_ml_mode, work)
    code_dir = Path(ml) / "code"
    # sagemaker_* are not arguments; the rest are, sorted, with the toolkit's str() of decoded values.
    assert seen["argv"] == ["train.py", "--flag", "True", "-k", "3", "--n_estimators", "100", "--target", "medv"]
    assert seen["executable"] == sys.executable
    assert Path(seen["cwd"]) == code_dir
    assert seen["training_files"] == ["nested/part-2.csv", "train.csv"]
    assert seen["validation_files"] == ["validation.csv"]
    assert seen["hyperparameters"] == request["HyperParameters"]  # as given, still JSON-encoded

    env = seen["env"]
    assert env["SM_CHANNEL_TRAINING"] == f"{ml}/input/data/training"
    assert env["SM_MODEL_DIR"] == f"{ml}/model"
    assert env["SM_OUTPUT_DATA_DIR"] == f"{ml}/output/data"
    assert json.loads(env["SM_CHANNELS"]) == ["training", "validation"]
    assert json.loads(env["SM_HPS"]) == {"target": "medv", "n_estimators": 100, "flag": True, "k": 3}
    assert (env["SM_HP_TARGET"], env["SM_HP_N_ESTIMATORS"], env["SM_HP_FLAG"]) == ("medv", "100", "true")
    assert (env["SM_NUM_CPUS"], env["SM_NUM_GPUS"]) == (str(os.cpu_count()), "0")
    assert (env["SM_CURRENT_HOST"], json.loads(env["SM_HOSTS"])) == ("algo-1", ["algo-1"])
    assert (env["SM_MODULE_DIR"], env["SM_USER_ENTRY_POINT"]) == (CODE_URI, "train.py")
    assert json.loads(env["SM_TRAINING_ENV"])["job_name"] == name
    assert env["PYTHONPATH"].split(os.pathsep)[0] == str(code_dir)
    assert env["PYTHONUNBUFFERED"] == "1"
    assert (env["MY_SETTING"], env["MY_PATH"]) == ("x", f"{ml}/model/extra")
    # No way out: the parent's credentials and project state are not passed on.
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "MLOPS_HOME", "DAGSTER_HOME"):
        assert key not in env
    assert env["AWS_SHARED_CREDENTIALS_FILE"] == os.devnull

    config = work / "opt/ml/input/config"
    assert json.loads((config / "resourceconfig.json").read_text())["hosts"] == ["algo-1"]
    assert set(json.loads((config / "inputdataconfig.json").read_text())) == {"training", "validation"}
    log = result.log_path.read_text()
    assert f"training job {name}: running" in log and "trained" in log


def test_rerun_in_the_same_work_dir_starts_clean(store, tmp_path):
    put_training_data(store)
    put_sourcedir(store, {"train.py": "import os\nopen(os.environ['SM_MODEL_DIR'] + '/first.txt', 'w')\n"})
    assert train(store, tmp_path, training_request({"training": TRAIN_URI})).status == "Completed"
    put_sourcedir(store, {"train.py": "import os\nopen(os.environ['SM_MODEL_DIR'] + '/second.txt', 'w')\n"})
    result = train(store, tmp_path, training_request({"training": TRAIN_URI}))
    assert set(members(store, result.outputs["S3ModelArtifacts"])) == {"second.txt"}


def test_failure_file_is_the_failure_reason_and_nothing_is_uploaded(store, tmp_path):
    put_training_data(store)
    failing = script(
        """
        import os, sys
        with open(os.path.join(os.environ["SM_OUTPUT_DIR"], "failure"), "w") as f:
            f.write("target column 'medv' not found\\n")
        open(os.path.join(os.environ["SM_MODEL_DIR"], "partial.bin"), "w").write("x")
        sys.exit(2)
        """
    )
    put_sourcedir(store, {"train.py": failing})
    result = train(store, tmp_path, training_request({"training": TRAIN_URI}))
    assert (result.status, result.exit_code, result.outputs) == ("Failed", 2, {})
    assert result.failure_reason == "AlgorithmError: target column 'medv' not found"
    assert store.list(JOB_OUTPUTS) == []


def test_without_failure_file_the_reason_is_the_log_tail(store, tmp_path):
    put_training_data(store)
    noisy = script(
        """
        import sys
        for i in range(30):
            print(f"noise-{i:02d}", file=sys.stderr)
        raise ValueError("bad input in train.csv")
        """
    )
    put_sourcedir(store, {"train.py": noisy})
    result = train(store, tmp_path, training_request({"training": TRAIN_URI}))
    assert result.status == "Failed"
    assert result.failure_reason.startswith("AlgorithmError: exit code 1")
    assert "ValueError: bad input in train.csv" in result.failure_reason
    assert "noise-29" in result.failure_reason and "noise-00" not in result.failure_reason
    assert "noise-00" in result.log_path.read_text()  # the whole output stays in the log


def test_killed_by_a_signal_is_failed_with_the_signal(store, tmp_path):
    put_training_data(store)
    put_sourcedir(store, {"train.py": "import os, signal\nos.kill(os.getpid(), signal.SIGKILL)\n"})
    result = train(store, tmp_path, training_request({"training": TRAIN_URI}))
    assert (result.status, result.exit_code) == ("Failed", -signal.SIGKILL)
    assert "killed by signal SIGKILL" in result.failure_reason


SLEEPER = script(
    """
    import json, os, signal, subprocess, sys, time
    if "--ignore-sigterm" in sys.argv:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    path = os.path.join(os.environ["SM_OUTPUT_DATA_DIR"], "pids.json")
    with open(path + ".tmp", "w") as f:
        json.dump([os.getpid(), child.pid], f)
    os.replace(path + ".tmp", path)
    time.sleep(120)
    """
)


@pytest.mark.parametrize("ignore_sigterm", [False, True], ids=["sigterm", "sigkill-after-grace"])
def test_stop_process_stops_the_job_and_its_children(store, tmp_path, ignore_sigterm):
    put_training_data(store)
    put_sourcedir(store, {"train.py": SLEEPER})
    hyperparameters = {"ignore-sigterm": '"yes"'} if ignore_sigterm else {}
    request = training_request({"training": TRAIN_URI}, hyperparameters)
    name = "pipelines-exec1-Train-stop"
    thread, results, started, procs = run_in_thread(
        lambda on_start: train(store, tmp_path, request, name, on_start=on_start)
    )
    assert started.wait(30), "on_start was not called"
    pids_file = tmp_path / "work" / name / "opt/ml/output/data/pids.json"
    wait_for(pids_file.exists, "the script to start its child")
    pids = json.loads(pids_file.read_text())
    assert procs[0].pid == pids[0]

    # A long grace when SIGTERM is honoured: on a loaded machine 0.5 s can pass before the
    # kernel reaps the process, and SIGKILL would then be what ended it.
    stop_process(procs[0], grace_seconds=0.5 if ignore_sigterm else 30)
    thread.join(30)
    assert results, "the job did not return"
    assert (results[0].status, results[0].failure_reason, results[0].outputs) == ("Stopped", None, {})
    assert results[0].exit_code == (-signal.SIGKILL if ignore_sigterm else -signal.SIGTERM)
    for pid in pids:
        wait_for(lambda pid=pid: not alive(pid), f"process {pid} to end")
    assert store.list(JOB_OUTPUTS) == []


def test_a_failing_on_start_callback_does_not_leave_the_job_running(store, tmp_path):
    put_training_data(store)
    put_sourcedir(store, {"train.py": "import time\ntime.sleep(60)\n"})
    procs = []

    def on_start(proc) -> None:
        procs.append(proc)
        raise RuntimeError("could not record the pid")

    with pytest.raises(RuntimeError, match="could not record the pid"):
        train(store, tmp_path, training_request({"training": TRAIN_URI}), on_start=on_start)
    assert procs[0].returncode == -signal.SIGKILL
    assert not alive(procs[0].pid)


def test_max_runtime_is_enforced(store, tmp_path):
    put_training_data(store)
    put_sourcedir(store, {"train.py": "import time\ntime.sleep(60)\n"})
    result = train(store, tmp_path, training_request({"training": TRAIN_URI}, max_runtime=1))
    assert result.status == "Failed"
    assert "MaxRuntimeInSeconds (1 s)" in result.failure_reason
    assert store.list(JOB_OUTPUTS) == []


def test_missing_channel_data_fails_before_the_script_and_names_the_uri(store, tmp_path):
    put_sourcedir(store, {"train.py": "raise SystemExit('must not run')\n"})
    missing = f"{EXEC}/Preprocess/output/nothing"
    result = train(store, tmp_path, training_request({"training": missing}))
    assert (result.status, result.exit_code) == ("Failed", None)
    assert result.failure_reason == f"ClientError: no objects under {missing} for channel 'training'"
    assert result.failure_reason in result.log_path.read_text()


def test_missing_source_dir_fails_and_names_the_uri(store, tmp_path):
    put_training_data(store)
    result = train(store, tmp_path, training_request({"training": TRAIN_URI}))
    assert result.status == "Failed"
    assert result.failure_reason.startswith("ClientError: no object at ")
    assert CODE_URI in result.failure_reason


def test_source_dir_member_escaping_the_code_dir_is_refused(store, tmp_path):
    put_training_data(store)
    put_sourcedir(store, {"train.py": "print('hi')\n", "../escape.py": "print('escaped')\n"})
    name = "pipelines-exec1-Train-tar"
    result = train(store, tmp_path, training_request({"training": TRAIN_URI}), name)
    assert (result.status, result.exit_code) == ("Failed", None)
    assert result.failure_reason.startswith(f"ClientError: cannot unpack the source directory {CODE_URI}")
    assert "outside the destination" in result.failure_reason
    assert not (tmp_path / "work" / name / "opt/ml/escape.py").exists()


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda r: r["ResourceConfig"].update(InstanceCount=2), "InstanceCount is 2"),
        (lambda r: r["AlgorithmSpecification"].update(TrainingInputMode="Pipe"), "'Pipe' is not supported"),
        (lambda r: r["HyperParameters"].pop("sagemaker_program"), "'sagemaker_program' is missing"),
        (lambda r: r["HyperParameters"].update(sagemaker_program='"nope.py"'), "'nope.py' is not a file"),
    ],
    ids=["instances", "pipe", "no-program", "program-not-in-sourcedir"],
)
def test_what_cannot_run_locally_fails_with_a_reason(store, tmp_path, change, expected):
    put_training_data(store)
    put_sourcedir(store, {"train.py": "print('hi')\n"})
    request = training_request({"training": TRAIN_URI})
    change(request)
    result = train(store, tmp_path, request)
    assert result.status == "Failed" and result.failure_reason.startswith("ClientError: ")
    assert expected in result.failure_reason


# --------------------------------------------------------------------------- the project's and the recipe's train.py


def boston_channels(store) -> None:
    from mlops_dagster.datasets import synthetic_boston, to_csv_bytes

    frame = synthetic_boston(80, seed=3)
    store.put_bytes(f"{TRAIN_URI}/train.csv", to_csv_bytes(frame.iloc[:60]))
    store.put_bytes(f"{VALIDATION_URI}/validation.csv", to_csv_bytes(frame.iloc[60:]))


def test_project_train_script_runs_under_the_contract(store, tmp_path):
    source = REPO / "training" / "train.py"
    if not source.exists():
        pytest.skip("training/train.py is not there yet")
    boston_channels(store)
    put_sourcedir(store, {"train.py": source.read_text()})
    hyperparameters = {"target": '"medv"', "n_estimators": "10", "min_samples_leaf": "1", "random_state": "42"}
    request = training_request({"training": TRAIN_URI, "validation": VALIDATION_URI}, hyperparameters)
    result = train(store, tmp_path, request)
    assert result.status == "Completed", result.failure_reason
    model = members(store, result.outputs["S3ModelArtifacts"])
    assert "model.joblib" in model
    assert json.loads(model["evaluation.json"])["evaluated_on"] == "validation"


def test_recipe_train_script_runs_unmodified(store, tmp_path):
    source = REPO / "tests" / "fixtures" / "recipe_train.py"
    if not source.exists():
        pytest.skip("tests/fixtures/recipe_train.py is not there")
    boston_channels(store)
    put_sourcedir(store, {"train.py": source.read_text()})
    result = train(store, tmp_path, training_request({"training": TRAIN_URI}))  # the recipe takes no hyperparameters
    assert result.status == "Completed", result.failure_reason
    assert {"model.joblib", "evaluation.json"} <= set(members(store, result.outputs["S3ModelArtifacts"]))


# --------------------------------------------------------------------------- processing


PROCESS = script(
    """
    import argparse, json, os, shutil, sys
    parser = argparse.ArgumentParser()
    parser.add_argument("--input-dir")
    parser.add_argument("--output-dir")
    parser.add_argument("--target")
    args = parser.parse_args()
    if args.target == "fail":
        print("cannot preprocess: target column 'fail' is missing", file=sys.stderr)
        sys.exit(3)
    listing = sorted(os.path.relpath(os.path.join(d, f), args.input_dir)
                     for d, _, fs in os.walk(args.input_dir) for f in fs)
    shutil.copy(os.path.join(args.input_dir, "train.csv"), os.path.join(args.output_dir, "train", "train.csv"))
    os.makedirs(os.path.join(args.output_dir, "train", "extra"))
    with open(os.path.join(args.output_dir, "train", "extra", "part.txt"), "w") as f:
        f.write("part")
    report = {"argv": sys.argv, "executable": sys.executable, "listing": listing,
              "env": {k: os.environ.get(k) for k in ("DATA_HOME", "PLAIN", "MLOPS_HOME", "AWS_ACCESS_KEY_ID")}}
    with open(os.path.join(args.output_dir, "report", "report.json"), "w") as f:
        json.dump(report, f)
    """
)


def preprocess_request(store, target: str = "medv") -> dict:
    store.put_bytes("s3://mlops-local/datasets/abc/train.csv", b"a,medv\n1,2\n")
    store.put_bytes("s3://mlops-local/datasets/abc/validation.csv", b"a,medv\n3,4\n")
    code_uri = "s3://mlops-local/mlops/mlops-pipeline/code/def456/preprocess.py"
    store.put_bytes(code_uri, PROCESS.encode())
    request = processing_request(
        inputs=[
            processing_input("input-1", "s3://mlops-local/datasets/abc", "/opt/ml/processing/input"),
            processing_input("code", code_uri, "/opt/ml/processing/input/code"),
        ],
        outputs={"train": "/opt/ml/processing/train", "report": "/opt/ml/processing/report"},
        entrypoint=["python3", "/opt/ml/processing/input/code/preprocess.py"],
        args=["--input-dir", "/opt/ml/processing/input", "--output-dir", "/opt/ml/processing", "--target", target],
    )
    request["Environment"] = {"DATA_HOME": "/opt/ml/processing/input", "PLAIN": "/opt/mlx"}
    return request


def test_processing_job_remaps_paths_and_uploads_outputs(store, tmp_path, opt_ml_mode):
    work = tmp_path / "work" / "pipelines-exec1-Preprocess-abc"
    log = tmp_path / "logs" / "nested" / "Preprocess.log"
    result = run_processing_job("pipelines-exec1-Preprocess-abc", preprocess_request(store), store, work, log)

    assert result.status == "Completed", result.failure_reason
    assert (result.outputs, result.exit_code, result.log_path) == ({}, 0, log)
    out = f"{EXEC}/Preprocess/output"
    assert store.list(f"{out}/") == [
        f"{out}/report/report.json",
        f"{out}/train/extra/part.txt",
        f"{out}/train/train.csv",
    ]
    assert store.get_bytes(f"{out}/train/train.csv") == b"a,medv\n1,2\n"

    report = json.loads(store.get_bytes(f"{out}/report/report.json"))
    ml = f"{seen_ml(opt_ml_mode, work)}/processing"
    script_path = f"{ml}/input/code/preprocess.py"
    assert report["argv"] == [script_path, "--input-dir", f"{ml}/input", "--output-dir", ml, "--target", "medv"]
    assert report["executable"] == sys.executable  # "python3" is this interpreter
    # The dataset prefix and the code input nest as in the container.
    assert report["listing"] == ["code/preprocess.py", "train.csv", "validation.csv"]
    assert report["env"] == {
        "DATA_HOME": f"{ml}/input",
        "PLAIN": "/opt/mlx",
        "MLOPS_HOME": None,
        "AWS_ACCESS_KEY_ID": None,
    }
    assert json.loads((work / "opt/ml/config/processingjobconfig.json").read_text())["ProcessingJobName"] == (
        "pipelines-exec1-Preprocess-abc"
    )
    assert "processing job pipelines-exec1-Preprocess-abc: running" in log.read_text()


def test_failed_processing_job_reports_stderr_and_uploads_nothing(store, tmp_path):
    work = tmp_path / "work" / "Preprocess"
    request = preprocess_request(store, target="fail")
    result = run_processing_job("Preprocess", request, store, work, tmp_path / "Preprocess.log")
    assert (result.status, result.exit_code) == ("Failed", 3)
    assert result.failure_reason.startswith("AlgorithmError: exit code 3")
    assert "target column 'fail' is missing" in result.failure_reason
    assert store.list(f"{EXEC}/") == []


def test_processing_input_missing_names_the_uri(store, tmp_path):
    request = preprocess_request(store)
    missing = "s3://mlops-local/datasets/nothing-here"
    request["ProcessingInputs"][0]["S3Input"]["S3Uri"] = missing
    result = run_processing_job("Preprocess", request, store, tmp_path / "work", tmp_path / "p.log")
    assert (result.status, result.exit_code) == ("Failed", None)
    assert result.failure_reason == f"ClientError: no objects under {missing} for processing input 'input-1'"


def test_processing_local_path_outside_opt_ml_processing_is_refused(store, tmp_path):
    request = preprocess_request(store)
    request["ProcessingInputs"][0]["S3Input"]["LocalPath"] = "/opt/ml/processing/../../../etc"
    result = run_processing_job("Preprocess", request, store, tmp_path / "work", tmp_path / "p.log")
    assert result.status == "Failed"
    assert result.failure_reason.startswith("ClientError: processing input 'input-1': LocalPath")


# --------------------------------------------------------------------------- processing on several instances

INSTANCE = script(
    """
    import json, os, sys, time
    config, data, ref, out, meeting = sys.argv[1:6]  # meeting: a host folder where instances say they run
    with open(config) as f:
        resource = json.load(f)
    host = resource["current_host"]
    listing = lambda d: sorted(os.path.relpath(os.path.join(r, f), d) for r, _, fs in os.walk(d) for f in fs)
    with open(os.path.join(out, host + ".json"), "w") as f:
        json.dump({"resource": resource, "data": listing(data), "ref": listing(ref)}, f)
    with open(os.path.join(meeting, host + ".tmp"), "w") as f:
        f.write(str(os.getpid()))
    os.replace(os.path.join(meeting, host + ".tmp"), os.path.join(meeting, host + ".pid"))
    print("instance", host, "done")
    if host in sys.argv[6:]:  # the hosts told to sleep (and then be stopped)
        time.sleep(120)
    if "fail-" + host in sys.argv[6:]:  # once every instance runs
        while len([n for n in os.listdir(meeting) if n.endswith(".pid")]) < len(resource["hosts"]):
            time.sleep(0.05)
        sys.exit("bad shard on " + host)
    """
)
SHARDED = "s3://mlops-local/datasets/sharded"


def instances_request(
    store, count: int, *extra: str, distribution: str = "ShardedByS3Key", meeting: Path | None = None
) -> dict:
    code_uri = "s3://mlops-local/mlops/code/instance.py"
    store.put_bytes(code_uri, INSTANCE.encode())
    for key in ("e.csv", "a.csv", "sub/c.csv", "b.csv", "d.csv"):  # key order: a b d e sub/c
        store.put_bytes(f"{SHARDED}/{key}", key.encode())
    store.put_bytes("s3://mlops-local/datasets/ref/r1.txt", b"r1")
    store.put_bytes("s3://mlops-local/datasets/ref/r2.txt", b"r2")
    request = processing_request(
        inputs=[
            processing_input("code", code_uri, "/opt/ml/processing/input/code"),
            processing_input("data", SHARDED, "/opt/ml/processing/input/data"),
            processing_input("ref", "s3://mlops-local/datasets/ref", "/opt/ml/processing/input/ref"),
        ],
        outputs={"out": "/opt/ml/processing/out/hosts"},
        entrypoint=["python3", "/opt/ml/processing/input/code/instance.py"],
        args=[
            "/opt/ml/config/resourceconfig.json",
            "/opt/ml/processing/input/data",
            "/opt/ml/processing/input/ref",
            "/opt/ml/processing/out/hosts",
            str(meeting or store.root),  # any existing folder when the test does not wait on it
            *extra,
        ],
    )
    request["ProcessingInputs"][1]["S3Input"]["S3DataDistributionType"] = distribution
    request["ProcessingResources"]["ClusterConfig"]["InstanceCount"] = count
    return request


def test_a_processing_job_runs_one_process_per_instance_with_its_shard(store, tmp_path, opt_ml_mode):
    work, log = tmp_path / "work" / "Preprocess", tmp_path / "logs" / "Preprocess.log"
    result = run_processing_job("Preprocess", instances_request(store, 3), store, work, log)
    assert result.status == "Completed", result.failure_reason

    out = f"{EXEC}/Preprocess/output/out"
    assert store.list(f"{out}/") == [f"{out}/algo-1.json", f"{out}/algo-2.json", f"{out}/algo-3.json"]
    seen = {host: json.loads(store.get_bytes(f"{out}/{host}.json")) for host in ("algo-1", "algo-2", "algo-3")}
    hosts = ["algo-1", "algo-2", "algo-3"]
    assert {h: s["resource"] for h, s in seen.items()} == {h: {"current_host": h, "hosts": hosts} for h in hosts}
    # ShardedByS3Key: the keys in order, dealt round-robin; FullyReplicated: everything everywhere.
    assert {h: s["data"] for h, s in seen.items()} == {
        "algo-1": ["a.csv", "e.csv"],
        "algo-2": ["b.csv", "sub/c.csv"],
        "algo-3": ["d.csv"],
    }
    assert all(s["ref"] == ["r1.txt", "r2.txt"] for s in seen.values())
    # Each instance logs to its own stream (file), as SageMaker's log streams per instance.
    assert "instance algo-1 done" in log.read_text() and "instance algo-2 done" not in log.read_text()
    assert "instance algo-3 done" in log.with_name("Preprocess.algo-3.log").read_text()


def test_more_instances_than_objects_leaves_some_with_an_empty_shard(store, tmp_path):
    work = tmp_path / "work" / "Preprocess"
    result = run_processing_job("Preprocess", instances_request(store, 6), store, work, tmp_path / "p.log")
    assert result.status == "Completed", result.failure_reason
    last = json.loads(store.get_bytes(f"{EXEC}/Preprocess/output/out/algo-6.json"))
    assert (last["data"], last["ref"]) == ([], ["r1.txt", "r2.txt"])


def test_fully_replicated_input_gives_every_instance_everything(store, tmp_path):
    request = instances_request(store, 2, distribution="FullyReplicated")
    result = run_processing_job("Preprocess", request, store, tmp_path / "work", tmp_path / "p.log")
    assert result.status == "Completed", result.failure_reason
    second = json.loads(store.get_bytes(f"{EXEC}/Preprocess/output/out/algo-2.json"))
    assert second["data"] == ["a.csv", "b.csv", "d.csv", "e.csv", "sub/c.csv"]


def instance_pids(meeting: Path, count: int) -> list[int]:
    files = [meeting / f"algo-{n}.pid" for n in range(1, count + 1)]
    wait_for(lambda: all(f.exists() for f in files), "every instance to start")
    return [int(f.read_text()) for f in files]


def test_a_failing_instance_fails_the_job_and_ends_the_others(store, tmp_path):
    work, meeting = tmp_path / "work" / "Preprocess", tmp_path / "meeting"
    meeting.mkdir()
    request = instances_request(store, 3, "algo-1", "algo-3", "fail-algo-2", meeting=meeting)
    thread, results, started, _procs = run_in_thread(
        lambda on_start: run_processing_job("Preprocess", request, store, work, tmp_path / "p.log", on_start=on_start)
    )
    assert started.wait(60), "on_start was not called"
    pids = instance_pids(meeting, 3)
    thread.join(60)
    assert results, "the job did not end when an instance failed"
    assert (results[0].status, results[0].exit_code) == ("Failed", 1)
    assert results[0].failure_reason.startswith("AlgorithmError: algo-2: exit code 1, last lines of the log:\n")
    assert "bad shard on algo-2" in results[0].failure_reason
    for pid in pids:
        wait_for(lambda pid=pid: not alive(pid), f"process {pid} to end")
    assert store.list(f"{EXEC}/Preprocess/output/") == []


def test_stopping_a_job_stops_every_instance_even_after_the_first_ended(store, tmp_path):
    work, meeting = tmp_path / "work" / "Preprocess", tmp_path / "meeting"
    meeting.mkdir()
    request = instances_request(store, 3, "algo-2", "algo-3", meeting=meeting)  # algo-1 ends, the others sleep
    thread, results, started, procs = run_in_thread(
        lambda on_start: run_processing_job("Preprocess", request, store, work, tmp_path / "p.log", on_start=on_start)
    )
    assert started.wait(60), "on_start was not called"
    pids = instance_pids(meeting, 3)
    assert procs[0].pid == pids[0]
    wait_for(lambda: not alive(pids[0]), "the first instance to end")
    stop_process(procs[0], grace_seconds=30)
    thread.join(60)
    assert results, "the job did not return"
    assert (results[0].status, results[0].failure_reason) == ("Stopped", None)
    for pid in pids:
        wait_for(lambda pid=pid: not alive(pid), f"process {pid} to end")


@pytest.mark.parametrize(
    ("count", "distribution", "expected"),
    [
        (0, "ShardedByS3Key", "ClientError: ProcessingResources.ClusterConfig.InstanceCount must be at least 1, got 0"),
        (101, "ShardedByS3Key", "ClientError: ProcessingResources.ClusterConfig.InstanceCount is 101: at most 100"),
        (
            2,
            "ShardedByKey",
            "ClientError: processing input 'data': S3DataDistributionType 'ShardedByKey' is not one of "
            "('FullyReplicated', 'ShardedByS3Key')",
        ),
    ],
)
def test_bad_instance_settings_fail_before_any_script(store, tmp_path, count, distribution, expected):
    request = instances_request(store, count, distribution=distribution)
    result = run_processing_job("Preprocess", request, store, tmp_path / "work", tmp_path / "p.log")
    assert (result.status, result.exit_code) == ("Failed", None)
    assert result.failure_reason.startswith(expected)


# --------------------------------------------------------------------------- isolation: what a job's process gets

SECRETS = {
    "MY_API_TOKEN": "t0ken",
    "GITHUB_TOKEN": "ghp_secret",
    "AWS_ACCESS_KEY_ID": "AKIAPARENT",
    "AWS_SECRET_ACCESS_KEY": "parent-secret",
    "AWS_SESSION_TOKEN": "parent-session",
    "DATABASE_URL": "postgres://user:pw@db/prod",
    "MLOPS_HOME": "/parent/home",
    "DAGSTER_HOME": "/parent/dagster",
    "PYTHONPATH": "/parent/site",
    "VIRTUAL_ENV": "/parent/venv",
}
# What this host may pass on (the same names a machine with an ARM OpenBLAS sets).
HOST = {
    "LANG": "C.UTF-8",
    "LC_ALL": "C.UTF-8",
    "TZ": "UTC",
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "OPENBLAS_CORETYPE": "ARMV8",
    "OPENBLAS_L2_SIZE": "1048576",
}
# Set for every job: the container's python settings and no way to AWS credentials.
CONTAINER = {
    "PYTHONUNBUFFERED": "1",
    "PYTHONDONTWRITEBYTECODE": "1",
    "PYTHONIOENCODING": "UTF-8",
    "AWS_CONFIG_FILE": os.devnull,
    "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
    "AWS_EC2_METADATA_DISABLED": "true",
}

DUMP_ENVIRONMENT = script(
    """
    import json, os, sys, tempfile
    import pandas  # from the venv, without PYTHONPATH
    out = os.environ.get("SM_MODEL_DIR") or os.environ["OUT"]
    for folder in (os.path.expanduser("~"), tempfile.gettempdir()):
        with open(os.path.join(folder, "scratch.txt"), "w") as f:
            f.write("the job may write here")
    seen = {"env": dict(os.environ), "sys_path": sys.path, "cwd": os.getcwd(), "pandas": pandas.__file__,
            "home": os.path.expanduser("~"), "tmp": tempfile.gettempdir()}
    with open(os.path.join(out, "seen.json"), "w") as f:
        json.dump(seen, f)
    """
)


@pytest.fixture
def host_environment(monkeypatch) -> dict[str, str]:
    """This process's environment is only PATH, the host variables above and the secrets."""
    path = os.environ["PATH"]
    for key in list(os.environ):
        monkeypatch.delenv(key)
    for key, value in {"PATH": path, "HOME": str(Path.home()), **HOST, **SECRETS}.items():
        monkeypatch.setenv(key, value)
    return dict(os.environ)


def expected_keys(*extra: str) -> set[str]:
    import site

    user_site = site.ENABLE_USER_SITE and site.getusersitepackages() in sys.path
    return {"PATH", "HOME", "TMPDIR", *HOST, *CONTAINER, *extra} | ({"PYTHONUSERBASE"} if user_site else set())


def assert_isolated(seen: dict, extra: set[str]) -> None:
    env = seen["env"]
    leaked = sorted(k for k, v in SECRETS.items() if env.get(k) is not None or any(v in x for x in env.values()))
    assert leaked in ([], ["PYTHONPATH"]), f"host variables reached the job: {leaked}"
    assert SECRETS["PYTHONPATH"] not in env.get("PYTHONPATH", "")
    assert set(env) - {"PYTHONPATH"} == expected_keys(*extra)
    assert {k: env[k] for k in (*HOST, *CONTAINER)} == {**HOST, **CONTAINER}
    assert env["PATH"].split(os.pathsep) == [str(Path(sys.executable).parent), *os.environ["PATH"].split(os.pathsep)]
    # HOME and TMPDIR are the job's own (fresh, private) folders, not the host's: removed after the job.
    assert (env["HOME"], env["TMPDIR"]) == (seen["home"], seen["tmp"])
    assert env["HOME"] != str(Path.home()) and Path(env["HOME"]).parent == Path(env["TMPDIR"]).parent
    assert not Path(env["HOME"]).parent.exists()
    # The packages come from this interpreter's environment, with no PYTHONPATH from the host.
    assert Path(seen["pandas"]).is_relative_to(sys.prefix)
    assert "" not in seen["sys_path"]


def test_a_processing_job_gets_an_allow_listed_environment(store, tmp_path, host_environment, opt_ml_mode):
    work = tmp_path / "work" / "Preprocess"
    code_uri = "s3://mlops-local/mlops/code/dump.py"
    store.put_bytes(code_uri, DUMP_ENVIRONMENT.encode())
    request = processing_request(
        inputs=[processing_input("code", code_uri, "/opt/ml/processing/input/code")],
        outputs={"report": "/opt/ml/processing/report"},
        entrypoint=["python3", "/opt/ml/processing/input/code/dump.py"],
        args=[],
    )
    request["Environment"] = {
        "OUT": "/opt/ml/processing/report",
        "MY_SETTING": "from the request",
        "TZ": "Europe/Paris",
    }
    result = run_processing_job("Preprocess", request, store, work, tmp_path / "p.log")
    assert result.status == "Completed", result.failure_reason

    seen = json.loads(store.get_bytes(f"{EXEC}/Preprocess/output/report/seen.json"))
    env = seen["env"]
    ml = seen_ml(opt_ml_mode, work)
    assert (env["MY_SETTING"], env["OUT"]) == ("from the request", f"{ml}/processing/report")
    assert env["TZ"] == "Europe/Paris"  # the request's Environment overrides the host's
    seen["env"] = {**env, "TZ": HOST["TZ"]}
    assert_isolated(seen, {"OUT", "MY_SETTING"})
    assert "PYTHONPATH" not in env
    # python <script> puts the script's folder first, not the working directory (work_dir).
    assert seen["sys_path"][0] == f"{ml}/processing/input/code"
    assert seen["cwd"] == str(work) and str(work) not in seen["sys_path"]


def test_a_training_job_gets_an_allow_listed_environment(store, tmp_path, host_environment, opt_ml_mode):
    put_training_data(store)
    put_sourcedir(store, {"train.py": DUMP_ENVIRONMENT})
    request = training_request({"training": TRAIN_URI}, environment={"MY_SETTING": "from the request"})
    result = train(store, tmp_path, request)
    assert result.status == "Completed", result.failure_reason

    seen = json.loads(members(store, result.outputs["S3ModelArtifacts"])["seen.json"])
    env = seen["env"]
    assert env["MY_SETTING"] == "from the request"
    sm = {k for k in env if k.startswith("SM_")}
    assert {"SM_MODEL_DIR", "SM_CHANNEL_TRAINING", "SM_HPS", "SM_TRAINING_ENV"} <= sm
    assert env["PYTHONPATH"] == seen["cwd"]  # the code folder only, not the parent's PYTHONPATH
    # What the image, the platform and the toolkit set besides SM_* (tests/test_training_contract.py).
    contract = {
        "SAGEMAKER_TRAINING_MODULE",
        "TRAINING_JOB_NAME",
        "SAGEMAKER_JOB_NAME",
        "CURRENT_HOST",
        "SAGEMAKER_REGION",
    }
    assert_isolated(seen, {"MY_SETTING", *sm, *contract})
