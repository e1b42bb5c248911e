"""The aws backend's resources against moto in-process (``mock_aws``): the session (endpoint, profile,
retries), the S3 ObjectStore, the SageMaker client and its CloudWatch log tail, and the pipeline
definition's step Arguments validated as SageMaker API requests by botocore's own service model."""

from __future__ import annotations

import json
import time
from pathlib import Path

import boto3
import pytest
from aws_helpers import STEP_APIS, Expressions, all_steps, sagemaker_model, step_request
from botocore.config import Config
from botocore.exceptions import ProfileNotFound
from botocore.validate import ParamValidator
from dagster_aws.s3 import S3Resource
from moto import mock_aws

from mlops_dagster import build_definitions
from mlops_dagster.resources.aws import AwsSageMaker, AwsSession, MiB, S3ObjectStore
from mlops_dagster.resources.object_store import ObjectNotFound, ObjectStoreError
from mlops_dagster.settings import Settings

REGION = "us-east-1"
BUCKET = "mlops-test-bucket"
ROLE = "arn:aws:iam::123456789012:role/mlops-test-role"
ENDPOINT = "http://127.0.0.1:9"  # never listened on: requests are stopped before they are sent


pytestmark = pytest.mark.usefixtures("local_only")


@pytest.fixture
def store(aws) -> S3ObjectStore:
    boto3.client("s3", region_name=REGION).create_bucket(Bucket=BUCKET)
    # A low threshold so a 5 MiB file takes the multipart path (parts stay at S3's 5 MiB minimum).
    return S3ObjectStore(s3=S3Resource(region_name=REGION), multipart_threshold=1 * MiB, multipart_chunksize=5 * MiB)


def _versioned(bucket: str = BUCKET) -> None:
    boto3.client("s3", region_name=REGION).put_bucket_versioning(
        Bucket=bucket, VersioningConfiguration={"Status": "Enabled"}
    )


# --- AwsSession ----------------------------------------------------------------------------------


class _Sent(Exception):
    """Raised by a before-send hook: the request was built (URL known) and never sent."""


def _first_url(client, operation: str, **params) -> str:
    """The URL a client call would be sent to; a before-send hook stops it before the network."""
    urls: list[str] = []

    def stop(request, **_):
        urls.append(request.url)
        raise _Sent(request.url)

    client.meta.events.register("before-send", stop)
    with pytest.raises(_Sent):
        getattr(client, operation)(**params)
    return urls[0]


def test_session_clients_carry_region_endpoint_and_retry_settings():
    session = AwsSession(region="eu-west-1", endpoint_url=ENDPOINT, retry_mode="adaptive", max_attempts=5)
    client = session.client("sagemaker")
    assert client.meta.region_name == "eu-west-1"
    assert client.meta.endpoint_url == ENDPOINT
    # total_max_attempts includes the first try, as MLOPS_AWS_MAX_ATTEMPTS does.
    assert client.meta.config.retries == {"mode": "adaptive", "total_max_attempts": 5}


def test_every_client_of_the_session_goes_to_the_endpoint_including_the_sdks_kinds():
    session = AwsSession(region=REGION, endpoint_url=ENDPOINT, max_attempts=4).boto_session()
    # The kinds of client the SageMaker SDK makes: with its own Config, an S3 resource's client,
    # and STS pinned to its regional AWS endpoint.
    sdk_s3 = session.client("s3", config=Config(user_agent_extra="sdk"))
    sts = session.client("sts", endpoint_url="https://sts.us-east-1.amazonaws.com")
    resource_client = session.resource("s3").meta.client
    assert _first_url(sdk_s3, "list_buckets") == ENDPOINT + "/"
    assert _first_url(sts, "get_caller_identity") == ENDPOINT + "/"
    # Path style: a bucket subdomain of an IP address would not resolve.
    assert _first_url(resource_client, "put_object", Bucket="b", Key="code/x.tar.gz", Body=b"x") == (
        f"{ENDPOINT}/b/code/x.tar.gz"
    )
    assert _first_url(session.client("sagemaker"), "list_pipelines") == ENDPOINT + "/"
    # The SDK's clients bring their own Config and still get the session's retries.
    assert sdk_s3.meta.config.retries == {"mode": "standard", "total_max_attempts": 4}


