"""The boto3-shaped API of the local SageMaker service (moto's "responses" half).

Each method takes boto3's keyword arguments, checks them against botocore's own model of the
SageMaker API (so an unknown or missing argument raises ``ParamValidationError`` exactly as a
boto3 client would), calls the backend in ``models`` and returns boto3's response keys. Errors
are botocore ``ClientError``s, of boto3's modeled classes where SageMaker has one
(``service.exceptions.ResourceNotFound``), carrying the operation name and AWS's error code.
"""

from __future__ import annotations

import base64
import binascii
import functools
import json
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import botocore.session
from botocore.client import ClientMeta
from botocore.config import Config
from botocore.errorfactory import ClientExceptionsFactory
from botocore.exceptions import ClientError
from botocore.hooks import HierarchicalEmitter
from botocore.utils import parse_timestamp
from botocore.validate import validate_parameters
from botocore.waiter import Waiter, WaiterModel, create_waiter_with_client

from .hosting import HostingBackend
from .models import STALE_AFTER_SECONDS, LocalSageMakerBackend, SageMakerError, ValidationError

if TYPE_CHECKING:
    from mlops_dagster.resources.object_store import ObjectStore

DEFAULT_PAGE_SIZE = 50  # AWS does not document its defaults; clients page with NextToken anyway
MAX_PAGE_SIZE = 100
SORT_ORDERS = ("Ascending", "Descending")


@functools.cache
def _service_model():
    return botocore.session.get_session().get_service_model("sagemaker")


@functools.cache
def _waiter_model() -> WaiterModel:
    """SageMaker's waiters as botocore ships them (waiters-2.json, through botocore's loader)."""
    return botocore.session.get_session().get_waiter_model("sagemaker")


@functools.cache
def _client_exceptions():
    return ClientExceptionsFactory().create_client_exceptions(_service_model())


def _metadata(status: int) -> dict:
    return {"RequestId": str(uuid.uuid4()), "HTTPStatusCode": status, "HTTPHeaders": {}, "RetryAttempts": 0}


def client_error(operation: str, code: str, message: str) -> ClientError:
    """The exception boto3 raises for an error response (a modeled subclass when there is one)."""
    response = {"Error": {"Code": code, "Message": message}, "ResponseMetadata": _metadata(400)}
    return _client_exceptions().from_code(code)(response, operation)


def operation(name: str) -> Callable:
    """Validate keyword arguments as boto3 does, fill idempotency tokens, map model errors."""

    def decorate(method: Callable[..., dict]) -> Callable[..., dict]:
        @functools.wraps(method)
        def call(self: LocalSageMakerService, **params: Any) -> dict:
            shape = _service_model().operation_model(name).input_shape
            for member, member_shape in shape.members.items():
                if member_shape.metadata.get("idempotencyToken") and member not in params:
                    params[member] = str(uuid.uuid4())  # botocore does the same
            validate_parameters(params, shape)
            try:
                response = method(self, **params)
            except SageMakerError as err:
                raise client_error(name, err.code, err.message) from None
            response["ResponseMetadata"] = _metadata(200)
            return response

        return call

    return decorate


