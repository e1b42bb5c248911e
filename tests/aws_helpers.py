"""Helpers for the aws-backend tests: a guard that keeps sockets on this machine, botocore fault
injection and canned answers, and the pipeline definition's step Arguments turned into concrete
SageMaker API requests."""

from __future__ import annotations

import io
import json
import socket
import tarfile
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import boto3
import botocore.session
import pytest
from botocore.awsrequest import AWSResponse

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")

# Step type -> the SageMaker API whose request its Arguments are, and the name member that
# SageMaker fills in when the pipeline runs the step.
STEP_APIS = {
    "Processing": ("CreateProcessingJob", "ProcessingJobName"),
    "Training": ("CreateTrainingJob", "TrainingJobName"),
    "RegisterModel": ("CreateModelPackage", None),
}


def block_remote_sockets(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Refuse (and record) every connection or name lookup that is not this machine's loopback."""
    attempts: list[Any] = []
    connect, getaddrinfo = socket.socket.connect, socket.getaddrinfo

    def guarded_connect(sock: socket.socket, address: Any) -> Any:
        if isinstance(address, tuple) and address[0] not in LOCAL_HOSTS:
            attempts.append(address)
            raise ConnectionRefusedError(f"test guard: no connection to {address} (only loopback)")
        return connect(sock, address)

    def guarded_getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        name = host.decode() if isinstance(host, bytes) else host
        if name not in LOCAL_HOSTS:
            attempts.append(name)
            raise socket.gaierror(f"test guard: no name lookup of {name!r} (only loopback)")
        return getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket.socket, "connect", guarded_connect)
    monkeypatch.setattr(socket, "getaddrinfo", guarded_getaddrinfo)
    return attempts


def no_retry_delay(monkeypatch: pytest.MonkeyPatch) -> None:
    """botocore's standard/adaptive retries sleep up to 2**n s with jitter; tests need the retry, not the wait."""
    from botocore.retries import standard

    monkeypatch.setattr(standard.ExponentialBackoff, "delay_amount", lambda self, context: 0.0)