def test_without_an_endpoint_the_session_talks_to_aws():
    session = AwsSession(region=REGION).boto_session()
    assert _first_url(session.client("sagemaker"), "list_pipelines") == "https://api.sagemaker.us-east-1.amazonaws.com/"


def test_sessions_share_the_parsed_service_models_and_keep_their_own_settings(monkeypatch):
    import botocore.loaders
    import botocore.session

    parsed: list[str] = []
    load_file = botocore.loaders.JSONFileLoader.load_file
    monkeypatch.setattr(
        botocore.loaders.JSONFileLoader,
        "load_file",
        lambda self, path: parsed.append(path) or load_file(self, path),  # type: ignore[func-returns-value]
    )
    east = AwsSession(region=REGION, max_attempts=3)
    west = AwsSession(region="eu-west-1", endpoint_url="http://127.0.0.1:9", max_attempts=5)
    clients = [east.client("sagemaker") for _ in range(3)] + [west.client("sagemaker")]
    models = [path for path in parsed if "/sagemaker/" in path and path.endswith("/service-2")]
    assert len(models) <= 1, models  # one parse (none if an earlier test loaded it): not one per session
    assert [c.meta.region_name for c in clients] == [REGION] * 3 + ["eu-west-1"]
    assert clients[0].meta.config.retries["total_max_attempts"] == 3
    assert clients[3].meta.config.retries["total_max_attempts"] == 5
    assert _first_url(clients[3], "list_pipelines") == "http://127.0.0.1:9/"
    plain = botocore.session.get_session()  # a session made elsewhere (a library's) shares it too
    assert plain.get_component("data_loader") is clients[0]._loader  # noqa: SLF001
    for _ in range(3):
        east.boto_session()
    loader = clients[0]._loader  # noqa: SLF001 - boto3's resource path is listed once, not per session
    assert len(loader.search_paths) == len(set(loader.search_paths))


def test_profile_comes_from_the_shared_config_and_a_missing_one_is_named(tmp_path: Path, monkeypatch):
    config = tmp_path / "config"
    config.write_text("[profile mlops-team]\nregion = eu-central-1\n")
    credentials = tmp_path / "credentials"
    credentials.write_text("[mlops-team]\naws_access_key_id = from-profile\naws_secret_access_key = from-profile\n")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(config))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(credentials))
    monkeypatch.delenv("AWS_ACCESS_KEY_ID", raising=False)
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY", raising=False)

    session = AwsSession(region=REGION, profile="mlops-team").boto_session()
    assert session.profile_name == "mlops-team"
    assert session.region_name == REGION  # the resource's region wins over the profile's
    assert session.get_credentials().access_key == "from-profile"
    with pytest.raises(ProfileNotFound, match="nobody"):
        AwsSession(region=REGION, profile="nobody").boto_session()


def test_no_credential_fields_in_resource_config():
    for resource in (AwsSession, AwsSageMaker, S3ObjectStore, Settings):
        names = " ".join(resource.model_fields).lower()
        assert "secret" not in names and "access_key" not in names and "token" not in names, resource


def test_retry_mode_is_validated():
    with pytest.raises(ValueError, match="'fast' is not one of"):
        AwsSession(region=REGION, retry_mode="fast")


def test_aws_definitions_wire_settings_into_the_resources(tmp_path: Path):
    settings = Settings.from_env(
        {"MLOPS_BACKEND": "aws", "MLOPS_HOME": str(tmp_path), "MLOPS_REGION": "eu-west-1", "MLOPS_BUCKET": BUCKET,
         "MLOPS_ROLE_ARN": ROLE, "MLOPS_AWS_ENDPOINT_URL": ENDPOINT, "MLOPS_AWS_MAX_ATTEMPTS": "4",
         "MLOPS_AWS_RETRY_MODE": "adaptive", "MLOPS_AWS_PROFILE": "mlops-team"}
    )  # fmt: skip
    resources = build_definitions(settings).resources
    store, sagemaker = resources["store"], resources["sagemaker"]
    assert isinstance(store, S3ObjectStore) and isinstance(sagemaker, AwsSageMaker)
    assert (store.s3.region_name, store.s3.endpoint_url, store.s3.profile_name) == ("eu-west-1", ENDPOINT, "mlops-team")
    assert store.s3.max_attempts == 3  # S3Resource counts retries after the first try: 3 + 1 = 4 attempts
    session = sagemaker.session
    assert (session.region, session.endpoint_url, session.profile) == ("eu-west-1", ENDPOINT, "mlops-team")
    assert (session.retry_mode, session.max_attempts) == ("adaptive", 4)
    assert sagemaker.execution_role_arn() == ROLE


