"""The SDK-built pipeline definition: offline, deterministic, the recipe's step graph."""

import json
import shutil
import socket
import subprocess
import sys
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


def test_processing_and_training_steps_are_cached_unless_turned_off(tmp_path, no_sockets):
    def caches(doc: dict) -> dict:
        steps = {s["Name"]: s for s in doc["Steps"]}
        condition = steps["CheckQuality"]["Arguments"]
        nested = [*condition["IfSteps"], *condition["ElseSteps"], *condition["IfSteps"][0]["Arguments"]["IfSteps"]]
        return {s["Name"]: s.get("CacheConfig") for s in [*doc["Steps"], *nested]}

    cached = caches(json.loads(_build(tmp_path / "on")))
    assert cached == {
        "Preprocess": {"Enabled": True, "ExpireAfter": "P30D"},
        "Train": {"Enabled": True, "ExpireAfter": "P30D"},
        "Evaluate": {"Enabled": True, "ExpireAfter": "P30D"},
        "CheckQuality": None, "CheckModelSize": None, "MseAboveThreshold": None, "RegisterModel-RegisterModel": None,
    }  # fmt: skip
    assert set(caches(json.loads(_build(tmp_path / "off", step_cache_expire_after=None))).values()) == {None}
    sharded = json.loads(_build(tmp_path / "sharded", processing_instance_count=2, step_cache_expire_after="PT1H"))
    assert {s["Name"]: s.get("CacheConfig") for s in sharded["Steps"][:2]} == {
        "Statistics": {"Enabled": True, "ExpireAfter": "PT1H"},
        "Preprocess": {"Enabled": True, "ExpireAfter": "PT1H"},
    }


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


def test_the_sdk_parses_the_endpoint_list_once_for_its_sessions_and_image_uris(monkeypatch, no_sockets):
    import boto3
    import botocore.loaders
    import sagemaker
    from sagemaker import image_uris

    parsed: list[str] = []
    load_file = botocore.loaders.JSONFileLoader.load_file
    monkeypatch.setattr(
        botocore.loaders.JSONFileLoader,
        "load_file",
        lambda self, path: parsed.append(path) or load_file(self, path),  # type: ignore[func-returns-value]
    )

    boto = boto3.Session(aws_access_key_id="local", aws_secret_access_key="local", region_name="us-west-2")
    for _ in range(2):
        sagemaker.Session(boto_session=boto, default_bucket="mlops-local")
    uris = {image_uris.retrieve("sklearn", "us-west-2", "1.2-1", instance_type="ml.m5.large") for _ in range(3)}
    assert uris == {"246618743249.dkr.ecr.us-west-2.amazonaws.com/sagemaker-scikit-learn:1.2-1-cpu-py3"}
    # Before: one parse per session and one per image URI (0.05 s each).
    assert len([p for p in parsed if p.endswith("/endpoints")]) <= 1, parsed
    assert len([p for p in parsed if p.endswith("sagemaker/2017-07-24/service-2")]) <= 1, parsed


def test_the_sdk_validates_a_config_once_however_many_sessions_load_it(monkeypatch, no_sockets):
    # Every sagemaker.Session loads sdk_config.yaml and the SDK validated it against its schema
    # each time (0.065 s each, several per session); the same config is valid the second time too.
    import boto3
    import jsonschema
    import sagemaker

    from mlops_dagster.sagemaker import pipeline_builder

    validations: list[dict] = []
    validate = pipeline_builder._jsonschema_validate
    monkeypatch.setattr(
        pipeline_builder,
        "_jsonschema_validate",
        lambda config, *a, **k: validations.append(config) or validate(config, *a, **k),  # type: ignore[func-returns-value]
    )
    monkeypatch.setattr(pipeline_builder, "_VALIDATED", set())
    boto = boto3.Session(aws_access_key_id="local", aws_secret_access_key="local", region_name="us-east-1")
    for _ in range(3):
        session = sagemaker.Session(boto_session=boto, default_bucket="mlops-local")
    assert session.sagemaker_config["SchemaVersion"] == "1.0"  # the project's config file, loaded
    assert len(validations) == 1, f"{len(validations)} validations for 3 sessions"
    with pytest.raises(jsonschema.ValidationError):  # a config the SDK would refuse is still refused
        sagemaker.config.config.validate_sagemaker_config({"SchemaVersion": "1.0", "SageMaker": {"Nope": 1}})
    with pytest.raises(jsonschema.ValidationError):  # and other schemas are jsonschema's business
        jsonschema.validate({"a": 1}, {"type": "object", "properties": {"a": {"type": "string"}}})
    assert len(validations) == 3


_IMPORT_PROBE = """
import json, sys, types
import jsonschema
package = types.ModuleType('mlops_dagster')
package.__path__ = [sys.argv[1]]
sys.modules['mlops_dagster'] = package  # the builder alone, not the code location
calls = []
validate = jsonschema.validate
jsonschema.validate = lambda *a, **k: calls.append(1) or validate(*a, **k)
from mlops_dagster.sagemaker import pipeline_builder
print(json.dumps({'validations': len(calls), 'sagemaker': 'sagemaker.jumpstart.constants' in sys.modules}))
"""


def test_importing_the_sdk_validates_its_config_once():
    # `import sagemaker` makes a JumpStart Session, which validated the config four times.
    import mlops_dagster

    done = subprocess.run(
        [sys.executable, "-P", "-c", _IMPORT_PROBE, str(Path(mlops_dagster.__file__).parent)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert json.loads(done.stdout) == {"validations": 1, "sagemaker": True}
