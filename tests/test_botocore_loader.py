"""botocore's service models parsed once per process (mlops_dagster/botocore_loader.py)."""

from __future__ import annotations

import boto3
import botocore.loaders
import botocore.session
import pytest

from mlops_dagster import botocore_loader


@pytest.fixture
def parsed(monkeypatch) -> list[str]:
    """The JSON files botocore parses from now on (a loader's cache hit parses nothing)."""
    botocore_loader.share()  # idempotent: importing mlops_dagster.sagemaker did it already
    files: list[str] = []
    load_file = botocore.loaders.JSONFileLoader.load_file
    monkeypatch.setattr(
        botocore.loaders.JSONFileLoader,
        "load_file",
        lambda self, path: files.append(path) or load_file(self, path),  # type: ignore[func-returns-value]
    )
    return files


def _named(files: list[str], suffix: str) -> list[str]:
    return [path for path in files if path.endswith(suffix)]


def test_sessions_and_bare_loaders_share_one_loader_and_keep_their_own_settings(parsed):
    east = boto3.Session(aws_access_key_id="a", aws_secret_access_key="a", region_name="us-east-1")
    west = boto3.Session(aws_access_key_id="b", aws_secret_access_key="b", region_name="eu-west-1")
    clients = [east.client("sagemaker"), west.client("sagemaker"), east.client("sagemaker")]
    loader = east._session.get_component("data_loader")  # noqa: SLF001
    assert west._session.get_component("data_loader") is loader  # noqa: SLF001
    assert botocore.loaders.create_loader() is loader  # what the SDK's image URI lookup makes
    assert [c.meta.region_name for c in clients] == ["us-east-1", "eu-west-1", "us-east-1"]
    assert clients[1]._request_signer._credentials.access_key == "b"  # noqa: SLF001
    assert len(_named(parsed, "sagemaker/2017-07-24/service-2")) <= 1  # none if loaded before
    assert len(_named(parsed, "/endpoints")) <= 1
    for _ in range(3):  # every boto3.Session appends its models' folder: listed once
        boto3.Session(region_name="us-east-1")
    assert len(loader.search_paths) == len(set(loader.search_paths))


def test_another_data_path_gets_its_own_loader_that_searches_it(tmp_path, monkeypatch):
    botocore_loader.share()
    monkeypatch.setenv("AWS_DATA_PATH", str(tmp_path))
    own = botocore.session.get_session().get_component("data_loader")
    assert own is not botocore_loader.shared_loader(None)
    assert str(tmp_path) in own.search_paths
    assert botocore.session.get_session().get_component("data_loader") is own