def on_new_sessions(monkeypatch: pytest.MonkeyPatch, install: Callable[[boto3.Session], None]) -> None:
    """Run ``install`` on every boto3 session created from now on (the resources make their own)."""
    original = boto3.session.Session.__init__

    def init(self: boto3.Session, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        install(self)

    monkeypatch.setattr(boto3.session.Session, "__init__", init)


class _RawBody(io.BytesIO):
    def stream(self, *_args: Any, **_kwargs: Any):
        yield self.getvalue()


@dataclass
class InjectedErrors:
    """A ``before-send.<service>.<Operation>`` handler that answers the first ``times`` requests
    with an error response; botocore parses and retries it like one from AWS."""

    event: str
    status: int
    body: bytes
    times: int
    headers: dict = field(default_factory=dict)
    hits: int = 0

    def __call__(self, request: Any, **_: Any) -> AWSResponse | None:
        if self.hits >= self.times:
            return None
        self.hits += 1
        return AWSResponse(request.url, self.status, self.headers, _RawBody(self.body))

    def install(self, session: boto3.Session) -> None:
        session.events.register(self.event, self)


def s3_slow_down(times: int) -> InjectedErrors:
    body = b"<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>"
    return InjectedErrors("before-send.s3.PutObject", 503, body, times)


def sagemaker_throttling(operation: str, times: int) -> InjectedErrors:
    body = json.dumps({"__type": "ThrottlingException", "message": "Rate exceeded"}).encode()
    return InjectedErrors(
        f"before-send.sagemaker.{operation}", 400, body, times, {"x-amzn-ErrorType": "ThrottlingException"}
    )


@dataclass
class CannedAnswer:
    """A ``before-call`` handler that answers one operation without sending it (for calls the
    test double lacks); counts the calls it answered. A status of 300 or more with an ``Error``
    in ``parsed`` makes the client raise it as a ClientError."""

    event: str
    parsed: dict
    calls: int = 0
    status: int = 200

    def __call__(self, **_: Any) -> tuple[AWSResponse, dict]:
        self.calls += 1
        parsed = json.loads(json.dumps(self.parsed))  # each caller gets its own copy
        parsed.setdefault("ResponseMetadata", {})["HTTPStatusCode"] = self.status
        return AWSResponse("http://canned.invalid/", self.status, {}, _RawBody(b"")), parsed

    def install(self, session: boto3.Session) -> None:
        session.events.register(self.event, self)


# --- the definition's step Arguments as API requests -------------------------------------------


@dataclass
class Expressions:
    """Values for the definition's expressions: parameters (defaults unless given), the execution
    id, and step properties (a placeholder naming the property unless given)."""

    definition: dict
    parameters: dict = field(default_factory=dict)
    execution_id: str = "placeholder-execution-id"
    properties: dict = field(default_factory=dict)

    def parameter(self, name: str) -> Any:
        if name in self.parameters:
            return self.parameters[name]
        declared = {p["Name"]: p for p in self.definition["Parameters"]}
        if name not in declared:
            raise KeyError(f"the definition has no parameter {name!r}")
        return declared[name]["DefaultValue"]

    def evaluate(self, node: Any) -> Any:
        if not is_expression(node):
            return node
        if "Get" in node:
            path = node["Get"]
            if path.startswith("Parameters."):
                return self.parameter(path.removeprefix("Parameters."))
            if path == "Execution.PipelineExecutionId":
                return self.execution_id
            if path.startswith("Steps."):
                return self.properties.get(path, f"s3://placeholder/{path}")
            raise ValueError(f"unknown Get reference {path!r}")
        if "Std:Join" in node:
            join = node["Std:Join"]
            return join["On"].join(str(self.evaluate(v)) for v in join["Values"])
        if "Std:JsonGet" in node:
            return 0.0
        raise ValueError(f"unknown expression {node!r}")


def is_expression(node: Any) -> bool:
    return isinstance(node, dict) and len(node) == 1 and next(iter(node)) in ("Get", "Std:Join", "Std:JsonGet")


def concrete(value: Any, shape: Any, expressions: Expressions) -> Any:
    """``value`` with every expression replaced by a value of the type ``shape`` wants."""
    if is_expression(value):
        return _as_type(expressions.evaluate(value), shape)
    kind = shape.type_name
    if kind == "structure" and isinstance(value, dict):
        # Members the shape does not know are kept, so that the validator reports them.
        return {k: concrete(v, shape.members[k], expressions) if k in shape.members else v for k, v in value.items()}
    if kind == "list" and isinstance(value, list):
        return [concrete(v, shape.member, expressions) for v in value]
    if kind == "map" and isinstance(value, dict):
        return {k: concrete(v, shape.value, expressions) for k, v in value.items()}
    return value


def _as_type(value: Any, shape: Any) -> Any:
    kind = shape.type_name
    if kind == "string":
        return str(value)
    if kind in ("integer", "long"):
        return int(float(value))
    if kind in ("float", "double"):
        return float(value)
    if kind == "boolean":
        return value if isinstance(value, bool) else str(value).lower() == "true"
    raise TypeError(f"an expression stands where the shape wants a {kind} ({shape.name})")


def all_steps(steps: list[dict]) -> list[dict]:
    """Every step, including those inside Condition branches."""
    out = []
    for step in steps:
        out.append(step)
        if step["Type"] == "Condition":
            out += all_steps(step["Arguments"].get("IfSteps", []) + step["Arguments"].get("ElseSteps", []))
    return out


def step_request(step: dict, expressions: Expressions, job_name: str | None = None) -> tuple[str, dict]:
    """(operation name, request) for an API-backed step; the job name member filled in."""
    operation, name_member = STEP_APIS[step["Type"]]
    shape = sagemaker_model().operation_model(operation).input_shape
    request = concrete(step["Arguments"], shape, expressions)
    if name_member:
        request[name_member] = job_name or f"pipelines-{expressions.execution_id}-{step['Name']}"[:63]
    return operation, request


_MODEL: list = []


def sagemaker_model() -> Any:
    """botocore's own SageMaker service model (loaded once)."""
    if not _MODEL:
        _MODEL.append(botocore.session.get_session().get_service_model("sagemaker"))
    return _MODEL[0]


# --- artifacts ---------------------------------------------------------------------------------


def model_archive(model: Any) -> bytes:
    """A model.tar.gz as SageMaker packs a training job's model directory: model.joblib inside."""
    import joblib

    raw = io.BytesIO()
    joblib.dump(model, raw)
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as tar:
        info = tarfile.TarInfo("model.joblib")
        info.size = raw.getbuffer().nbytes
        raw.seek(0)
        tar.addfile(info, raw)
    return out.getvalue()


def evaluation_json(mse: float) -> bytes:
    """evaluation.json in the shape training/evaluate.py writes."""
    metrics = {"mse": mse, "rmse": mse**0.5, "mae": mse**0.5 * 0.8, "r2": 0.75}
    return json.dumps(
        {
            "regression_metrics": {k: {"value": v} for k, v in metrics.items()},
            "feature_importances": {"rm": 0.6, "lstat": 0.4},
            "rows": 100,
        }
    ).encode()
