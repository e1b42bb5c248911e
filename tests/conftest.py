"""Shared fixtures: every test gets its own $MLOPS_HOME and never touches the network."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / "shared" / "data" / "BostonHousing.csv"

# Nothing in the test run may reach AWS: fake credentials, and no instance metadata lookups.
os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
os.environ["AWS_EC2_METADATA_DISABLED"] = "true"
os.environ["SAGEMAKER_SUPPRESS_V2_WARNING"] = "1"


@pytest.fixture(scope="session")
def shared_definition_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One pipeline definition cache for the whole run, as a user has one for all their homes and
    processes: the xdist workers share it (each entry is written to a temporary file and renamed,
    so a worker reads a whole entry or none), and a definition is built once, not once per worker."""
    base = tmp_path_factory.getbasetemp()  # under xdist: <the run's folder>/popen-gwN
    cache = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "definition-cache"
    cache.mkdir(exist_ok=True)
    return cache


@pytest.fixture
def mlops_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest, shared_definition_cache: Path
) -> Path:
    """A fresh, empty $MLOPS_HOME (and DAGSTER_HOME inside it) for one test."""
    home = tmp_path / "mlops-home"
    home.mkdir()
    monkeypatch.setenv("MLOPS_HOME", str(home))
    monkeypatch.setenv("DAGSTER_HOME", str(home / "dagster"))
    # The pipeline definition cache is the user's (~/.cache), shared by the worker's tests: its key
    # covers everything the definition depends on, so a hit is what the SDK would build (about 5 s
    # each). Tests about the cache itself mark themselves `own_definition_cache` and start empty.
    own = request.node.get_closest_marker("own_definition_cache") is not None
    cache = tmp_path / "definition-cache" if own else shared_definition_cache
    monkeypatch.setenv("MLOPS_DEFINITION_CACHE_DIR", str(cache))
    (home / "dagster").mkdir()
    return home


@pytest.fixture
def settings(mlops_home: Path):
    from mlops_dagster.settings import Settings

    return Settings.from_env({"MLOPS_HOME": str(mlops_home)})


@pytest.fixture
def boston_csv() -> Path:
    if not SHARED_DATA.exists():
        pytest.skip(f"{SHARED_DATA} is not present (../shared/data is only on project machines)")
    return SHARED_DATA


@pytest.fixture
def defs(settings):
    """The code location's Definitions on the local backend in this test's $MLOPS_HOME."""
    from mlops_dagster import build_definitions

    return build_definitions(settings)


@pytest.fixture
def instance():
    """An ephemeral Dagster instance (run and event storage in memory)."""
    from dagster import DagsterInstance

    with DagsterInstance.ephemeral() as inst:
        yield inst


@pytest.fixture
def ui_instance(tmp_path: Path):
    """The instance `make ui` and `make monitor` use: a $DAGSTER_HOME holding config/dagster.yaml, so
    its event log is Dagster's default run-sharded SQLite (storage ids restart in each run's shard)."""
    import shutil

    from dagster import DagsterInstance
    from dagster._core.storage.event_log import SqliteEventLogStorage

    home = tmp_path / "dagster-home"
    home.mkdir()
    shutil.copy(REPO / "config" / "dagster.yaml", home / "dagster.yaml")
    with DagsterInstance.from_config(str(home)) as inst:
        assert type(inst.event_log_storage) is SqliteEventLogStorage  # run-sharded (Consolidated... is not)
        yield inst


@pytest.fixture(params=["in-memory", "run-sharded SQLite (make ui)", "consolidated SQLite"])
def any_instance(request, tmp_path: Path):
    """Each kind of event log in turn: storage ids are global in two and restart per run in make ui's."""
    if request.param == "in-memory":
        yield request.getfixturevalue("instance")
    elif request.param.startswith("run-sharded"):
        yield request.getfixturevalue("ui_instance")
    else:
        from dagster import instance_for_test

        storage = {
            "module": "dagster._core.storage.event_log",
            "class": "ConsolidatedSqliteEventLogStorage",
            "config": {"base_dir": str(tmp_path / "events")},
        }
        (tmp_path / "dagster").mkdir()
        home = str(tmp_path / "dagster")
        with instance_for_test(overrides={"event_log_storage": storage}, temp_dir=home, set_dagster_home=False) as inst:
            yield inst


@pytest.fixture
def local_only(monkeypatch):
    """Refuse (and record) every connection or DNS lookup that is not loopback."""
    from aws_helpers import block_remote_sockets

    return block_remote_sockets(monkeypatch)


@pytest.fixture
def aws():
    """moto's in-process AWS for the test's duration."""
    from moto import mock_aws

    with mock_aws():
        yield


