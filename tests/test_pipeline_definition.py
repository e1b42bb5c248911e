"""The SDK-built pipeline definition: offline, deterministic, the recipe's step graph."""

import json
import shutil
import socket
from pathlib import Path

import pytest

from mlops_dagster.resources.object_store import LocalObjectStore
from mlops_dagster.sagemaker.definition import definition_sha256, step_graph_mermaid
from mlops_dagster.sagemaker.offline import LocalModeCallError, local_boto_session
from mlops_dagster.sagemaker.pipeline_builder import PipelineSpec, build_pipeline
from mlops_dagster.sagemaker.training_code import TRAINING_DIR, code_version

ROLE = "arn:aws:iam::000000000000:role/mlops-local-execution-role"


def _spec(**kw) -> PipelineSpec:
    return PipelineSpec(name="mlops-pipeline", bucket="mlops-local", prefix="mlops", region="us-east-1", role_arn=ROLE, **kw)


def _build(root: Path, **kw) -> str:
    store = LocalObjectStore(root=str(root))
    return build_pipeline(_spec(**kw), local_boto_session(store, "mlops-local", "us-east-1")).definition()


@pytest.fixture
def no_sockets(monkeypatch):
    """Any attempt to open a network connection fails the test."""

    def refuse(self, address):
        raise AssertionError(f"network connection attempted to {address!r}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)


def test_definition_is_byte_identical_across_builds(tmp_path, no_sockets):
    first = _build(tmp_path / "a")
    second = _build(tmp_path / "b")
    assert first == second
    assert definition_sha256(first) == definition_sha256(second)


def test_definition_has_the_recipe_steps_and_parameters(tmp_path, no_sockets):
    doc = json.loads(_build(tmp_path / "s3"))
    assert [p["Name"] for p in doc["Parameters"]] == [
        "InputData", "MseThreshold", "TrainInstanceType", "ProcessingInstanceType", "ModelApprovalStatus",
        "MaxModelBytes",
    ]  # fmt: skip
    assert doc["Parameters"][-1] == {"Name": "MaxModelBytes", "Type": "Integer", "DefaultValue": 1 << 30}
    steps = {s["Name"]: s for s in doc["Steps"]}
    assert [steps[n]["Type"] for n in ("Preprocess", "Train", "Evaluate", "CheckQuality")] == [
        "Processing", "Training", "Processing", "Condition",
    ]  # fmt: skip
    condition = steps["CheckQuality"]["Arguments"]
    assert condition["Conditions"][0]["Type"] == "LessThanOrEqualTo"
    assert condition["Conditions"][0]["RightValue"] == {"Get": "Parameters.MseThreshold"}
    assert [s["Type"] for s in condition["ElseSteps"]] == ["Fail"]
    # Good enough, then small enough: CheckModelSize registers only a model an endpoint can load.
    [size_check] = condition["IfSteps"]
    assert size_check["Name"] == "CheckModelSize" and size_check["Type"] == "Condition"
    size_condition = size_check["Arguments"]["Conditions"][0]
    assert size_condition["Type"] == "LessThanOrEqualTo"
    assert size_condition["LeftValue"]["Std:JsonGet"]["Path"] == "model_size_bytes"
    assert size_condition["RightValue"] == {"Get": "Parameters.MaxModelBytes"}
    assert [s["Type"] for s in size_check["Arguments"]["IfSteps"]] == ["RegisterModel"]
    assert size_check["Arguments"]["IfSteps"][0]["Arguments"]["ModelPackageGroupName"] == "mlops-pipeline-models"
    assert [s["Name"] for s in size_check["Arguments"]["ElseSteps"]] == ["ModelTooLarge"]
    train = steps["Train"]["Arguments"]
    assert "sagemaker-scikit-learn" in train["AlgorithmSpecification"]["TrainingImage"]
    assert train["AlgorithmSpecification"]["TrainingImage"].endswith(":1.2-1-cpu-py3")
    assert json.loads(train["HyperParameters"]["sagemaker_program"]) == "train.py"
    assert json.loads(train["HyperParameters"]["target"]) == "medv"
    assert steps["Evaluate"]["PropertyFiles"] == [
        {"PropertyFileName": "EvaluationReport", "OutputName": "evaluation", "FilePath": "evaluation.json"}
    ]


def test_sdk_uploads_land_in_the_local_store(tmp_path, no_sockets):
    doc = json.loads(_build(tmp_path / "s3"))
    train = next(s for s in doc["Steps"] if s["Name"] == "Train")["Arguments"]
    submit = json.loads(train["HyperParameters"]["sagemaker_submit_directory"])
    store = LocalObjectStore(root=str(tmp_path / "s3"))
    assert submit.startswith("s3://mlops-local/mlops/mlops-pipeline/code/")
    assert store.head(submit) is not None, f"{submit} was not written to the local store"
    code_uris = [
        i["S3Input"]["S3Uri"]
        for s in doc["Steps"] if s["Type"] == "Processing"
        for i in s["Arguments"]["ProcessingInputs"] if i["InputName"] == "code"
    ]  # fmt: skip
    assert len(code_uris) == 2 and all(store.head(uri) is not None for uri in code_uris)


def test_telemetry_is_never_sent(tmp_path, monkeypatch):
    import sagemaker.telemetry.telemetry_logging as telemetry

    calls = []
    monkeypatch.setattr(telemetry, "_send_telemetry_request", lambda *a, **k: calls.append(a))
    _build(tmp_path / "s3")
    assert calls == []


def test_local_session_refuses_calls_it_does_not_serve(tmp_path):
    session = local_boto_session(LocalObjectStore(root=str(tmp_path)), "mlops-local", "us-east-1")
    with pytest.raises(LocalModeCallError, match="sts:GetCallerIdentity"):
        session.client("sts").get_caller_identity()
    with pytest.raises(LocalModeCallError, match="sagemaker:ListPipelines"):
        session.client("sagemaker").list_pipelines()


def test_changed_training_code_changes_the_definition_and_code_version(tmp_path):
    code = tmp_path / "training"
    shutil.copytree(TRAINING_DIR, code, ignore=shutil.ignore_patterns("__pycache__"))
    before = _build(tmp_path / "a", training_dir=str(code))
    version_before = code_version(code)
    (code / "train.py").write_text((code / "train.py").read_text() + "\n# a change\n")
    after = _build(tmp_path / "b", training_dir=str(code))
    assert definition_sha256(before) != definition_sha256(after)
    assert code_version(code) != version_before


def test_missing_training_script_is_named(tmp_path):
    (tmp_path / "partial").mkdir()
    (tmp_path / "partial" / "preprocess.py").write_text("print('ok')\n")
    with pytest.raises(FileNotFoundError, match=r"partial/evaluate.py does not exist"):
        _build(tmp_path / "s3", training_dir=str(tmp_path / "partial"))


def test_bad_approval_status_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="approval_status 'Maybe'"):
        _build(tmp_path / "s3", approval_status="Maybe")