class LocalSageMakerService:
    """SageMaker Pipelines, jobs, the model registry and hosting on this machine, spoken as boto3 speaks them.

    State is in ``<home>/sagemaker/state.db``; executions run in detached workers (see ``worker``)
    whose jobs read and write ``store``. Endpoints are served by ``serving.process`` (one local
    server per environment) and deployed synchronously inside CreateEndpoint/UpdateEndpoint
    (see ``hosting``); ``runtime.LocalSageMakerRuntime`` invokes them.
    """

    def __init__(
        self,
        home: Path | str,
        store: ObjectStore,
        region: str = "us-east-1",
        account_id: str = "000000000000",
        *,
        stale_after_seconds: float = STALE_AFTER_SECONDS,
    ):
        self.home = Path(home)
        self.store = store
        self.backend = LocalSageMakerBackend(
            self.home, region, account_id, launcher=self._launch_worker, stale_after_seconds=stale_after_seconds
        )
        self.hosting = HostingBackend(self.home, self.backend, store)
        self.exceptions = _client_exceptions()
        self.meta = self._client_meta(region)

    def _client_meta(self, region: str) -> ClientMeta:
        """What botocore's waiters read from a client: its events and service model."""
        implemented = {
            botocore.xform_name(op): op
            for op in _service_model().operation_names
            if callable(getattr(self, botocore.xform_name(op), None))
        }
        return ClientMeta(HierarchicalEmitter(), Config(region_name=region), None, _service_model(), implemented, "aws")

    def _launch_worker(self, execution_arn: str):
        from . import worker  # not at import time: the worker process runs that module as __main__

        log_path = self.backend.worker_log_path(execution_arn.rsplit("/", 1)[-1])
        return worker.launch(self.home, self.store, execution_arn, log_path)

    def job_log_path(self, job_name: str) -> Path:
        """Where a training or processing job's stdout/stderr is kept (the local CloudWatch)."""
        return self.backend.job_log_path(job_name)

    # pipelines

    @operation("CreatePipeline")
    def create_pipeline(self, **params: Any) -> dict:
        definition = self._definition_argument(params)
        if definition is None:
            raise ValidationError("either PipelineDefinition or PipelineDefinitionS3Location is required")
        pipeline = self.backend.create_pipeline(
            params["PipelineName"],
            definition,
            params.get("RoleArn"),
            params.get("PipelineDisplayName"),
            params.get("PipelineDescription"),
            params.get("ParallelismConfiguration"),
        )
        return {"PipelineArn": pipeline.arn}

    @operation("UpdatePipeline")
    def update_pipeline(self, **params: Any) -> dict:
        pipeline = self.backend.update_pipeline(
            params["PipelineName"],
            definition=self._definition_argument(params),
            role_arn=params.get("RoleArn"),
            display_name=params.get("PipelineDisplayName"),
            description=params.get("PipelineDescription"),
            parallelism=params.get("ParallelismConfiguration"),
        )
        return {"PipelineArn": pipeline.arn}

    def _definition_argument(self, params: dict) -> str | None:
        inline, location = params.get("PipelineDefinition"), params.get("PipelineDefinitionS3Location")
        if inline is not None and location is not None:
            raise ValidationError("give PipelineDefinition or PipelineDefinitionS3Location, not both")
        if location is None:
            return inline
        uri = f"s3://{location['Bucket']}/{location['ObjectKey']}"
        try:
            return self.store.get_bytes(uri).decode()
        except FileNotFoundError as err:
            raise ValidationError(f"PipelineDefinitionS3Location {uri}: {err}") from err

    @operation("DescribePipeline")
    def describe_pipeline(self, **params: Any) -> dict:
        return self.backend.get_pipeline(params["PipelineName"]).describe()

    @operation("DeletePipeline")
    def delete_pipeline(self, **params: Any) -> dict:
        return {"PipelineArn": self.backend.delete_pipeline(params["PipelineName"])}

    @operation("ListPipelines")
    def list_pipelines(self, **params: Any) -> dict:
        prefix = params.get("PipelineNamePrefix") or ""
        pipelines = [p for p in self.backend.list_pipelines() if p.name.startswith(prefix)]
        pipelines = _created_between(pipelines, params.get("CreatedAfter"), params.get("CreatedBefore"))
        key = _sort_key(params, {"Name": lambda p: p.name, "CreationTime": lambda p: p.created}, "CreationTime")
        pipelines = _sorted(pipelines, key, params, "Descending")
        return _page([p.summary() for p in pipelines], "PipelineSummaries", params)

    # executions

    @operation("StartPipelineExecution")
    def start_pipeline_execution(self, **params: Any) -> dict:
        for unsupported in ("SelectiveExecutionConfig", "PipelineVersionId", "PipelineVersionAlias"):
            if params.get(unsupported) is not None:
                raise ValidationError(f"{unsupported} is not supported by the local SageMaker service")
        execution = self.backend.start_execution(
            params["PipelineName"],
            params.get("PipelineParameters"),
            params.get("PipelineExecutionDisplayName"),
            params.get("PipelineExecutionDescription"),
            params.get("ClientRequestToken"),
        )
        return {"PipelineExecutionArn": execution.arn}

    @operation("DescribePipelineExecution")
    def describe_pipeline_execution(self, **params: Any) -> dict:
        return self.backend.get_execution(params["PipelineExecutionArn"]).describe()

    @operation("DescribePipelineDefinitionForExecution")
    def describe_pipeline_definition_for_execution(self, **params: Any) -> dict:
        execution = self.backend.get_execution(params["PipelineExecutionArn"])
        return {"PipelineDefinition": execution.definition, "CreationTime": execution.describe()["CreationTime"]}

    @operation("ListPipelineExecutions")
    def list_pipeline_executions(self, **params: Any) -> dict:
        executions = self.backend.list_executions(params["PipelineName"])
        executions = _created_between(executions, params.get("CreatedAfter"), params.get("CreatedBefore"))
        key = _sort_key(
            params, {"CreationTime": lambda e: e.created, "PipelineExecutionArn": lambda e: e.arn}, "CreationTime"
        )
        executions = _sorted(executions, key, params, "Descending")
        return _page([e.summary() for e in executions], "PipelineExecutionSummaries", params)

    @operation("ListPipelineExecutionSteps")
    def list_pipeline_execution_steps(self, **params: Any) -> dict:
        steps = self.backend.list_steps(params["PipelineExecutionArn"])
        steps = _sorted(steps, lambda s: s.started, params, "Descending")
        return _page([s.describe() for s in steps], "PipelineExecutionSteps", params)

    @operation("ListPipelineParametersForExecution")
    def list_pipeline_parameters_for_execution(self, **params: Any) -> dict:
        values = self.backend.execution_parameters(params["PipelineExecutionArn"])
        return _page(values, "PipelineParameters", params)

    @operation("StopPipelineExecution")
    def stop_pipeline_execution(self, **params: Any) -> dict:
        """Sets Stopping; the worker stops the running job and ends the execution Stopped."""
        return {"PipelineExecutionArn": self.backend.request_stop(params["PipelineExecutionArn"]).arn}

    # jobs

    @operation("DescribeTrainingJob")
    def describe_training_job(self, **params: Any) -> dict:
        return self.backend.get_job(params["TrainingJobName"], "training").describe()

    @operation("ListTrainingJobs")
    def list_training_jobs(self, **params: Any) -> dict:
        return self._list_jobs("training", "TrainingJobSummaries", params)

    @operation("DescribeProcessingJob")
    def describe_processing_job(self, **params: Any) -> dict:
        return self.backend.get_job(params["ProcessingJobName"], "processing").describe()

    @operation("ListProcessingJobs")
    def list_processing_jobs(self, **params: Any) -> dict:
        return self._list_jobs("processing", "ProcessingJobSummaries", params)

    @operation("DescribeTransformJob")
    def describe_transform_job(self, **params: Any) -> dict:
        return self.backend.get_job(params["TransformJobName"], "transform").describe()

    @operation("ListTransformJobs")
    def list_transform_jobs(self, **params: Any) -> dict:
        return self._list_jobs("transform", "TransformJobSummaries", params)

    def _list_jobs(self, kind: str, key: str, params: dict) -> dict:
        jobs = [j for j in self.backend.list_jobs(kind) if (params.get("NameContains") or "") in j.name]
        if params.get("StatusEquals"):
            jobs = [j for j in jobs if j.status == params["StatusEquals"]]
        jobs = _created_between(jobs, params.get("CreationTimeAfter"), params.get("CreationTimeBefore"))
        jobs = _between(
            jobs, lambda j: j.modified, params.get("LastModifiedTimeAfter"), params.get("LastModifiedTimeBefore")
        )
        sort = _sort_key(
            params,
            {"Name": lambda j: j.name, "CreationTime": lambda j: j.created, "Status": lambda j: j.status},
            "CreationTime",
        )
        jobs = _sorted(jobs, sort, params, "Ascending")
        return _page([j.summary() for j in jobs], key, params)

    # model registry

    @operation("CreateModelPackageGroup")
    def create_model_package_group(self, **params: Any) -> dict:
        group = self.backend.create_package_group(
            params["ModelPackageGroupName"], params.get("ModelPackageGroupDescription")
        )
        return {"ModelPackageGroupArn": group.arn}

    @operation("DescribeModelPackageGroup")
    def describe_model_package_group(self, **params: Any) -> dict:
        return self.backend.get_package_group(params["ModelPackageGroupName"]).describe()

    @operation("ListModelPackageGroups")
    def list_model_package_groups(self, **params: Any) -> dict:
        groups = [g for g in self.backend.list_package_groups() if (params.get("NameContains") or "") in g.name]
        groups = _created_between(groups, params.get("CreationTimeAfter"), params.get("CreationTimeBefore"))
        key = _sort_key(params, {"Name": lambda g: g.name, "CreationTime": lambda g: g.created}, "CreationTime")
        groups = _sorted(groups, key, params, "Ascending")
        return _page([g.summary() for g in groups], "ModelPackageGroupSummaryList", params)

    @operation("DeleteModelPackageGroup")
    def delete_model_package_group(self, **params: Any) -> dict:
        self.backend.delete_package_group(params["ModelPackageGroupName"])
        return {}

    @operation("CreateModelPackage")
    def create_model_package(self, **params: Any) -> dict:
        if not params.get("ModelPackageGroupName"):
            raise ValidationError("the local model registry holds versioned packages only: give ModelPackageGroupName")
        package = self.backend.create_package(
            params["ModelPackageGroupName"],
            params,
            params.get("ModelApprovalStatus"),
            params.get("ModelPackageDescription"),
        )
        return {"ModelPackageArn": package.arn}

    @operation("DescribeModelPackage")
    def describe_model_package(self, **params: Any) -> dict:
        return self.backend.get_package(params["ModelPackageName"]).describe()

    @operation("ListModelPackages")
    def list_model_packages(self, **params: Any) -> dict:
        packages = self._filter_packages(self.backend.list_packages(), params)
        key = _sort_key(
            params,
            {"Name": lambda p: (p.group_name, p.version), "CreationTime": lambda p: (p.created, p.version)},
            "CreationTime",
        )
        packages = _sorted(packages, key, params, "Ascending")
        return _page([p.summary() for p in packages], "ModelPackageSummaryList", params)

    def _filter_packages(self, packages: list, params: dict) -> list:
        group = params.get("ModelPackageGroupName")
        if group:
            name = self.backend.get_package_group(group).name
            packages = [p for p in packages if p.group_name == name]
        elif params.get("ModelPackageType", "Unversioned") == "Unversioned":
            return []  # every local package is versioned (AWS lists unversioned ones by default)
        if params.get("ModelApprovalStatus"):
            packages = [p for p in packages if p.approval_status == params["ModelApprovalStatus"]]
        packages = [p for p in packages if (params.get("NameContains") or "") in p.group_name]
        return _created_between(packages, params.get("CreationTimeAfter"), params.get("CreationTimeBefore"))

    @operation("UpdateModelPackage")
    def update_model_package(self, **params: Any) -> dict:
        package = self.backend.update_package(
            params["ModelPackageArn"],
            params.get("ModelApprovalStatus"),
            params.get("ApprovalDescription"),
            params.get("CustomerMetadataProperties"),
            params.get("CustomerMetadataPropertiesToRemove"),
        )
        return {"ModelPackageArn": package.arn}

    @operation("DeleteModelPackage")
    def delete_model_package(self, **params: Any) -> dict:
        self.backend.delete_package(params["ModelPackageName"])
        return {}

    # hosting (semantics in hosting.py)

    @operation("CreateModel")
    def create_model(self, **params: Any) -> dict:
        return {"ModelArn": self.hosting.create_model(params).arn}

    @operation("DescribeModel")
    def describe_model(self, **params: Any) -> dict:
        return self.hosting.get_model(params["ModelName"]).describe()

    @operation("DeleteModel")
    def delete_model(self, **params: Any) -> dict:
        self.hosting.delete_model(params["ModelName"])
        return {}

    @operation("ListModels")
    def list_models(self, **params: Any) -> dict:
        models = [m for m in self.hosting.list_models() if (params.get("NameContains") or "") in m.name]
        models = _created_between(models, params.get("CreationTimeAfter"), params.get("CreationTimeBefore"))
        key = _sort_key(params, {"Name": lambda m: m.name, "CreationTime": lambda m: m.created}, "CreationTime")
        models = _sorted(models, key, params, "Descending")
        return _page([m.summary() for m in models], "Models", params)

    @operation("CreateEndpointConfig")
    def create_endpoint_config(self, **params: Any) -> dict:
        return {"EndpointConfigArn": self.hosting.create_endpoint_config(params).arn}

    @operation("DescribeEndpointConfig")
    def describe_endpoint_config(self, **params: Any) -> dict:
        return self.hosting.get_endpoint_config(params["EndpointConfigName"]).describe()

    @operation("DeleteEndpointConfig")
    def delete_endpoint_config(self, **params: Any) -> dict:
        self.hosting.delete_endpoint_config(params["EndpointConfigName"])
        return {}

    @operation("ListEndpointConfigs")
    def list_endpoint_configs(self, **params: Any) -> dict:
        configs = [c for c in self.hosting.list_endpoint_configs() if (params.get("NameContains") or "") in c.name]
        configs = _created_between(configs, params.get("CreationTimeAfter"), params.get("CreationTimeBefore"))
        key = _sort_key(params, {"Name": lambda c: c.name, "CreationTime": lambda c: c.created}, "CreationTime")
        configs = _sorted(configs, key, params, "Descending")
        return _page([c.summary() for c in configs], "EndpointConfigs", params)

    @operation("CreateEndpoint")
    def create_endpoint(self, **params: Any) -> dict:
        """Deploys synchronously, inside this call (SageMaker returns at once and deploys behind it):
        the endpoint is Creating while the call runs and InService or Failed (with FailureReason)
        when it returns, so an endpoint_in_service waiter finds the end state at once."""
        endpoint = self.hosting.create_endpoint(
            params["EndpointName"], params["EndpointConfigName"], params.get("Tags"), params.get("DeploymentConfig")
        )
        return {"EndpointArn": endpoint.arn}

    @operation("UpdateEndpoint")
    def update_endpoint(self, **params: Any) -> dict:
        """Deploys the new config blue/green, synchronously, inside this call: Updating while it runs;
        on return InService on the new config, or (a refused model) InService on the old one with
        FailureReason "update rolled back: ...". DeploymentConfig is recorded as LastDeploymentConfig.
        Unlike SageMaker, a Failed endpoint (e.g. its server died) can be updated: a new server starts."""
        for ignored in ("RetainAllVariantProperties", "ExcludeRetainedVariantProperties"):
            params.pop(ignored, None)  # one variant, replaced whole: there are no properties to retain
        endpoint = self.hosting.update_endpoint(
            params["EndpointName"],
            params["EndpointConfigName"],
            params.get("DeploymentConfig"),
            bool(params.get("RetainDeploymentConfig")),
        )
        return {"EndpointArn": endpoint.arn}

    @operation("DescribeEndpoint")
    def describe_endpoint(self, **params: Any) -> dict:
        """Also notices a server process that died: the endpoint is then Failed, naming the pid."""
        return self.hosting.get_endpoint(params["EndpointName"]).describe()

    @operation("DeleteEndpoint")
    def delete_endpoint(self, **params: Any) -> dict:
        """Stops the endpoint's server process (a dead one is fine) and removes endpoints/<env>.json."""
        self.hosting.delete_endpoint(params["EndpointName"])
        return {}

    @operation("ListEndpoints")
    def list_endpoints(self, **params: Any) -> dict:
        endpoints = [e for e in self.hosting.list_endpoints() if (params.get("NameContains") or "") in e.name]
        if params.get("StatusEquals"):
            endpoints = [e for e in endpoints if e.status == params["StatusEquals"]]
        endpoints = _created_between(endpoints, params.get("CreationTimeAfter"), params.get("CreationTimeBefore"))
        endpoints = _between(
            endpoints, lambda e: e.modified, params.get("LastModifiedTimeAfter"), params.get("LastModifiedTimeBefore")
        )
        key = _sort_key(
            params,
            {"Name": lambda e: e.name, "CreationTime": lambda e: e.created, "Status": lambda e: e.status},
            "CreationTime",
        )
        endpoints = _sorted(endpoints, key, params, "Descending")
        return _page([e.summary() for e in endpoints], "Endpoints", params)

    # waiters, as a boto3 client has them

    @property
    def waiter_names(self) -> list[str]:
        """boto3's snake_case names of the waiters this service can run (their operation is implemented)."""
        return sorted(self._waiters())

    def _waiters(self) -> dict[str, str]:
        model = _waiter_model()
        return {
            botocore.xform_name(name): name
            for name in model.waiter_names
            if botocore.xform_name(model.get_waiter(name).operation) in self.meta.method_to_api_mapping
        }

    def get_waiter(self, waiter_name: str) -> Waiter:
        """botocore's own waiter (e.g. endpoint_in_service), polling this service's Describe call."""
        waiters = self._waiters()
        if waiter_name not in waiters:
            raise ValueError(
                f"Waiter does not exist: {waiter_name} (the local service has {', '.join(sorted(waiters))})"
            )
        return create_waiter_with_client(waiters[waiter_name], _waiter_model(), self)

    # local-only helpers

    def local_endpoint_url(self, EndpointName: str) -> str:  # noqa: N803 (boto3's argument name)
        """http://127.0.0.1:<port>/invocations of an InService endpoint (for curl and browsers)."""
        try:
            return self.hosting.endpoint_url(EndpointName)
        except SageMakerError as err:
            raise client_error("LocalEndpointUrl", err.code, err.message) from None

    def stop_all_endpoints(self) -> list[str]:
        """Stop every endpoint's server process; the endpoints stay (Failed) until updated or deleted.
        Returns the names of the endpoints whose server was running."""
        return self.hosting.stop_all()


