"""The Model (CreateModel) and Transform (batch transform) step types of the local service.

The SDK's ``ModelStep(step_args=model.create(...))`` becomes a ``Model`` step whose Arguments are a
CreateModel request without ModelName; SageMaker names the model and exposes DescribeModel's
response as the step's properties (``Properties.ModelName``). The model is recorded in the local
hosting models, as CreateModel would record it.

A ``Transform`` step's Arguments are a CreateTransformJob request. Like a SageMaker batch transform,
each object under the input S3 prefix goes through the serving handlers (training/inference.py:
model_fn once, then input_fn, predict_fn, output_fn) and its result is written to
``<S3OutputPath>/<object path under the prefix>.out``. Requests are per object, or per line with
SplitType Line and BatchStrategy SingleRecord; MaxPayloadInMB does not split an object.
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from .models import SHA256_PROPERTY, SageMakerError, artifact_sha256, utc

if TYPE_CHECKING:
    from mlops_dagster.resources.object_store import ObjectStore

    from .hosting import HostingBackend
    from .interpreter import StepDef
    from .worker import ExecutionRunner

_NAME_CHARS = re.compile(r"[^a-zA-Z0-9-]")


class TransformError(Exception):
    """The batch transform failed; the message says on which object and why."""


def generated_name(execution_id: str, step_name: str) -> str:
    """A SageMaker-valid resource name for what a step creates (at most 63 characters)."""
    name = _NAME_CHARS.sub("-", f"pipelines-{execution_id}-{step_name}")
    return name[:63].rstrip("-")


def hosting_for(runner: ExecutionRunner) -> HostingBackend:
    from .hosting import HostingBackend  # hosting imports the serving stack: only when a step needs it

    return HostingBackend(runner.backend.root.parent, runner.backend, runner.store)


def run_model_step(runner: ExecutionRunner, step: StepDef) -> None:
    """CreateModel with the step's Arguments; properties are DescribeModel's response."""
    runner.backend.start_step(runner.arn, step.name, step.type)
    request = dict(runner._resolve(step, step.arguments))
    request["ModelName"] = generated_name(runner.execution.id, step.name)
    try:
        _tag_sha256(request, runner.store)
        model = hosting_for(runner).create_model(request)
    except SageMakerError as err:  # the CreateModel answer: the step fails with it
        runner._fail(step, f"cannot create the model: {err}")
    runner.properties[step.name] = model.describe()
    runner.backend.update_step(runner.arn, step.name, "Succeeded", metadata={"Model": {"Arn": model.arn}})


def _tag_sha256(request: dict, store: ObjectStore) -> None:
    """Local hosting serves only artifacts whose sha256 is recorded: record the artifact's now."""
    container = request.get("PrimaryContainer") or (request.get("Containers") or [{}])[0]
    url = container.get("ModelDataUrl")
    tags = request.setdefault("Tags", [])
    if url and not container.get("ModelPackageName") and not any(t.get("Key") == SHA256_PROPERTY for t in tags):
        tags.append({"Key": SHA256_PROPERTY, "Value": artifact_sha256(store, url)})


def run_transform_step(runner: ExecutionRunner, step: StepDef) -> None:
    """A batch transform through the serving handlers, recorded as a transform job
    (DescribeTransformJob, ListTransformJobs); the step's properties are DescribeTransformJob's."""
    runner.backend.start_step(runner.arn, step.name, step.type, "Starting")
    name = generated_name(runner.execution.id, step.name)
    request = runner._resolve(step, step.arguments, TransformJobName=name)
    job = runner.backend.create_job(name, "transform", request, runner.arn, step.name)
    runner.backend.update_step(runner.arn, step.name, "Executing", metadata={"TransformJob": {"Arn": job.arn}})
    reason = None
    try:
        model = hosting_for(runner).get_model(str(request.get("ModelName")))
        batch_transform(request, model.container(), runner.store)
    except (SageMakerError, TransformError) as err:
        reason = str(err)
    job = runner.backend.finish_job(name, "Failed" if reason else "Completed", reason, {}, None)
    if reason:
        runner._fail(step, f"transform job {name} failed: {reason}")
    runner.properties[step.name] = job.describe()
    runner.backend.update_step(runner.arn, step.name, "Succeeded")


_TRANSFORM_FIELDS = (
    "ModelName",
    "MaxConcurrentTransforms",
    "ModelClientConfig",
    "MaxPayloadInMB",
    "BatchStrategy",
    "Environment",
    "TransformInput",
    "TransformOutput",
    "DataCaptureConfig",
    "TransformResources",
    "DataProcessing",
    "ExperimentConfig",
)