@pytest.fixture
def sm_in_process(mlops_home: Path):
    """The local SageMaker service whose executions run in this process (``worker.run_execution``),
    not in detached workers: for tests that drive one execution step by step."""
    import os
    from types import SimpleNamespace

    from mlops_dagster.resources.object_store import LocalObjectStore
    from mlops_dagster.sagemaker.local import LocalSageMakerService

    service = LocalSageMakerService(mlops_home, LocalObjectStore(root=str(mlops_home / "s3")))
    service.backend.launcher = lambda arn: SimpleNamespace(pid=os.getpid())
    service.backend.stale_after_seconds = 3600
    return service


# `make test` hands tests to its workers one at a time (pytest-xdist --dist loadgroup), in collection
# order, to whichever worker is free. The longest tests go first, so none of them starts last and
# becomes the run's tail (measured with --durations; a renamed test only loses its place). A module
# whose module-scoped fixture is costly (a served endpoint, a server, an SDK build) runs whole on
# one worker (xdist_group), right after them: handed out test by test, its tests would land on
# every worker in turn and rebuild the fixture each time the worker came back to the module.
SLOWEST_FIRST = (
    "test_aws_moto_server.py::test_the_asset_graph_runs_against_aws_apis_on_moto",
    "test_monitoring_assets.py::test_the_local_loop_end_to_end_as_make_monitor_shows_it",
    "test_ui_browser.py::test_materialize_all_from_the_ui",
    "test_deployment.py::test_dev_staging_prod_with_gates_rollback_and_restart",
    "test_training_scripts.py::test_boston_preprocess_train_evaluate",
    "test_infrastructure_aws.py::test_the_role_may_not_delete_runs_only_pipeline_jobs_and_reaches_only_this_accounts_bucket",
    "test_registry.py::test_registered_model_lineage_approval_and_prod_gate",
    "test_baseline_registration.py::test_every_registered_model_has_its_baselines_where_the_package_names_them",
    "test_infrastructure_aws.py::test_full_access_is_attached_only_when_opted_in_and_detached_when_not",
    "test_infrastructure_aws.py::test_adopted_resources_are_used_and_teardown_keeps_them_deleting_only_the_projects_share",
    "test_registry.py::test_a_model_stopped_by_the_quality_gate_is_not_registered",
    "test_pipeline_assets.py::test_whole_graph_trains_evaluates_and_registers",
    "test_model_size_gate.py::test_model_above_max_model_bytes_is_not_registered",
    "test_pipeline_assets.py::test_recipe_train_py_runs_unmodified_as_the_training_entry_point",
    "test_deployment_aws.py::test_dev_endpoint_is_created_then_updated_blue_green",
    "test_deployment_aws.py::test_endpoint_configs_carry_data_capture_and_a_capture_change_updates_the_endpoint",
    "test_infrastructure_aws.py::test_verify_reports_every_check_fails_on_what_is_missing_then_passes",
    "test_infrastructure_aws.py::test_setup_creates_bucket_role_and_repository_and_a_second_run_changes_nothing",
    "test_approve_command.py::test_comment_from_the_environment_and_status",
    "test_approve_command.py::test_comment_is_stored_verbatim_and_never_run",
)
ONE_WORKER_MODULES = (
    "test_aws_backend.py", "test_aws_moto_server.py", "test_batching.py", "test_capture.py", "test_local_hosting.py",
    "test_runtime_gateway.py", "test_serving.py", "test_serving_container.py", "test_serving_robustness.py",
)  # fmt: skip


@pytest.hookimpl(tryfirst=True)  # before xdist appends the group to each node id
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    rank = {name: place for place, name in enumerate(SLOWEST_FIRST)}

    def place(item: pytest.Item) -> tuple[int, int]:
        name = f"{item.path.name}::{item.originalname}"
        if name in rank:
            return (0, rank[name])
        return (1, 0) if item.path.name in ONE_WORKER_MODULES else (2, 0)

    items.sort(key=place)  # stable: each module's tests keep their order
    for item in items:
        if item.path.name in ONE_WORKER_MODULES:
            item.add_marker(pytest.mark.xdist_group(item.path.stem))
            if getattr(config.option, "loadgroup", False) and "@" not in item.nodeid:  # set on xdist workers
                # xdist 3.8 groups by the "@group" it appends to item._nodeid, which pytest 9's
                # nodeid no longer reads: append it where pytest 9 keeps the id.
                from _pytest.nodeid import NodeId

                item._id = NodeId.parse(f"{item.nodeid}@{item.path.stem}")