# --- listing helpers -------------------------------------------------------------------------


def _epoch(value: Any) -> float:
    """A boto3 timestamp argument (datetime, epoch number or string) as epoch seconds."""
    if isinstance(value, datetime):
        return (value if value.tzinfo else value.replace(tzinfo=UTC)).timestamp()
    if isinstance(value, (int, float)):
        return float(value)
    return parse_timestamp(value).timestamp()


def _between(items: list, key: Callable, after: Any, before: Any) -> list:
    if after is not None:
        items = [i for i in items if key(i) > _epoch(after)]
    if before is not None:
        items = [i for i in items if key(i) < _epoch(before)]
    return items


def _created_between(items: list, after: Any, before: Any) -> list:
    return _between(items, lambda i: i.created, after, before)


def _sort_key(params: dict, keys: dict[str, Callable], default: str) -> Callable:
    sort_by = params.get("SortBy") or default
    if sort_by not in keys:
        raise ValidationError(f"SortBy {sort_by!r} is not one of {', '.join(keys)}")
    return keys[sort_by]


def _sorted(items: list, key: Callable, params: dict, default_order: str) -> list:
    order = params.get("SortOrder") or default_order
    if order not in SORT_ORDERS:
        raise ValidationError(f"SortOrder {order!r} is not one of {', '.join(SORT_ORDERS)}")
    return sorted(items, key=key, reverse=order == "Descending")


def _page(items: list, key: str, params: dict) -> dict:
    """One page of ``items`` after NextToken, MaxResults long, with the next NextToken if more."""
    size = params.get("MaxResults") or DEFAULT_PAGE_SIZE
    if not 1 <= size <= MAX_PAGE_SIZE:
        raise ValidationError(f"MaxResults {size} is not between 1 and {MAX_PAGE_SIZE}")
    start = _decode_token(params.get("NextToken"))
    response: dict[str, Any] = {key: items[start : start + size]}
    if start + size < len(items):
        response["NextToken"] = base64.urlsafe_b64encode(json.dumps({"offset": start + size}).encode()).decode()
    return response


def _decode_token(token: str | None) -> int:
    if not token:
        return 0
    try:
        offset = json.loads(base64.urlsafe_b64decode(token.encode()))["offset"]
    except (binascii.Error, ValueError, KeyError, TypeError):
        raise ValidationError(f"NextToken {token!r} is not a token this service returned") from None
    if not isinstance(offset, int) or offset < 0:
        raise ValidationError(f"NextToken {token!r} is not a token this service returned")
    return offset
