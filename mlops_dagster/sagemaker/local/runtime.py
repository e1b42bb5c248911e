"""The boto3 ``sagemaker-runtime`` client of the local SageMaker service: ``invoke_endpoint``.

A request goes to the endpoint's local server (``serving.process``, 127.0.0.1) and comes back in
boto3's shape: ``Body`` a botocore ``StreamingBody``, ``ContentType``, ``InvokedProductionVariant``.
Errors are the ``ClientError``s the real service raises:

- ``ValidationError`` "Endpoint X of account A not found." for an unknown endpoint or one that is
  not InService (also when its server turns out to have died: the endpoint is then Failed);
- ``ModelError`` (HTTP 424) when the model server answers 4xx/5xx, with ``OriginalStatusCode``,
  ``OriginalMessage`` (the server's body) and ``LogStreamArn`` at the top of ``err.response``, as
  botocore parses them; the message points at the server's local log instead of CloudWatch;
- ``413`` "HTTP content length exceeded ..." for a body over 6 MB, before it is sent.

``InferenceId`` goes to the server as the ``X-Amzn-SageMaker-Inference-Id`` header, as on AWS: data
capture records it as ``eventMetadata.inferenceId`` (1 to 64 printable characters, checked here).
"""

from __future__ import annotations

import functools
import io
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import botocore.session
from botocore.errorfactory import ClientExceptionsFactory
from botocore.exceptions import ClientError
from botocore.response import StreamingBody
from botocore.validate import validate_parameters

from mlops_dagster.serving import process

from .hosting import HostingBackend, NotServing
from .models import LocalSageMakerBackend, ValidationError

if TYPE_CHECKING:
    from mlops_dagster.resources.object_store import ObjectStore

MAX_BODY_BYTES = 6 * 1024 * 1024  # InvokeEndpoint's payload limit
DEFAULT_CONTENT_TYPE = "application/octet-stream"  # what a request without ContentType carries
# Parameters that address things a local endpoint does not have (several models, containers,
# inference components, stateful sessions): refused rather than ignored.
UNSUPPORTED = ("TargetModel", "TargetContainerHostname", "InferenceComponentName", "SessionId", "EnableExplanations")


@functools.cache
def _service_model():
    return botocore.session.get_session().get_service_model("sagemaker-runtime")


@functools.cache
def _client_exceptions():
    return ClientExceptionsFactory().create_client_exceptions(_service_model())


def _metadata(status: int, headers: dict | None = None) -> dict:
    return {"RequestId": str(uuid.uuid4()), "HTTPStatusCode": status, "HTTPHeaders": headers or {}, "RetryAttempts": 0}


def runtime_error(code: str, message: str, status: int = 400, **fields: Any) -> ClientError:
    """The exception boto3 raises for an error response (modeled fields at the top, as botocore puts them)."""
    response = {"Error": {"Code": code, "Message": message}, "ResponseMetadata": _metadata(status), **fields}
    return _client_exceptions().from_code(code)(response, "InvokeEndpoint")


def _validated(name: str) -> Callable:
    def decorate(method: Callable[..., dict]) -> Callable[..., dict]:
        @functools.wraps(method)
        def call(self: LocalSageMakerRuntime, **params: Any) -> dict:
            validate_parameters(params, _service_model().operation_model(name).input_shape)
            return method(self, **params)

        return call

    return decorate


