"""The local SageMaker service: pipeline definitions run on this machine, jobs as subprocesses (no Docker).

``LocalSageMakerService`` speaks the boto3 ``sagemaker`` client's methods and shapes; ``models``
holds the state (SQLite) and semantics, ``interpreter`` the definition language, ``worker`` the
detached process that runs an execution, ``jobs`` the training and processing jobs.
"""

from .runtime import LocalSageMakerRuntime
from .service import LocalSageMakerService

__all__ = ["LocalSageMakerRuntime", "LocalSageMakerService"]