# --- S3ObjectStore -------------------------------------------------------------------------------


def test_put_head_list_download_round_trip(store: S3ObjectStore, tmp_path: Path):
    uri = f"s3://{BUCKET}/mlops/data/abc/train.csv"
    info = store.put_bytes(uri, b"crim,medv\n0.1,24\n")
    assert (info.uri, info.size, info.version_id) == (uri, 17, None)  # unversioned bucket
    head = store.head(uri)
    assert head.sha256 == info.sha256 and head.size == 17
    raw = boto3.client("s3", region_name=REGION).head_object(Bucket=BUCKET, Key="mlops/data/abc/train.csv")
    assert raw["Metadata"] == {"sha256": info.sha256}
    store.put_bytes(f"s3://{BUCKET}/mlops/data/abc/validation.csv", b"x")
    store.put_bytes(f"s3://{BUCKET}/mlops/other/y", b"y")
    assert store.list(f"s3://{BUCKET}/mlops/data/") == [
        f"s3://{BUCKET}/mlops/data/abc/train.csv",
        f"s3://{BUCKET}/mlops/data/abc/validation.csv",
    ]
    assert store.download(uri, tmp_path / "out" / "train.csv").read_bytes() == b"crim,medv\n0.1,24\n"
    assert store.get_bytes(uri) == b"crim,medv\n0.1,24\n"


def test_missing_objects(store: S3ObjectStore, tmp_path: Path):
    uri = f"s3://{BUCKET}/nothing/here.csv"
    assert store.head(uri) is None and not store.exists(uri)
    with pytest.raises(ObjectNotFound, match=uri):
        store.download(uri, tmp_path / "x")
    assert list(tmp_path.iterdir()) == []  # no partial file left behind
    with pytest.raises(ObjectNotFound):
        store.get_bytes(uri)
    assert store.list(f"s3://{BUCKET}/nothing/") == []


def test_upload_to_a_missing_bucket_names_the_uri(store: S3ObjectStore):
    with pytest.raises(ObjectStoreError, match=r"to s3://no-such-bucket-x/k failed: .*NoSuchBucket"):
        store.put_bytes("s3://no-such-bucket-x/k", b"x")


def test_versioned_bucket_returns_each_version_id(store: S3ObjectStore):
    _versioned()
    uri = f"s3://{BUCKET}/mlops/data/v.csv"
    first, second = store.put_bytes(uri, b"one"), store.put_bytes(uri, b"two")
    assert first.version_id and second.version_id and first.version_id != second.version_id
    versions = boto3.client("s3", region_name=REGION).list_object_versions(Bucket=BUCKET, Prefix="mlops/data/v.csv")
    assert {v["VersionId"] for v in versions["Versions"]} == {first.version_id, second.version_id}
    assert store.head(uri).version_id == second.version_id


