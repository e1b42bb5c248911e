"""The runtime gateway starts beside an endpoint's deploy (hosting._roll_out), and is settled after it."""

from __future__ import annotations

from concurrent.futures import Future
from types import SimpleNamespace

import pytest

from mlops_dagster.sagemaker.local.hosting import HostingBackend
from mlops_dagster.serving import gateway, process


def _done(value=None, error: BaseException | None = None) -> Future:
    future: Future = Future()
    if error is None:
        future.set_result(value)
    else:
        future.set_exception(error)
    return future


def test_after_a_failed_first_deploy_the_gateway_serving_no_endpoint_is_stopped(tmp_path):
    hosting = SimpleNamespace(home=tmp_path)
    before = set(process._children)
    started = HostingBackend._ensure_gateway_async(
        SimpleNamespace(home=tmp_path, registry=SimpleNamespace(region="us-east-1", account_id="000000000000"))
    )
    record = started.result(timeout=process.START_DEADLINE_SECONDS)
    try:
        assert gateway.is_alive(record)
        HostingBackend._settle_gateway(hosting, started, deployed=False)  # no endpoint record: idle
        assert not gateway.runtime_path(tmp_path).exists()
        assert not gateway.is_alive(record)
        assert record.pid not in process._children  # stopped and reaped
    finally:
        for pid, proc in list(process._children.items()):
            if pid not in before and proc.poll() is None:
                proc.kill()
                proc.wait(10)


def test_a_gateway_that_failed_to_start_fails_a_deploy_that_worked(tmp_path):
    failed = _done(error=process.EndpointError("the SageMaker Runtime gateway exited with code 1"))
    with pytest.raises(process.EndpointError, match="gateway exited with code 1"):
        HostingBackend._settle_gateway(SimpleNamespace(home=tmp_path), failed, deployed=True)


def test_after_a_failed_deploy_the_deploys_error_stands_over_the_gateways(tmp_path):
    failed = _done(error=process.EndpointError("the SageMaker Runtime gateway exited with code 1"))
    HostingBackend._settle_gateway(SimpleNamespace(home=tmp_path), failed, deployed=False)  # does not raise
    # Any other error of the gateway's start is a bug, and surfaces.
    with pytest.raises(KeyError):
        HostingBackend._settle_gateway(SimpleNamespace(home=tmp_path), _done(error=KeyError("x")), deployed=False)
