"""Settings: the one place that reads MLOPS_* variables, validates them, and names what is wrong."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mlops_dagster.settings import Settings, SettingsError


def env_for(home: Path, **values: str) -> dict[str, str]:
    return {"MLOPS_HOME": str(home), **{f"MLOPS_{k.upper()}": v for k, v in values.items()}}


def test_defaults_are_local_and_need_no_aws(tmp_path: Path):
    s = Settings.from_env({"MLOPS_HOME": str(tmp_path)})
    assert s.backend == "local"
    assert s.home == str(tmp_path.resolve())
    assert s.bucket == "mlops-local"
    assert s.prefix == "mlops"
    assert s.region == "us-east-1"
    assert s.data_source == "synthetic"
    assert s.uri("data", "abc") == "s3://mlops-local/mlops/data/abc"


def test_every_variable_is_read(tmp_path: Path):
    s = Settings.from_env(
        env_for(
            tmp_path,
            backend="aws",
            bucket="sagemaker-mlops-abc123",
            prefix="teams/ml",
            region="eu-west-1",
            data_source="s3://sagemaker-mlops-abc123/raw/boston.csv",
            pipeline_name="boston-pipeline",
        )
    )
    assert (s.backend, s.bucket, s.prefix, s.region) == ("aws", "sagemaker-mlops-abc123", "teams/ml", "eu-west-1")
    assert s.data_source == "s3://sagemaker-mlops-abc123/raw/boston.csv"
    assert s.pipeline_name == "boston-pipeline"
    assert s.uri("data", "x/") == "s3://sagemaker-mlops-abc123/teams/ml/data/x"


@pytest.fixture
def clean_env(mlops_home: Path, monkeypatch) -> Path:
    """The process environment with no MLOPS_* variable but the test's MLOPS_HOME."""
    for name in list(os.environ):
        if name.startswith("MLOPS_") and name != "MLOPS_HOME":
            monkeypatch.delenv(name)
    return mlops_home


def test_from_env_without_argument_reads_the_process_environment(clean_env: Path, monkeypatch):
    mlops_home = clean_env
    monkeypatch.setenv("MLOPS_BUCKET", "from-process-env")
    monkeypatch.setenv("MLOPS_DATA_SOURCE", "/data/boston.csv")
    s = Settings.from_env()
    assert s.home == str(mlops_home.resolve())
    assert s.bucket == "from-process-env"
    assert s.data_source == "/data/boston.csv"


@pytest.mark.parametrize("value", ["gcp", "azure", "locall", "s3"])
def test_unknown_backend_names_variable_value_and_allowed_values(tmp_path: Path, value: str):
    with pytest.raises(SettingsError) as err:
        Settings.from_env(env_for(tmp_path, backend=value))
    message = str(err.value)
    assert "MLOPS_BACKEND" in message
    assert repr(value) in message
    assert "'local'" in message and "'aws'" in message
    # Settings fail before anything is created under the home directory.
    assert list(tmp_path.iterdir()) == []


def test_unknown_backend_from_process_environment(clean_env: Path, monkeypatch):
    mlops_home = clean_env
    monkeypatch.setenv("MLOPS_BACKEND", "kubernetes")
    with pytest.raises(
        SettingsError, match=r"MLOPS_BACKEND='kubernetes' is not valid: allowed values are 'local', 'aws'"
    ):
        Settings.from_env()
    assert not (mlops_home / "s3").exists()


def test_settings_error_is_a_value_error():
    assert issubclass(SettingsError, ValueError)


@pytest.mark.parametrize("value", ["AWS", " aws "])
def test_backend_is_case_and_space_insensitive(tmp_path: Path, value: str):
    s = Settings.from_env(env_for(tmp_path, backend=value, bucket="my-bucket", region="us-west-2"))
    assert s.backend == "aws"


def test_aws_backend_requires_a_bucket(tmp_path: Path):
    with pytest.raises(SettingsError, match="MLOPS_BUCKET is not set"):
        Settings.from_env(env_for(tmp_path, backend="aws", region="us-east-1"))


def test_aws_backend_requires_a_region(tmp_path: Path):
    with pytest.raises(SettingsError, match="MLOPS_REGION is not set"):
        Settings.from_env(env_for(tmp_path, backend="aws", bucket="my-bucket"))


def test_region_falls_back_to_aws_variables(tmp_path: Path):
    env = env_for(tmp_path, backend="aws", bucket="my-bucket")
    assert Settings.from_env({**env, "AWS_REGION": "ap-south-1"}).region == "ap-south-1"
    assert Settings.from_env({**env, "AWS_DEFAULT_REGION": "ca-central-1"}).region == "ca-central-1"
    both = {**env, "MLOPS_REGION": "eu-north-1", "AWS_REGION": "ap-south-1"}
    assert Settings.from_env(both).region == "eu-north-1"


