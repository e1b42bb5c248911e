"""The pipeline definition cache: a hit skips the SDK build and still upserts what differs; every
input of the build is in the key; the cached bytes are the SDK's."""

import hashlib
import json
import shutil
from pathlib import Path

import pytest
from helpers import latest_metadata, materialize_assets

from mlops_dagster.assets.pipeline import package_group_name
from mlops_dagster.resources.object_store import LocalObjectStore
from mlops_dagster.sagemaker import definition_cache
from mlops_dagster.sagemaker.definition_cache import DefinitionCache, cache_key, code_uris
from mlops_dagster.sagemaker.offline import local_boto_session
from mlops_dagster.sagemaker.training_code import TRAINING_DIR

pytestmark = pytest.mark.own_definition_cache  # asserts misses and hits from an empty cache

ROLE = "arn:aws:iam::000000000000:role/mlops-local-execution-role"


def _fields(training_dir: Path, **changes) -> dict:
    fields = {
        "name": "mlops-pipeline", "bucket": "mlops-local", "prefix": "mlops", "region": "us-east-1",
        "role_arn": ROLE, "target": "medv", "mse_threshold": 25.0, "train_instance_type": "ml.m5.large",
        "processing_instance_type": "ml.m5.large", "approval_status": "PendingManualApproval",
        "hyperparameters": {"n_estimators": 100, "min_samples_leaf": 1, "random_state": 42},
        "training_dir": str(training_dir), "entry_point": "train.py", "pass_hyperparameters": True,
    }  # fmt: skip
    return {**fields, **changes}


@pytest.fixture
def code(tmp_path: Path) -> Path:
    target = tmp_path / "training"
    shutil.copytree(TRAINING_DIR, target, ignore=shutil.ignore_patterns("__pycache__"))
    return target


CHANGES = {
    "name": "other-pipeline", "bucket": "other-bucket", "prefix": "other", "region": "eu-west-1",
    "role_arn": "arn:aws:iam::123456789012:role/other", "target": "price", "mse_threshold": 24.0,
    "train_instance_type": "ml.c5.xlarge", "processing_instance_type": "ml.c5.xlarge",
    "approval_status": "Approved", "hyperparameters": {"n_estimators": 10, "min_samples_leaf": 1, "random_state": 42},
    "entry_point": "other.py", "pass_hyperparameters": False,
}  # fmt: skip


def test_every_spec_field_is_in_the_key(code):
    base = cache_key(_fields(code))
    assert cache_key(_fields(code)) == base  # deterministic
    assert set(CHANGES) == set(_fields(code)) - {"training_dir"}  # no field left out of this test
    for name, value in CHANGES.items():
        assert cache_key(_fields(code, **{name: value})) != base, name


def test_training_code_is_in_the_key(code, tmp_path):
    base = cache_key(_fields(code))
    (code / "train.py").write_text((code / "train.py").read_text() + "\n# changed\n")
    changed = cache_key(_fields(code))
    assert changed != base
    (code / "helper.py").write_text("X = 1\n")  # a new script is staged too
    assert cache_key(_fields(code)) != changed
    outside = tmp_path / "recipe" / "train.py"
    outside.parent.mkdir()
    outside.write_text("print(1)\n")
    with_outside = cache_key(_fields(code, entry_point=str(outside)))
    outside.write_text("print(2)\n")
    assert cache_key(_fields(code, entry_point=str(outside))) != with_outside


def test_builder_code_and_sdk_version_are_in_the_key(code, monkeypatch):
    base = cache_key(_fields(code))
    real_digest = definition_cache._file_digest
    monkeypatch.setattr(
        definition_cache, "_file_digest", lambda p: "x" if p.name == "pipeline_builder.py" else real_digest(p)
    )
    assert cache_key(_fields(code)) != base
    monkeypatch.setattr(definition_cache, "_file_digest", real_digest)
    real_version = definition_cache.metadata.version
    monkeypatch.setattr(
        definition_cache.metadata, "version", lambda n: "9.9.9" if n == "sagemaker" else real_version(n)
    )
    assert cache_key(_fields(code)) != base


def test_a_damaged_entry_or_blob_is_a_miss(tmp_path):
    cache = DefinitionCache(tmp_path)
    cache.put("k", '{"Steps": []}', {})
    assert cache.get("k") == ('{"Steps": []}', {})
    entry = json.loads((tmp_path / "k.json").read_text())
    (tmp_path / "k.json").write_text(json.dumps({**entry, "definition": '{"Steps": [1]}'}))
    assert cache.get("k") is None
    (tmp_path / "k.json").write_text("{not json")
    assert cache.get("k") is None
    assert cache.get("absent") is None
    cache.put("k", '{"Steps": []}', {"s3://b/code/x.py": b"print(1)"})
    assert cache.get("k") is None  # the code list does not match the definition's code inputs
    sha = hashlib.sha256(b"print(1)").hexdigest()
    assert cache.blob(sha) == b"print(1)"
    (tmp_path / "blobs" / sha).write_bytes(b"print(2)")
    assert cache.blob(sha) is None