def test_step_graph_mermaid_lists_edges_and_branches(tmp_path):
    graph = step_graph_mermaid(_build(tmp_path / "s3"))
    assert graph.startswith("graph LR")
    for edge in (
        "Preprocess --> Train",
        "Train --> Evaluate",
        "Evaluate --> CheckQuality",
        "CheckQuality -- true --> CheckModelSize",
        "CheckQuality -- false --> MseAboveThreshold",
        "CheckModelSize -- true --> RegisterModel_RegisterModel",
        "CheckModelSize -- false --> ModelTooLarge",
    ):
        assert edge in graph


def test_definition_does_not_depend_on_checkout_location_or_caches(tmp_path):
    one, two = tmp_path / "clone-1" / "training", tmp_path / "clone-2" / "training"
    for target in (one, two):
        shutil.copytree(TRAINING_DIR, target, ignore=shutil.ignore_patterns("__pycache__", "*.toml"))
    (two / "__pycache__").mkdir()
    (two / "__pycache__" / "train.cpython-311.pyc").write_bytes(b"\x00stale")
    (two / "ruff.toml").write_text("line-length = 1\n")
    assert _build(tmp_path / "a", training_dir=str(one)) == _build(tmp_path / "b", training_dir=str(two))


def test_recipe_train_py_can_be_the_entry_point(tmp_path):
    recipe = Path(__file__).parent / "fixtures" / "recipe_train.py"
    doc = json.loads(_build(tmp_path / "s3", entry_point=str(recipe), pass_hyperparameters=False))
    hyperparameters = next(s for s in doc["Steps"] if s["Name"] == "Train")["Arguments"]["HyperParameters"]
    assert json.loads(hyperparameters["sagemaker_program"]) == "recipe_train.py"
    assert not any(k for k in hyperparameters if not k.startswith("sagemaker_"))


def test_the_sdk_validates_a_config_once_however_many_sessions_load_it(monkeypatch, no_sockets):
    # Every sagemaker.Session loads sdk_config.yaml and the SDK validated it against its schema
    # each time (0.4 s a session); the same config is valid the second time too.
    import boto3
    import jsonschema
    import sagemaker

    validations: list[dict] = []
    validate = jsonschema.validate
    monkeypatch.setattr(
        jsonschema, "validate", lambda config, *a, **k: validations.append(config) or validate(config, *a, **k)
    )
    boto = boto3.Session(aws_access_key_id="local", aws_secret_access_key="local", region_name="us-east-1")
    for _ in range(3):
        session = sagemaker.Session(boto_session=boto, default_bucket="mlops-local")
    assert session.sagemaker_config["SchemaVersion"] == "1.0"  # the project's config file, loaded
    assert len(validations) <= 1, f"{len(validations)} validations for 3 sessions"
    with pytest.raises(jsonschema.ValidationError):  # a config the SDK would refuse is still refused
        sagemaker.config.config.validate_sagemaker_config({"SchemaVersion": "1.0", "SageMaker": {"Nope": 1}})