@pytest.mark.parametrize(
    "bucket", ["My_Bucket", "ab", "-starts-with-hyphen", "ends-with-hyphen-", "a" * 64, "two..dots"]
)
def test_invalid_bucket_is_named(tmp_path: Path, bucket: str):
    with pytest.raises(SettingsError) as err:
        Settings.from_env(env_for(tmp_path, bucket=bucket))
    assert f"MLOPS_BUCKET={bucket!r}" in str(err.value)
    assert "not a valid S3 bucket name" in str(err.value)


@pytest.mark.parametrize("region", ["useast1", "US-EAST-1", "us-east", "mars-1"])
def test_invalid_region_is_named(tmp_path: Path, region: str):
    with pytest.raises(SettingsError) as err:
        Settings.from_env(env_for(tmp_path, region=region))
    assert f"MLOPS_REGION={region!r}" in str(err.value)


@pytest.mark.parametrize("region", ["us-east-1", "eu-central-1", "ap-southeast-2", "us-gov-west-1"])
def test_valid_regions_pass(tmp_path: Path, region: str):
    assert Settings.from_env(env_for(tmp_path, region=region)).region == region


@pytest.mark.parametrize("prefix", ["/abs", "trailing/", "a//b", "..", "a/../b"])
def test_invalid_prefix_is_named(tmp_path: Path, prefix: str):
    with pytest.raises(SettingsError) as err:
        Settings.from_env(env_for(tmp_path, prefix=prefix))
    assert f"MLOPS_PREFIX={prefix!r}" in str(err.value)


def test_invalid_pipeline_name_is_named(tmp_path: Path):
    with pytest.raises(SettingsError, match=r"MLOPS_PIPELINE_NAME='my_pipeline!'"):
        Settings.from_env(env_for(tmp_path, pipeline_name="my_pipeline!"))


def test_home_that_is_a_file_is_named(tmp_path: Path):
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    with pytest.raises(SettingsError, match="MLOPS_HOME=.* exists and is not a directory"):
        Settings.from_env({"MLOPS_HOME": str(not_a_dir)})


