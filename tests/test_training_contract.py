"""The container contract of local jobs, compared with SageMaker's own components.

Training: the real sagemaker-training toolkit (what the scikit-learn framework container runs, from
the package index, in its own venv: it pins packages of its own and builds a C extension) reads a
local job's /opt/ml folder and computes the environment and arguments it would give the script;
the script of the local job must have seen exactly those. Processing: the config files and the
environment the developer guide documents for processing containers.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from test_local_jobs import (
    EXEC,
    IMAGE,
    ROLE,
    TRAIN_URI,
    VALIDATION_URI,
    members,
    opt_ml_mode,  # noqa: F401 (a fixture)
    processing_input,
    processing_request,
    put_sourcedir,
    put_training_data,
    train,
    training_request,
)

from mlops_dagster.resources.object_store import LocalObjectStore
from mlops_dagster.sagemaker.local import opt_ml
from mlops_dagster.sagemaker.local.jobs import run_processing_job

ARN_PREFIX = "arn:aws:sagemaker:us-east-1:000000000000"
TOOLKIT = "sagemaker-training"
TOOLKIT_VERSION = "5.1.4"
# pip's words for "the index could not be reached" (then the test skips; any other failure fails it).
OFFLINE_MARKERS = (
    "No matching distribution found",
    "Could not find a version that satisfies",
    "NewConnectionError",
    "Max retries exceeded",
    "Temporary failure in name resolution",
    "Network is unreachable",
    # uv's
    "Failed to fetch",
    "dns error",
)
# What sagemaker_training.environment.Environment() sets in its own process (the script inherits it).
TOOLKIT_SETS = ("SAGEMAKER_JOB_NAME", "CURRENT_HOST", "SAGEMAKER_REGION")
PROBE = textwrap.dedent(
    """
    import json, os, sys
    before = dict(os.environ)
    from sagemaker_training import environment
    env = environment.Environment()
    print(json.dumps({
        "base_dir": environment.base_dir,
        "set": {k: v for k, v in os.environ.items() if before.get(k) != v},
        "env_vars": env.to_env_vars(),
        "args": env.to_cmd_args(),
    }))
    """
)


@pytest.fixture
def store(mlops_home: Path) -> LocalObjectStore:
    return LocalObjectStore(root=str(mlops_home / "s3"))


def _toolkit_venv() -> Path:
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "mlops-dagster" / f"sagemaker-training-{TOOLKIT_VERSION}-venv"


@pytest.fixture(scope="session")
def toolkit_python() -> Path:
    """The python of a venv holding the real toolkit: installed once, then reused from the cache."""
    venv = _toolkit_venv()
    python = venv / "bin" / "python"
    venv.parent.mkdir(parents=True, exist_ok=True)
    with open(venv.parent / f"{venv.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one installer at a time (parallel test workers)
        if not _toolkit_installed(python):
            _install_toolkit(venv, python)
    return python


def _toolkit_installed(python: Path) -> bool:
    """The cached venv works and holds the pinned version (a moved or upgraded python breaks a venv)."""
    if not python.exists():
        return False
    check = f"import importlib.metadata as m, sagemaker_training; print(m.version({TOOLKIT!r}))"
    proc = subprocess.run([str(python), "-c", check], capture_output=True, text=True, timeout=120)
    return proc.returncode == 0 and proc.stdout.strip() == TOOLKIT_VERSION


def _install_toolkit(venv: Path, python: Path) -> None:
    shutil.rmtree(venv, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    # make install puts uv beside this python (constraints.txt pins it); it installs and builds the
    # toolkit several times faster than pip (162 s with pip on an empty cache, under load). It
    # compiles the bytecode as pip does (PYTHONDONTWRITEBYTECODE may keep the probes from it).
    uv = Path(sys.executable).with_name("uv")
    if uv.exists():
        install = [str(uv), "pip", "install", "--quiet", "--compile-bytecode", "--python", str(python), f"{TOOLKIT}=={TOOLKIT_VERSION}"]
    else:
        install = [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", f"{TOOLKIT}=={TOOLKIT_VERSION}"]
    pip = subprocess.run(install, capture_output=True, text=True, timeout=900)
    if pip.returncode == 0:
        return
    shutil.rmtree(venv, ignore_errors=True)
    output = (pip.stdout + pip.stderr).strip()
    if any(text in output for text in OFFLINE_MARKERS):
        last = output.splitlines()[-1]
        pytest.skip(f"{TOOLKIT}=={TOOLKIT_VERSION} cannot be installed, the package index is unreachable: {last}")
    pytest.fail(f"{' '.join(install[:3])} ... {TOOLKIT}=={TOOLKIT_VERSION} into {venv} failed:\n{output[-3000:]}")


def run_toolkit(python: Path, ml: Path, container_env: dict[str, str], home: Path, mode: str) -> dict:
    """Environment(), to_env_vars() and to_cmd_args() of the real toolkit, on the job's /opt/ml folder.

    As the job saw it: bound on /opt/ml in a mount namespace (the toolkit's default base dir), or
    at its own path (SAGEMAKER_BASE_DIR).
    """
    home.mkdir(parents=True, exist_ok=True)
    env = {**container_env, "HOME": str(home), "TMPDIR": str(home)}
    command = [str(python), "-c", PROBE]
    if mode == "namespace":
        stage = home / "stage"
        stage.mkdir()
        command = opt_ml.launcher_command(str(ml), str(stage), "/", command)
        base_dir = "/opt/ml"
    else:
        env["SAGEMAKER_BASE_DIR"] = base_dir = str(ml)
    proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    answer = json.loads(proc.stdout.strip().splitlines()[-1])
    assert answer["base_dir"] == base_dir  # the toolkit read this job's folder
    return answer


def differences(expected: dict[str, str], actual: dict[str, str]) -> dict[str, tuple]:
    """name -> (toolkit's, local's) for every variable that differs (None: not set)."""
    return {
        k: (expected.get(k), actual.get(k)) for k in sorted({*expected, *actual}) if expected.get(k) != actual.get(k)
    }


DUMP = """
import json, os, sys
with open(os.path.join(os.environ["SM_MODEL_DIR"], "seen.json"), "w") as f:
    json.dump({"argv": sys.argv, "env": dict(os.environ)}, f)
"""

HYPERPARAMETERS = {
    # the user's, as the SDK JSON-encodes them
    "target": '"medv"',
    "n_estimators": "100",
    "flag": "true",
    "k": "3",
    "ratio": "0.5",
    "mapping": '{"b": 2, "a": "x"}',
    "plain": "not json",
    # the framework's: the SKLearn estimator's, and one the toolkit passes on as a framework parameter
    "sagemaker_job_name": '"pipelines-exec1-Train-abc"',
    "sagemaker_estimator_class_name": '"SKLearn"',
}


def run_contract_job(store, tmp_path: Path, hyperparameters: dict[str, str]) -> tuple[Path, dict]:
    put_training_data(store)
    put_sourcedir(store, {"train.py": DUMP})
    request = training_request(
        {"training": TRAIN_URI, "validation": f"{VALIDATION_URI}/validation.csv"},
        hyperparameters,
        environment={"MY_SETTING": "x"},
    )
    name = "pipelines-exec1-Train-abc"
    result = train(store, tmp_path, request, name, job_arn=f"{ARN_PREFIX}:training-job/{name}")
    assert result.status == "Completed", result.failure_reason
    seen = json.loads(members(store, result.outputs["S3ModelArtifacts"])["seen.json"])
    return tmp_path / "work" / name / "opt" / "ml", seen


@pytest.mark.parametrize("hyperparameters", [HYPERPARAMETERS, {}], ids=["hyperparameters", "none"])
def test_training_environment_and_arguments_are_the_toolkits(
    store,
    tmp_path,
    toolkit_python,
    hyperparameters,
    opt_ml_mode,  # noqa: F811 (the fixture imported above)
):
    ml, seen = run_contract_job(store, tmp_path, hyperparameters)
    job_env = seen["env"]
    # The toolkit starts in the container's environment: everything but what it sets itself.
    container_env = {
        k: v for k, v in job_env.items() if not k.startswith("SM_") and k not in (*TOOLKIT_SETS, "PYTHONPATH")
    }
    toolkit = run_toolkit(toolkit_python, ml, container_env, tmp_path / "toolkit-home", opt_ml_mode)

    local_sm = {k: v for k, v in job_env.items() if k.startswith("SM_")}
    assert differences(toolkit["env_vars"], local_sm) == {}
    assert differences(toolkit["set"], {k: job_env.get(k) for k in toolkit["set"]}) == {}
    assert seen["argv"][1:] == toolkit["args"]
    # The platform's and the image's variables the toolkit reads (it would not notice them missing).
    assert job_env["TRAINING_JOB_NAME"] == "pipelines-exec1-Train-abc"
    assert job_env["TRAINING_JOB_ARN"] == f"{ARN_PREFIX}:training-job/pipelines-exec1-Train-abc"
    assert job_env["SAGEMAKER_TRAINING_MODULE"] == "sagemaker_sklearn_container.training:main"
    assert json.loads(job_env["SM_TRAINING_ENV"])["job_name"] == "pipelines-exec1-Train-abc"
    assert job_env["SM_MODEL_DIR"] == ("/opt/ml/model" if opt_ml_mode == "namespace" else f"{ml}/model")


def test_training_config_files_are_sagemakers(store, tmp_path):
    ml, seen = run_contract_job(store, tmp_path, HYPERPARAMETERS)
    config = ml / "input" / "config"
    assert json.loads((config / "resourceconfig.json").read_text()) == {
        "current_host": "algo-1",
        "current_instance_type": "ml.m5.large",
        "current_group_name": "homogeneousCluster",
        "hosts": ["algo-1"],
        "instance_groups": [
            {"instance_group_name": "homogeneousCluster", "instance_type": "ml.m5.large", "hosts": ["algo-1"]}
        ],
        "network_interface_name": "lo",
    }
    request_hps = training_request({}, HYPERPARAMETERS)["HyperParameters"]
    assert json.loads((config / "hyperparameters.json").read_text()) == request_hps  # the strings as given
    channel = {"TrainingInputMode": "File", "S3DistributionType": "FullyReplicated", "RecordWrapperType": "None"}
    assert json.loads((config / "inputdataconfig.json").read_text()) == {
        "training": {**channel, "ContentType": "text/csv"},
        "validation": {**channel, "ContentType": "text/csv"},
    }
    # JSON values in the toolkit's format: sorted keys, no spaces.
    env = seen["env"]
    assert env["SM_HP_MAPPING"] == '{"a":"x","b":2}'
    assert env["SM_CHANNELS"] == '["training","validation"]'
    for removed in ("SM_HYPERPARAMETERS", "SM_IS_MASTER", "SM_JOB_NAME", "SM_MASTER_HOSTNAME"):
        assert removed not in env


# --------------------------------------------------------------------------- processing

# The developer guide's example of /opt/ml/config/processingjobconfig.json, as key paths.
DOCUMENTED_PROCESSING_KEYS = {
    "ProcessingJobArn",
    "ProcessingJobName",
    "AppSpecification",
    "AppSpecification.ImageUri",
    "AppSpecification.ContainerEntrypoint",
    "AppSpecification.ContainerArguments",
    "Environment",
    "ProcessingInputs",
    "ProcessingOutputConfig",
    "ProcessingOutputConfig.Outputs",
    "ProcessingOutputConfig.KmsKeyId",
    "ProcessingResources",
    "ProcessingResources.ClusterConfig",
    "ProcessingResources.ClusterConfig.InstanceCount",
    "ProcessingResources.ClusterConfig.InstanceType",
    "ProcessingResources.ClusterConfig.VolumeSizeInGB",
    "ProcessingResources.ClusterConfig.VolumeKmsKeyId",
    "RoleArn",
    "StoppingCondition",
    "StoppingCondition.MaxRuntimeInSeconds",
}
DUMP_PROCESSING = """
import json, os, sys
out = "/opt/ml/processing/report"
out = os.environ.get("OUT", out)
with open(os.path.join(out, "seen.json"), "w") as f:
    json.dump({"env": dict(os.environ)}, f)
"""


def key_paths(value: dict, prefix: str = "") -> set[str]:
    paths = set()
    for key, item in value.items():
        paths.add(prefix + key)
        if isinstance(item, dict) and key != "Environment":
            paths |= key_paths(item, f"{prefix}{key}.")
    return paths


def test_processing_config_files_are_the_documented_ones(store, tmp_path):
    code_uri = "s3://mlops-local/mlops/code/dump.py"
    store.put_bytes(code_uri, DUMP_PROCESSING.encode())
    store.put_bytes(f"{TRAIN_URI}/train.csv", b"a\n1\n")
    request = processing_request(
        inputs=[
            processing_input("code", code_uri, "/opt/ml/processing/input/code"),
            processing_input("data", TRAIN_URI, "/opt/ml/processing/input/data"),
        ],
        outputs={"report": "/opt/ml/processing/report"},
        entrypoint=["python3", "/opt/ml/processing/input/code/dump.py"],
        args=[],
    )
    request["Environment"] = {"OUT": "/opt/ml/processing/report", "KEY": "VALUE"}
    request["StoppingCondition"] = {"MaxRuntimeInSeconds": 86400}
    work = tmp_path / "work" / "Preprocess"
    arn = f"{ARN_PREFIX}:processing-job/preprocess"
    result = run_processing_job("Preprocess", request, store, work, tmp_path / "p.log", job_arn=arn)
    assert result.status == "Completed", result.failure_reason

    config_dir = work / "opt" / "ml" / "config"
    assert json.loads((config_dir / "resourceconfig.json").read_text()) == {
        "current_host": "algo-1",
        "hosts": ["algo-1"],
    }
    config = json.loads((config_dir / "processingjobconfig.json").read_text())
    assert key_paths(config) == DOCUMENTED_PROCESSING_KEYS
    assert (config["ProcessingJobArn"], config["ProcessingJobName"]) == (arn, "Preprocess")
    assert config["AppSpecification"] == {
        "ImageUri": IMAGE,
        "ContainerEntrypoint": ["python3", "/opt/ml/processing/input/code/dump.py"],
        "ContainerArguments": [],
    }
    assert config["Environment"] == request["Environment"]  # the container's paths, as requested
    assert config["ProcessingInputs"][1] == {
        "InputName": "data",
        "AppManaged": False,
        "S3Input": {
            "LocalPath": "/opt/ml/processing/input/data",
            "S3Uri": TRAIN_URI,
            "S3DataDistributionType": "FullyReplicated",
            "S3DataType": "S3Prefix",
            "S3InputMode": "File",
            "S3CompressionType": "None",
            "S3DownloadMode": "StartOfJob",
        },
    }
    assert config["ProcessingOutputConfig"] == {
        "Outputs": [
            {
                "OutputName": "report",
                "AppManaged": False,
                "S3Output": {
                    "LocalPath": "/opt/ml/processing/report",
                    "S3Uri": f"{EXEC}/Preprocess/output/report",
                    "S3UploadMode": "EndOfJob",
                },
            }
        ],
        "KmsKeyId": None,
    }
    assert config["ProcessingResources"] == {
        "ClusterConfig": {
            "InstanceCount": 1,
            "InstanceType": "ml.m5.large",
            "VolumeSizeInGB": 30,
            "VolumeKmsKeyId": None,
        }
    }
    assert (config["RoleArn"], config["StoppingCondition"]) == (ROLE, {"MaxRuntimeInSeconds": 86400})

    # The environment: the request's, and none of the training toolkit's variables.
    env = json.loads(store.get_bytes(f"{EXEC}/Preprocess/output/report/seen.json"))["env"]
    assert env["KEY"] == "VALUE"
    toolkit_like = sorted(k for k in env if k.startswith("SM_") or k in (*TOOLKIT_SETS, "TRAINING_JOB_NAME"))
    assert toolkit_like == []
