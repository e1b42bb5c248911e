"""Local model endpoints: SageMaker's inference contract served on 127.0.0.1, one server per environment.

``app`` is the server (starlette; handlers from training/inference.py, shared with the SageMaker
container); ``process`` starts, finds, deploys to and stops the detached server of an environment.
Only ``process`` is imported here: the server process imports ``app`` alone, and importing both
here would load it twice there.
"""

from .process import (
    DeployRefused,
    EndpointError,
    EndpointRecord,
    EnsureResult,
    InvokeResult,
    capture_status,
    deploy,
    endpoint_status,
    ensure_endpoint,
    flush_capture,
    invoke,
    is_alive,
    read_endpoint,
    start_endpoint,
    stop_endpoint,
)

__all__ = [
    "DeployRefused",
    "EndpointError",
    "EndpointRecord",
    "EnsureResult",
    "InvokeResult",
    "capture_status",
    "deploy",
    "endpoint_status",
    "ensure_endpoint",
    "flush_capture",
    "invoke",
    "is_alive",
    "read_endpoint",
    "start_endpoint",
    "stop_endpoint",
]