class LocalSageMakerRuntime:
    """InvokeEndpoint against the local service's endpoints in ``<home>`` (state.db and endpoints/)."""

    def __init__(
        self,
        home: Path | str,
        store: ObjectStore | None = None,
        region: str = "us-east-1",
        account_id: str = "000000000000",
    ):
        self.home = Path(home)
        self.region = region
        self.account_id = account_id
        self.hosting = HostingBackend(self.home, LocalSageMakerBackend(self.home, region, account_id), store)
        self.exceptions = _client_exceptions()

    @_validated("InvokeEndpoint")
    def invoke_endpoint(self, **params: Any) -> dict:
        name = params["EndpointName"]
        for unsupported in UNSUPPORTED:
            if params.get(unsupported) is not None:
                raise runtime_error("ValidationError", f"{unsupported} is not supported by the local endpoint {name}")
        body = _body_bytes(params["Body"])
        if len(body) > MAX_BODY_BYTES:  # the real front end refuses it before any container sees it
            raise runtime_error("413", f"HTTP content length exceeded {MAX_BODY_BYTES} bytes.", 413)
        endpoint, record = self._serving(name)
        variant = (endpoint.live or {}).get("variant_name", "AllTraffic")
        if params.get("TargetVariant") not in (None, variant):
            raise runtime_error(
                "ValidationError", f"TargetVariant {params['TargetVariant']} is not a variant of endpoint {name}"
            )
        content_type = params.get("ContentType") or DEFAULT_CONTENT_TYPE
        inference_id = params.get("InferenceId")
        if inference_id is not None and (
            len(inference_id) > 64 or inference_id[0].isspace() or not inference_id.isprintable()
        ):
            raise runtime_error(
                "ValidationError",
                f"InferenceId {inference_id[:80]!r} must be 1 to 64 printable characters, not starting with a space",
            )
        try:
            result = process.invoke(record, body, content_type, params.get("Accept"), inference_id=inference_id)
        except process.EndpointError as err:
            raise self._unreachable(name, err) from None
        if result.status >= 400:
            raise self._model_error(name, record, result)
        headers = {"content-type": result.content_type, "x-amzn-invoked-production-variant": variant}
        return {
            "Body": StreamingBody(io.BytesIO(result.body), len(result.body)),
            "ContentType": result.content_type,
            "InvokedProductionVariant": variant,
            "ResponseMetadata": _metadata(200, headers),
        }

    def _serving(self, name: str):
        try:
            return self.hosting.serving(name)
        except NotServing:
            raise self._not_found(name) from None

    def _not_found(self, name: str) -> ClientError:
        return runtime_error("ValidationError", f"Endpoint {name} of account {self.account_id} not found.")

    def _unreachable(self, name: str, err: process.EndpointError) -> ClientError:
        """The server did not answer: if it died the endpoint is now Failed (describe_endpoint says why)
        and, like any endpoint not InService, not found; if it lives, it timed out (as SageMaker says)."""
        try:
            still_serving = self.hosting.get_endpoint(name).status == "InService"
        except ValidationError:  # deleted meanwhile
            still_serving = False
        if not still_serving:
            return self._not_found(name)
        return runtime_error(
            "ModelError",
            f'Received server error (0) from primary with message "{err}". '
            f"See {self._log_hint(name)} in account {self.account_id} for more information.",
            424,
            OriginalStatusCode=0,
            OriginalMessage=str(err),
            LogStreamArn=self._log_stream_arn(name),
        )

    def _model_error(self, name: str, record: process.EndpointRecord, result: process.InvokeResult) -> ClientError:
        side = "client" if result.status < 500 else "server"
        text = result.body.decode(errors="replace")
        return runtime_error(
            "ModelError",
            f'Received {side} error ({result.status}) from primary with message "{text}". '
            f"See {record.log or self._log_hint(name)} in account {self.account_id} for more information.",
            424,
            OriginalStatusCode=result.status,
            OriginalMessage=text,
            LogStreamArn=self._log_stream_arn(name),
        )

    def _log_hint(self, name: str) -> str:
        return f"the log of endpoint {name} under {process.endpoints_dir(self.home)}"

    def _log_stream_arn(self, name: str) -> str:
        return f"arn:aws:logs:{self.region}:{self.account_id}:log-group:/aws/sagemaker/Endpoints/{name}"


def _body_bytes(body: Any) -> bytes:
    """Body as boto3 takes it: bytes, bytearray, str, or a readable file-like object."""
    if hasattr(body, "read"):
        body = body.read()
    if isinstance(body, str):
        return body.encode()
    return bytes(body)
