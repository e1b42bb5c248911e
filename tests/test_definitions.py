"""The code location as the UI shows it: groups, descriptions, kinds, code versions, owners."""

import pytest

from mlops_dagster import build_definitions
from mlops_dagster.code_versions import SOURCES, code_version_for
from mlops_dagster.settings import Settings, SettingsError

GROUPS = {
    "raw_data": "data", "s3_dataset": "data", "pipeline_definition": "pipeline", "pipeline_execution": "pipeline",
    "trained_model": "model", "registered_model": "model",
    "dev_endpoint": "deployment", "staging_endpoint": "deployment", "prod_endpoint": "deployment",
    "endpoint_traffic": "monitoring", "data_quality_report": "monitoring", "model_quality_report": "monitoring",
}  # fmt: skip


def test_every_asset_explains_itself(settings):
    graph = build_definitions(settings).resolve_asset_graph()
    keys = {k.to_user_string() for k in graph.get_all_asset_keys()}
    assert keys == set(GROUPS) == set(SOURCES)
    for key in graph.get_all_asset_keys():
        node = graph.get(key)
        name = key.to_user_string()
        assert node.group_name == GROUPS[name], name
        assert node.description and len(node.description) > 20, name
        assert node.kinds, name
        assert node.code_version == code_version_for(name), name


def test_every_job_and_op_has_a_description(settings):
    defs = build_definitions(settings)
    for job in defs.resolve_all_job_defs():
        if job.name.startswith("__"):
            continue
        assert job.description, job.name
        for node in job.graph.node_defs:
            assert node.description, f"{job.name}.{node.name}"


def test_code_versions_follow_the_code_that_makes_each_asset():
    # trained_model depends on the training scripts; registered_model does not.
    assert code_version_for("trained_model") != code_version_for("registered_model")
    assert code_version_for("raw_data") == code_version_for("s3_dataset")  # same modules
    assert code_version_for("dev_endpoint") == code_version_for("prod_endpoint")
    assert code_version_for("not_an_asset") is None


def test_owners_are_applied_and_validated(mlops_home):
    settings = Settings.from_env({"MLOPS_HOME": str(mlops_home), "MLOPS_OWNERS": "ml@example.com, team:mlops"})
    graph = build_definitions(settings).resolve_asset_graph()
    assert all(graph.get(k).owners == ["ml@example.com", "team:mlops"] for k in graph.get_all_asset_keys())
    with pytest.raises(SettingsError, match="MLOPS_OWNERS has 'bob': each owner is an email address or team:<name>"):
        Settings.from_env({"MLOPS_HOME": str(mlops_home), "MLOPS_OWNERS": "bob"})