def describe_transform_job(job: Any) -> dict:
    """DescribeTransformJob's answer for a transform ``models.Job``."""
    response = {
        "TransformJobName": job.name,
        "TransformJobArn": job.arn,
        "TransformJobStatus": job.status,
        "FailureReason": job.failure_reason,
        "CreationTime": utc(job.created),
        "TransformStartTime": utc(job.created),
        "TransformEndTime": utc(job.ended),
    }
    response.update({k: job.request[k] for k in _TRANSFORM_FIELDS if k in job.request})
    return {k: v for k, v in response.items() if v is not None}


def transform_job_summary(job: Any) -> dict:
    summary = {
        "TransformJobName": job.name,
        "TransformJobArn": job.arn,
        "CreationTime": utc(job.created),
        "TransformEndTime": utc(job.ended),
        "LastModifiedTime": utc(job.modified),
        "TransformJobStatus": job.status,
        "FailureReason": job.failure_reason,
    }
    return {k: v for k, v in summary.items() if v is not None}


def batch_transform(request: dict, container: dict, store: ObjectStore) -> list[str]:
    """Run the transform of ``request`` with the model of ``container``; returns the URIs written."""
    source = request["TransformInput"]["DataSource"]["S3DataSource"]
    if source.get("S3DataType", "S3Prefix") != "S3Prefix":
        raise TransformError(f"S3DataType {source.get('S3DataType')!r} is not supported locally; use S3Prefix")
    unsupported = _unsupported_options(request)
    if unsupported:
        raise TransformError(f"{unsupported} is not supported by the local batch transform; remove it")
    prefix, output = source["S3Uri"], request["TransformOutput"]["S3OutputPath"].rstrip("/")
    keys = [k for k in store.list(prefix) if not k.endswith("/")]
    if not keys:
        raise TransformError(f"no objects under the input prefix {prefix}")
    handlers, model = _load_model(container, store)
    written = []
    for uri in keys:
        body = store.get_bytes(uri)
        result = _transform_object(handlers, model, body, request, uri)
        relative = uri[len(prefix) :].lstrip("/") if uri.startswith(prefix) else uri.rsplit("/", 1)[-1]
        target = f"{output}/{relative or uri.rsplit('/', 1)[-1]}.out"
        store.put_bytes(target, result)
        written.append(target)
    return written


def _unsupported_options(request: dict) -> str | None:
    """The first option that would change the output, which the local transform does not implement."""
    if request.get("DataProcessing"):
        return "DataProcessing (InputFilter, JoinSource, OutputFilter)"
    if request["TransformInput"].get("CompressionType", "None") != "None":
        return f"CompressionType {request['TransformInput']['CompressionType']!r}"
    if request["TransformOutput"].get("KmsKeyId"):
        return "TransformOutput.KmsKeyId"
    return None


def _load_model(container: dict, store: ObjectStore) -> tuple[ModuleType, Any]:
    from mlops_dagster.serving import app  # the local endpoint's handlers and archive checks

    url = container.get("ModelDataUrl")
    if not url:
        raise TransformError("the model has no ModelDataUrl (the local transform serves model artifacts)")
    handlers = app.load_handlers()
    with tempfile.TemporaryDirectory(prefix="mlops-transform-") as scratch:
        archive = store.download(url, Path(scratch) / "model.tar.gz")
        try:
            model_dir = app.extract(Path(archive), Path(scratch) / "model")
            return handlers, handlers.model_fn(str(model_dir))
        except Exception as err:  # model_fn is user code: any error fails the job, saying where
            raise TransformError(f"model_fn failed on {url}: {type(err).__name__}: {err}") from err


def _transform_object(handlers: ModuleType, model: Any, body: bytes, request: dict, uri: str) -> bytes:
    transform_input, transform_output = request["TransformInput"], request["TransformOutput"]
    content_type = transform_input.get("ContentType") or "application/json"
    accept = transform_output.get("Accept") or content_type
    single = transform_input.get("SplitType") == "Line" and request.get("BatchStrategy") == "SingleRecord"
    records = [line + b"\n" for line in body.splitlines() if line.strip()] if single else [body]
    joiner = b"\n" if transform_output.get("AssembleWith") == "Line" else b""
    results = []
    for number, record in enumerate(records, start=1):
        try:
            data = handlers.input_fn(record.decode(), content_type)
            answer, _ = handlers.output_fn(handlers.predict_fn(data, model), accept)
        except Exception as err:  # handler errors are the request's: the job fails naming the record
            where = f"{uri} line {number}" if single else uri
            raise TransformError(f"{where}: {type(err).__name__}: {err}") from err
        answer = answer.encode() if isinstance(answer, str) else bytes(answer)
        results.append(answer if not joiner or answer.endswith(joiner) else answer + joiner)
    return b"".join(results)