def test_large_file_goes_up_in_parts_with_its_sha256(store: S3ObjectStore, tmp_path: Path):
    _versioned()
    path = tmp_path / "big.bin"
    path.write_bytes(bytes(range(256)) * (5 * MiB // 256) + b"tail" * 256)  # 5 MiB + 1 KiB: two parts
    uri = f"s3://{BUCKET}/mlops/big.bin"
    info = store.put_file(uri, path)
    raw = boto3.client("s3", region_name=REGION).head_object(Bucket=BUCKET, Key="mlops/big.bin")
    assert raw["ETag"].strip('"').endswith("-2")  # S3's ETag of a two-part multipart upload
    assert raw["Metadata"] == {"sha256": info.sha256} and info.version_id == raw["VersionId"]
    assert info.size == path.stat().st_size
    assert store.download(uri, tmp_path / "back.bin").read_bytes() == path.read_bytes()


def test_small_file_is_a_single_put(store: S3ObjectStore):
    store.put_bytes(f"s3://{BUCKET}/small", b"x" * 1024)
    etag = boto3.client("s3", region_name=REGION).head_object(Bucket=BUCKET, Key="small")["ETag"]
    assert "-" not in etag


# --- AwsSageMaker ---------------------------------------------------------------------------------


def _sagemaker() -> AwsSageMaker:
    return AwsSageMaker(session=AwsSession(region=REGION), role_arn=ROLE)


def test_sagemaker_client_speaks_the_pipeline_api(aws):
    client = _sagemaker().get_client()
    definition = json.dumps(
        {"Version": "2020-12-01", "Parameters": [{"Name": "InputData", "Type": "String"}], "Steps": []}
    )
    arn = client.create_pipeline(PipelineName="p", PipelineDefinition=definition, RoleArn=ROLE)["PipelineArn"]
    assert client.describe_pipeline(PipelineName="p")["PipelineDefinition"] == definition
    assert client.update_pipeline(PipelineName="p", PipelineDefinition=definition, RoleArn=ROLE)["PipelineArn"] == arn
    execution = client.start_pipeline_execution(
        PipelineName="p", PipelineParameters=[{"Name": "InputData", "Value": "s3://b/data/"}],
        ClientRequestToken="0123456789abcdef0123456789abcdef",
    )["PipelineExecutionArn"]  # fmt: skip
    assert client.describe_pipeline_execution(PipelineExecutionArn=execution)["PipelineArn"] == arn
    summaries = client.list_pipeline_executions(PipelineName="p")["PipelineExecutionSummaries"]
    assert [s["PipelineExecutionArn"] for s in summaries] == [execution]
    parameters = client.list_pipeline_parameters_for_execution(PipelineExecutionArn=execution)["PipelineParameters"]
    assert parameters == [{"Name": "InputData", "Value": "s3://b/data/"}]


def test_execution_role_is_required_with_a_hint():
    with pytest.raises(ValueError, match="set MLOPS_ROLE_ARN, or run the setup_infrastructure job"):
        AwsSageMaker(session=AwsSession(region=REGION)).execution_role_arn()


def test_job_log_tail_reads_the_jobs_cloudwatch_streams(aws):
    logs = boto3.client("logs", region_name=REGION)
    group = "/aws/sagemaker/TrainingJobs"
    logs.create_log_group(logGroupName=group)
    now_ms = int(time.time() * 1000)  # CloudWatch (and moto) reject events older than 14 days
    for stream, prefix in (("job-1/algo-1-1700000000", "job-1"), ("job-10/algo-1-1700000000", "other job")):
        logs.create_log_stream(logGroupName=group, logStreamName=stream)
        logs.put_log_events(
            logGroupName=group, logStreamName=stream,
            logEvents=[{"timestamp": now_ms + i, "message": f"{prefix} line {i}"} for i in range(50)],
        )  # fmt: skip
    sagemaker = _sagemaker()
    assert sagemaker.job_log_tail("job-1", "training", lines=3) == "job-1 line 47\njob-1 line 48\njob-1 line 49"
    assert sagemaker.job_log_tail("job-2", "training") == f"(no log events in {group} for job-2)"
    missing = sagemaker.job_log_tail("job-1", "processing")
    assert "could not read the log of job-1 from /aws/sagemaker/ProcessingJobs: ResourceNotFoundException" in missing


# --- the definition's steps as SageMaker API requests ----------------------------------------------


@pytest.fixture(scope="module")
def definition(tmp_path_factory) -> dict:
    """Built by the SDK through the aws backend's session (moto in-process answers its S3 calls)."""
    from mlops_dagster.sagemaker.pipeline_builder import PipelineSpec, build_pipeline

    with mock_aws():
        boto3.client("s3", region_name=REGION).create_bucket(Bucket=BUCKET)
        spec = PipelineSpec(name="mlops-pipeline", bucket=BUCKET, prefix="mlops", region=REGION, role_arn=ROLE)
        return json.loads(build_pipeline(spec, _sagemaker().sdk_boto_session()).definition())


def _validate(operation: str, request: dict) -> str:
    shape = sagemaker_model().operation_model(operation).input_shape
    report = ParamValidator().validate(request, shape)
    return report.generate_report() if report.has_errors() else ""


def test_every_api_step_is_a_valid_request_of_its_sagemaker_api(definition: dict):
    steps = [s for s in all_steps(definition["Steps"]) if s["Type"] in STEP_APIS]
    assert sorted((s["Name"], s["Type"]) for s in steps) == [
        ("Evaluate", "Processing"), ("Preprocess", "Processing"),
        ("RegisterModel-RegisterModel", "RegisterModel"), ("Train", "Training"),
    ]  # fmt: skip
    expressions = Expressions(definition)
    for step in steps:
        operation, request = step_request(step, expressions)
        assert _validate(operation, request) == "", f"{step['Name']} as {operation}"
    # Expressions became concrete values of the member's type.
    _, train = step_request(next(s for s in steps if s["Name"] == "Train"), expressions)
    assert train["ResourceConfig"]["InstanceType"] == "ml.m5.large"
    assert train["InputDataConfig"][0]["DataSource"]["S3DataSource"]["S3Uri"].startswith(
        "s3://placeholder/Steps.Preprocess"
    )


def test_the_validator_catches_a_wrong_argument(definition: dict):
    train = next(s for s in definition["Steps"] if s["Name"] == "Train")
    broken = json.loads(json.dumps(train))
    broken["Arguments"]["ResourceConfig"]["InstanceCount"] = "one"
    broken["Arguments"]["NotAMember"] = 1
    operation, request = step_request(broken, Expressions(definition))
    report = _validate(operation, request)
    assert "ResourceConfig.InstanceCount" in report and "NotAMember" in report


# --- ExpectedBucketOwner (issue 9, item 12) ------------------------------------------------------


def _owner_headers(client) -> list[tuple[str, str | None]]:
    """(operation, x-amz-expected-bucket-owner header) of every request the client sends."""
    sent: list[tuple[str, str | None]] = []

    def record(request, event_name: str, **_):
        header = request.headers.get("x-amz-expected-bucket-owner")
        sent.append((event_name.rsplit(".", 1)[-1], header.decode() if isinstance(header, bytes) else header))

    client.meta.events.register("before-send.s3", record)
    return sent


def test_store_calls_on_the_projects_bucket_name_this_account_as_owner(aws, tmp_path: Path):
    s3 = boto3.client("s3", region_name=REGION)
    s3.create_bucket(Bucket=BUCKET)
    s3.create_bucket(Bucket="someone-elses-source")
    owner = AwsSession(region=REGION, owned_bucket=BUCKET)
    store = S3ObjectStore(s3=S3Resource(region_name=REGION), owner=owner)
    sent = _owner_headers(store._client())
    uri = f"s3://{BUCKET}/mlops/data/x.csv"
    store.put_bytes(uri, b"a,b\n1,2\n")
    assert store.head(uri).size == 8
    assert store.list(f"s3://{BUCKET}/mlops/") == [uri]
    assert store.get_bytes(uri) == b"a,b\n1,2\n"
    assert sent and {header for _, header in sent} == {"123456789012"}, sent
    # A data source in another bucket may belong to another account: no owner is asserted there.
    sent.clear()
    store.put_bytes("s3://someone-elses-source/raw.csv", b"x")
    assert sent and {header for _, header in sent} == {None}, sent


def test_sdk_session_uploads_to_the_projects_bucket_name_the_owner(aws):
    session = AwsSession(region=REGION, owned_bucket=BUCKET).boto_session()
    client = session.client("s3")
    client.create_bucket(Bucket=BUCKET)
    sent = _owner_headers(client)
    client.put_object(Bucket=BUCKET, Key="mlops/code/sourcedir.tar.gz", Body=b"x")
    client.list_buckets()  # takes no owner: left as it is
    assert [header for _, header in sent] == ["123456789012", None]


def test_aws_definitions_give_the_store_and_sessions_the_bucket_to_guard(tmp_path: Path):
    settings = Settings.from_env(
        {"MLOPS_BACKEND": "aws", "MLOPS_REGION": REGION, "MLOPS_BUCKET": BUCKET, "MLOPS_HOME": str(tmp_path)}
    )
    resources = build_definitions(settings).resources
    assert resources["sagemaker"].session.owned_bucket == BUCKET
    assert resources["store"].owner.owned_bucket == BUCKET
