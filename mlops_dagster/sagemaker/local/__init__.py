"""The local SageMaker service: pipeline definitions run on this machine, jobs as subprocesses (no Docker).

``LocalSageMakerService`` speaks the boto3 ``sagemaker`` client's methods and shapes; ``models``
holds the state (SQLite) and semantics, ``interpreter`` the definition language, ``worker`` the
detached process that runs an execution, ``jobs`` the training and processing jobs.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .runtime import LocalSageMakerRuntime
    from .service import LocalSageMakerService

__all__ = ["LocalSageMakerRuntime", "LocalSageMakerService"]
_HOMES = {"LocalSageMakerRuntime": ".runtime", "LocalSageMakerService": ".service"}


def __getattr__(name: str) -> Any:
    # Imported on first use: the worker process imports this package for ``worker`` and ``jobs``
    # and must not pay for the service and runtime (hosting, the serving and monitoring stacks).
    if name in _HOMES:
        return getattr(importlib.import_module(_HOMES[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