def test_relative_home_is_resolved(tmp_path: Path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert Settings.from_env({"MLOPS_HOME": "rel-home"}).home == str(tmp_path.resolve() / "rel-home")


# Issue 9 item 6: values that passed settings and then broke every store call or deployment.


@pytest.mark.parametrize(
    "prefix", [".", "a/./b", "./a", "a/.", "a/..", "a//b", "/a", "a/", "a b", "a/*", "te?m", "x" * 201]
)
def test_prefix_that_would_break_store_calls_is_refused(tmp_path: Path, prefix: str):
    with pytest.raises(SettingsError) as err:
        Settings.from_env(env_for(tmp_path, prefix=prefix))
    message = str(err.value)
    assert f"MLOPS_PREFIX={prefix!r} is not a valid key prefix" in message
    assert "at most 200 characters" in message and "letters, digits, '.', '_' or '-'" in message
    assert "not '.' or '..'" in message


@pytest.mark.parametrize("prefix", ["mlops", "teams/ml", "a.b/c_d-e", "", "v1.2", "x" * 200])
def test_plain_prefixes_pass(tmp_path: Path, prefix: str):
    assert Settings.from_env(env_for(tmp_path, prefix=prefix)).prefix == prefix


def test_longest_pipeline_name_passes_and_its_names_fit(tmp_path: Path):
    from mlops_dagster import naming

    name = "p" * 32
    s = Settings.from_env(env_for(tmp_path, pipeline_name=name))
    version, stamp = "9" * naming.VERSION_DIGITS, "20260101000000"
    names = [naming.model_package_group(name)]
    for env in naming.ENVIRONMENTS:
        endpoint = naming.endpoint_name(name, env)
        names += [endpoint, naming.deployment_name(endpoint, version, stamp)]
    assert all(len(n) <= 63 for n in names)
    # Nothing was cut: each deployment's name keeps its version and stamp, so two never collide.
    assert naming.deployment_name(naming.endpoint_name(name, "staging"), version, stamp).endswith(
        f"-v{version}-{stamp}"
    )
    assert s.pipeline_name == name


@pytest.mark.parametrize("length", [33, 56, 200, 256])
def test_long_pipeline_name_is_refused_naming_the_derived_name(tmp_path: Path, length: int):
    name = "p" * length
    with pytest.raises(SettingsError) as err:
        Settings.from_env(env_for(tmp_path, pipeline_name=name))
    message = str(err.value)
    assert f"MLOPS_PIPELINE_NAME={name!r} has {length} characters; at most 32 are allowed" in message
    assert f"the staging model and endpoint config (for version 999999) name '{name}-staging-v999999-" in message
    assert "(SageMaker allows 63)" in message
    if length > 56:  # <name>-models passes 63 too
        assert f"the model package group name '{name}-models'" in message


@pytest.mark.parametrize("name", ["ends-with-hyphen-", "double--hyphen-ok-but-not-this-", "-lead"])
def test_pipeline_name_pattern_is_checked(tmp_path: Path, name: str):
    with pytest.raises(SettingsError, match=rf"MLOPS_PIPELINE_NAME={name!r} is not a valid SageMaker pipeline name"):
        Settings.from_env(env_for(tmp_path, pipeline_name=name))


@pytest.mark.parametrize(
    ("bucket", "rule"),
    [
        ("192.168.5.4", "must not be formatted as an IP address"),
        ("xn--bucket", "S3 reserves names starting with 'xn--'"),
        ("sthree-data", "S3 reserves names starting with"),
        ("amzn-s3-demo-bucket", "S3 reserves names starting with"),
        ("data-s3alias", "and ending with '-s3alias'"),
        ("data--ol-s3", "and ending with"),
        ("data.mrap", "and ending with"),
        ("data--x-s3", "and ending with"),
        ("data--table-s3", "and ending with"),
    ],
)
def test_reserved_bucket_names_are_refused(tmp_path: Path, bucket: str, rule: str):
    with pytest.raises(SettingsError) as err:
        Settings.from_env(env_for(tmp_path, backend="aws", region="us-east-1", bucket=bucket))
    assert f"MLOPS_BUCKET={bucket!r} is not a valid S3 bucket name: " in str(err.value)
    assert rule in str(err.value)


@pytest.mark.parametrize("name", ["models.git", "x" * 101, "a b"])
def test_invalid_repository_name_is_named(tmp_path: Path, name: str):
    with pytest.raises(SettingsError) as err:
        Settings.from_env(env_for(tmp_path, repository_name=name))
    assert f"MLOPS_REPOSITORY_NAME={name!r} is not a valid repository name" in str(err.value)
    assert "1-100 letters" in str(err.value) and "not ending in '.git'" in str(err.value)


@pytest.mark.parametrize("url", ["http://", "https://:5000", "http://[bad"])
def test_endpoint_url_without_a_host_is_refused(tmp_path: Path, url: str):
    with pytest.raises(SettingsError, match=r"MLOPS_AWS_ENDPOINT_URL=.* is not an http\(s\) URL"):
        Settings.from_env(env_for(tmp_path, aws_endpoint_url=url))


def test_endpoint_url_with_a_host_passes(tmp_path: Path):
    url = "http://127.0.0.1:5000"
    assert Settings.from_env(env_for(tmp_path, aws_endpoint_url=url)).aws_endpoint_url == url


@pytest.mark.parametrize(
    ("field", "value", "variable"),
    [("prefix", "a/./b", "MLOPS_PREFIX"), ("pipeline_name", "p" * 40, "MLOPS_PIPELINE_NAME"),
     ("bucket", "xn--b", "MLOPS_BUCKET")],
)  # fmt: skip
def test_run_config_cannot_pass_what_from_env_refuses(settings, field: str, value: str, variable: str):
    from dagster import DagsterInstance, asset, materialize

    @asset
    def probe(settings: Settings) -> str:
        return getattr(settings, field)

    with DagsterInstance.ephemeral() as instance:
        result = materialize(
            [probe], resources={"settings": settings}, instance=instance, raise_on_error=False,
            run_config={"resources": {"settings": {"config": {field: value}}}},
        )  # fmt: skip
    assert not result.success
    [failure] = [e for e in result.all_events if e.event_type_value == "RESOURCE_INIT_FAILURE"]
    assert f"{variable}={value!r}" in failure.event_specific_data.error.to_string()


@pytest.mark.parametrize("cron", ["0 3 31 2 *", "61 * * * *", "0 3 * * 8", "every monday"])
def test_cron_that_never_fires_or_does_not_parse_is_refused(tmp_path: Path, cron: str):
    with pytest.raises(SettingsError) as err:
        Settings.from_env(env_for(tmp_path, retrain_cron=cron))
    assert f"MLOPS_RETRAIN_CRON={cron!r} is not a cron expression such as '0 3 * * 1'" in str(err.value)