def test_the_cache_is_the_users_unless_configured(monkeypatch, tmp_path):
    monkeypatch.delenv(definition_cache.CACHE_DIR_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert definition_cache.cache_root() == tmp_path / "xdg" / "mlops-dagster" / "pipeline-definitions"
    monkeypatch.setenv(definition_cache.CACHE_DIR_ENV, str(tmp_path / "mine"))
    assert definition_cache.cache_root() == tmp_path / "mine"


def test_code_uris_name_the_uploaded_scripts_and_source_dir(tmp_path):
    from mlops_dagster.sagemaker.pipeline_builder import PipelineSpec, build_pipeline

    store = LocalObjectStore(root=str(tmp_path / "s3"))
    spec = PipelineSpec(name="mlops-pipeline", bucket="mlops-local", prefix="mlops", region="us-east-1", role_arn=ROLE)
    assert spec.model_package_group == package_group_name(spec.name)
    definition = build_pipeline(spec, local_boto_session(store, "mlops-local", "us-east-1")).definition()
    uris = code_uris(definition)
    names = sorted(u.rsplit("/", 1)[-1] for u in uris)
    assert names == ["evaluate.py", "preprocess.py", "sourcedir.tar.gz"]
    assert all(store.head(u) is not None for u in uris)


PIPELINE = ["pipeline_definition"]


def _definition(defs, instance, ops: dict | None = None) -> dict:
    result = materialize_assets(defs, instance, PIPELINE, ops, PIPELINE)
    assert result.success
    return latest_metadata(result, "pipeline_definition")


def test_a_hit_skips_the_build_and_still_upserts_a_differing_stored_pipeline(defs, instance, mlops_home, code):
    ops = {"pipeline_definition": {"training_dir": str(code)}}
    first = _definition(defs, instance, ops)
    assert (first["definition_cache"], first["upsert"]) == ("miss", "created")
    client = defs.resources["sagemaker"].get_client()
    built = client.describe_pipeline(PipelineName="mlops-pipeline")["PipelineDefinition"]

    # Someone changed the stored pipeline: a hit puts ours back, byte for byte.
    doc = json.loads(built)
    doc["Parameters"][1]["DefaultValue"] = 99.0
    client.update_pipeline(PipelineName="mlops-pipeline", PipelineDefinition=json.dumps(doc))
    second = _definition(defs, instance, ops)
    assert (second["definition_cache"], second["upsert"]) == ("hit", "updated")
    assert client.describe_pipeline(PipelineName="mlops-pipeline")["PipelineDefinition"] == built

    # A config change is a new key: built again.
    third = _definition(defs, instance, {"pipeline_definition": {"training_dir": str(code), "mse_threshold": 20}})
    assert (third["definition_cache"], third["upsert"]) == ("miss", "updated")

    # Changed training code: built again, and the job code it uploads is the new one.
    (code / "evaluate.py").write_text((code / "evaluate.py").read_text() + "\n# changed\n")
    fourth = _definition(defs, instance, ops)
    assert (fourth["definition_cache"], fourth["upsert"]) == ("miss", "updated")
    assert fourth["definition_sha256"] != first["definition_sha256"]


def test_a_hit_puts_missing_code_objects_back_and_rebuilds_when_it_cannot(defs, instance, mlops_home, tmp_path):
    first = _definition(defs, instance)
    client = defs.resources["sagemaker"].get_client()
    definition = client.describe_pipeline(PipelineName="mlops-pipeline")["PipelineDefinition"]
    store = defs.resources["store"]
    script = next(u for u in code_uris(definition) if u.endswith("/preprocess.py"))
    original = store.get_bytes(script)
    path = mlops_home / "s3" / script.removeprefix("s3://")

    path.unlink()  # e.g. a new $MLOPS_HOME, or an emptied bucket
    again = _definition(defs, instance)
    assert (again["definition_cache"], again["upsert"]) == ("hit", "unchanged")
    assert store.get_bytes(script) == original

    path.unlink()
    shutil.rmtree(tmp_path / "definition-cache" / "blobs")  # and the cached copy is gone too
    rebuilt = _definition(defs, instance)
    assert (rebuilt["definition_cache"], rebuilt["upsert"]) == ("miss", "unchanged")
    assert rebuilt["definition_sha256"] == first["definition_sha256"]
    assert store.get_bytes(script) == original


def test_a_new_home_reuses_the_users_cache(defs, instance, tmp_path, monkeypatch):
    from dagster import DagsterInstance

    from mlops_dagster import build_definitions
    from mlops_dagster.settings import Settings

    first = _definition(defs, instance)
    other_home = tmp_path / "other-home"
    other_home.mkdir()
    other = build_definitions(Settings.from_env({"MLOPS_HOME": str(other_home)}))
    with DagsterInstance.ephemeral() as other_instance:
        again = _definition(other, other_instance)
    assert (again["definition_cache"], again["upsert"]) == ("hit", "created")
    assert again["definition_sha256"] == first["definition_sha256"]
    definition = other.resources["sagemaker"].get_client().describe_pipeline(PipelineName="mlops-pipeline")
    for uri in code_uris(definition["PipelineDefinition"]):  # the jobs' code is in the new home's store
        assert other.resources["store"].get_bytes(uri) == defs.resources["store"].get_bytes(uri)
