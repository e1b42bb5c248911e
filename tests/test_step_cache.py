"""SageMaker's step caching in the local service (mlops_dagster/sagemaker/local/step_cache.py).

Each step's script appends a line to a file outside the store, so the tests count the times a
step really ran; a reused step runs nothing and names the execution whose job it reused.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_local_sagemaker import ROLE, definition, processing_step, run_here, steps_of, training_step

from mlops_dagster.sagemaker.local import LocalSageMakerService
from mlops_dagster.sagemaker.local.models import LocalSageMakerBackend, StateDB
from mlops_dagster.sagemaker.local.step_cache import CacheConfigError, duration_seconds, window_seconds

CACHE = {"Enabled": True, "ExpireAfter": "PT1H"}


@pytest.fixture
def store(mlops_home: Path):
    from mlops_dagster.resources.object_store import LocalObjectStore

    store = LocalObjectStore(root=str(mlops_home / "s3"))
    for version in ("v1", "v2"):
        store.put_bytes(f"s3://mlops-local/data/{version}/rows.csv", f"{version}\n".encode())
    return store


@pytest.fixture
def sm(mlops_home: Path, store) -> LocalSageMakerService:
    return LocalSageMakerService(mlops_home, store)


def _prep(store, runs: Path, cache=CACHE, data: str | dict = "s3://mlops-local/data/v1/") -> dict:
    script = (
        "import os\n"
        f"open({str(runs / 'Prep')!r}, 'a').write('ran\\n')\n"
        "open('/opt/ml/processing/out/rows.csv', 'w').write('1,2\\n')\n"
    )
    data_input = {
        "InputName": "data",
        "S3Input": {"S3Uri": data, "LocalPath": "/opt/ml/processing/input/data", "S3DataType": "S3Prefix",
                    "S3InputMode": "File"},
    }  # fmt: skip
    step = processing_step(store, "Prep", script, outputs=("out",), inputs=(data_input,))
    if cache is not None:
        step["CacheConfig"] = cache
    return step


def _train(store, runs: Path, cache=CACHE, hyperparameters: dict | None = None) -> dict:
    script = (
        "import os\n"
        f"open({str(runs / 'Train')!r}, 'a').write('ran\\n')\n"
        "open(os.path.join(os.environ['SM_MODEL_DIR'], 'model.txt'), 'w').write('model')\n"
    )
    step = training_step(store, "Train", script, hyperparameters)
    step["Arguments"]["InputDataConfig"] = [
        {
            "ChannelName": "train",
            "DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3DataDistributionType": "FullyReplicated",
                                            "S3Uri": {"Get": "Steps.Prep.ProcessingOutputConfig.Outputs['out'].S3Output.S3Uri"}}},
        }
    ]  # fmt: skip
    if cache is not None:
        step["CacheConfig"] = cache
    return step


def _pipeline(sm, steps: list[dict], name: str = "p", parameters: list[dict] | None = None) -> None:
    text = definition(steps, parameters)
    try:
        sm.create_pipeline(PipelineName=name, PipelineDefinition=text, RoleArn=ROLE)
    except Exception:  # noqa: BLE001 - the same name again: this test's next version of it
        sm.update_pipeline(PipelineName=name, PipelineDefinition=text)


def _runs(runs: Path, step: str) -> int:
    path = runs / step
    return len(path.read_text().splitlines()) if path.exists() else 0


@pytest.fixture
def runs(tmp_path: Path) -> Path:
    path = tmp_path / "runs"
    path.mkdir()
    return path


def test_an_unchanged_step_reuses_the_earlier_job_and_the_steps_after_it_follow(sm, store, runs):
    _pipeline(sm, [_prep(store, runs), _train(store, runs)])
    first = run_here(sm, "p")
    second = run_here(sm, "p")
    assert first["PipelineExecutionStatus"] == second["PipelineExecutionStatus"] == "Succeeded"
    assert (_runs(runs, "Prep"), _runs(runs, "Train")) == (1, 1)
    before, after = steps_of(sm, first["PipelineExecutionArn"]), steps_of(sm, second["PipelineExecutionArn"])
    assert "CacheHitResult" not in before["Train"]
    for step, job in (("Prep", "ProcessingJob"), ("Train", "TrainingJob")):
        assert after[step]["StepStatus"] == "Succeeded"
        assert after[step]["CacheHitResult"] == {"SourcePipelineExecutionArn": first["PipelineExecutionArn"]}
        assert after[step]["Metadata"][job]["Arn"] == before[step]["Metadata"][job]["Arn"]
    # No new job: the reused Train job is the first execution's, with its model.
    assert len(sm.list_training_jobs()["TrainingJobSummaries"]) == 1
    third = run_here(sm, "p")  # a reuse of a reuse names the execution that ran the job
    assert steps_of(sm, third["PipelineExecutionArn"])["Train"]["CacheHitResult"] == {
        "SourcePipelineExecutionArn": first["PipelineExecutionArn"]
    }


def test_new_input_data_runs_the_step_and_the_steps_that_read_its_new_output(sm, store, runs):
    parameter = [{"Name": "InputData", "Type": "String", "DefaultValue": "s3://mlops-local/data/v1/"}]
    _pipeline(sm, [_prep(store, runs, data={"Get": "Parameters.InputData"}), _train(store, runs)], parameters=parameter)
    run_here(sm, "p")
    run_here(sm, "p", PipelineParameters=[{"Name": "InputData", "Value": "s3://mlops-local/data/v2/"}])
    # Prep's outputs are per execution: Train's input changed with them.
    assert (_runs(runs, "Prep"), _runs(runs, "Train")) == (2, 2)
    run_here(sm, "p", PipelineParameters=[{"Name": "InputData", "Value": "s3://mlops-local/data/v1/"}])
    assert (_runs(runs, "Prep"), _runs(runs, "Train")) == (2, 2)  # v1 again: both reused


def test_changed_hyperparameters_run_training_again_while_processing_is_reused(sm, store, runs):
    _pipeline(sm, [_prep(store, runs), _train(store, runs, hyperparameters={"n_estimators": "10"})])
    run_here(sm, "p")
    _pipeline(sm, [_prep(store, runs), _train(store, runs, hyperparameters={"n_estimators": "20"})])
    second = run_here(sm, "p")
    assert second["PipelineExecutionStatus"] == "Succeeded"
    assert (_runs(runs, "Prep"), _runs(runs, "Train")) == (1, 2)
    assert "CacheHitResult" not in steps_of(sm, second["PipelineExecutionArn"])["Train"]


@pytest.mark.parametrize("cache", [None, {"Enabled": False}, {"Enabled": False, "ExpireAfter": "P1D"}])
def test_without_enabled_caching_every_execution_runs_every_step(sm, store, runs, cache):
    _pipeline(sm, [_prep(store, runs, cache=cache), _train(store, runs, cache=cache)])
    run_here(sm, "p")
    second = run_here(sm, "p")
    assert (_runs(runs, "Prep"), _runs(runs, "Train")) == (2, 2)
    assert all("CacheHitResult" not in s for s in steps_of(sm, second["PipelineExecutionArn"]).values())


def test_a_job_older_than_expire_after_or_from_another_pipeline_is_not_reused(sm, store, runs, mlops_home):
    cache = {"Enabled": True, "ExpireAfter": "PT10M"}
    _pipeline(sm, [_prep(store, runs, cache=cache)], name="other")
    run_here(sm, "other")
    _pipeline(sm, [_prep(store, runs, cache=cache)])
    run_here(sm, "p")  # the same step and arguments, another pipeline: runs
    assert _runs(runs, "Prep") == 2
    backend = LocalSageMakerBackend(mlops_home)
    with backend.db.write() as conn:  # the job ended 11 minutes ago
        conn.execute("UPDATE jobs SET ended = ended - 660")
    run_here(sm, "p")
    assert _runs(runs, "Prep") == 3
    run_here(sm, "p")  # within 10 minutes of the last one
    assert _runs(runs, "Prep") == 3


def test_a_failed_job_is_not_reused(sm, store, runs):
    failing = processing_step(store, "Prep", "import sys; sys.exit(2)\n", outputs=("out",))
    failing["CacheConfig"] = CACHE
    _pipeline(sm, [failing])
    assert run_here(sm, "p")["PipelineExecutionStatus"] == "Failed"
    _pipeline(sm, [_prep(store, runs)])
    assert run_here(sm, "p")["PipelineExecutionStatus"] == "Succeeded"
    assert _runs(runs, "Prep") == 1


@pytest.mark.parametrize(
    ("cache", "message"),
    [
        ({"Enabled": True}, "CacheConfig is enabled without ExpireAfter"),
        ({"Enabled": True, "ExpireAfter": "soon"}, "ExpireAfter 'soon' is not an ISO 8601 duration"),
        ({"Enabled": "yes", "ExpireAfter": "P1D"}, "CacheConfig must be"),
    ],
)
def test_a_bad_cache_config_fails_the_execution_before_any_step_naming_it(sm, store, runs, cache, message):
    _pipeline(sm, [_prep(store, runs, cache=cache)])
    execution = run_here(sm, "p")
    assert execution["PipelineExecutionStatus"] == "Failed"
    assert "step 'Prep'" in execution["FailureReason"] and message in execution["FailureReason"]
    assert _runs(runs, "Prep") == 0


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("P30D", 30 * 86400), ("PT1H", 3600), ("30d", 30 * 86400), ("T16m", 960), ("P1W", 604800),
     ("30dT5h", 30 * 86400 + 5 * 3600), ("P1Y", 365 * 86400), ("P1M", 30 * 86400), ("PT90S", 90)],
)  # fmt: skip
def test_expire_after_durations(text, seconds):
    assert duration_seconds(text) == seconds


@pytest.mark.parametrize("text", ["", "P", "30", "1 day", "PT", "P1H", None, 30])
def test_bad_expire_after_is_refused(text):
    with pytest.raises(CacheConfigError, match="not an ISO 8601 duration"):
        duration_seconds(text)


def test_only_processing_and_training_steps_are_cached_locally():
    assert window_seconds("Processing", CACHE) == 3600
    assert window_seconds("Transform", CACHE) is None  # runs every time (the README says so)


def test_an_old_state_db_gains_the_cache_column(sm, store, runs, mlops_home):
    _pipeline(sm, [_prep(store, runs)])
    first = run_here(sm, "p")
    backend = LocalSageMakerBackend(mlops_home)
    with backend.db.write() as conn:
        conn.execute("ALTER TABLE steps DROP COLUMN cache_source")  # as an earlier version wrote it
    StateDB._initialized.discard(str(backend.db.path))
    reopened = LocalSageMakerService(mlops_home, store)
    assert "CacheHitResult" not in steps_of(reopened, first["PipelineExecutionArn"])["Prep"]
    second = run_here(reopened, "p")
    assert steps_of(reopened, second["PipelineExecutionArn"])["Prep"]["CacheHitResult"] == {
        "SourcePipelineExecutionArn": first["PipelineExecutionArn"]
    }
    assert json.loads(json.dumps(second, default=str))["PipelineExecutionStatus"] == "Succeeded"
