"""The SageMaker seam: the boto3 ``sagemaker`` client (aws, in ``aws.py``) or the local SageMaker service.

Both speak boto3's method names, arguments and response shapes, so asset code is the same for
both. The resource also hands the SDK a boto session to build the pipeline definition with.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
from dagster import ConfigurableResource, InitResourceContext, MetadataValue

from ..naming import deployed_environments
from .object_store import ObjectStore

LOCAL_ACCOUNT_ID = "000000000000"
# Locally a check is a SQLite read, and the worker that runs the execution is a child process
# whose end can be waited on: short pauses notice the end within a fraction of a second.
LOCAL_POLL_SECONDS = 0.25

log = logging.getLogger(__name__)


class SageMaker(ConfigurableResource, ABC):
    @abstractmethod
    def get_client(self) -> Any:
        """A boto3-shaped ``sagemaker`` client."""

    @abstractmethod
    def sdk_boto_session(self) -> boto3.Session:
        """The boto session the SageMaker SDK builds the pipeline definition with."""

    @abstractmethod
    def execution_role_arn(self) -> str:
        """The IAM role SageMaker runs the pipeline's jobs as."""

    @abstractmethod
    def job_log_tail(self, job_name: str, kind: str, lines: int = 40) -> str:
        """The last lines of a training or processing job's log (CloudWatch or local file)."""

    @abstractmethod
    def get_runtime_client(self) -> Any:
        """A boto3-shaped ``sagemaker-runtime`` client (``invoke_endpoint``)."""

    @abstractmethod
    def console_link(self, kind: str, name: str) -> MetadataValue | None:
        """Where a person looks at a training-job, processing-job, pipeline-execution,
        model-package or endpoint: the AWS console page, or the local log/record file."""

    @abstractmethod
    def curl_command(self, endpoint_name: str, csv_row: str) -> str:
        """A ready-to-paste command that sends one CSV row to the endpoint and prints the prediction."""

    def setup_for_execution(self, context: InitResourceContext) -> None:
        """At the start of a run that names an endpoint asset in its selection (``dagster asset
        materialize``, the UI), hosting gets ready while the assets before it run. A job's run that
        names no selection prepares when it starts the pipeline execution (``pipeline_execution``)."""
        run = context.dagster_run
        selected = (run.asset_selection if run is not None else None) or set()
        deploying = deployed_environments(selected)
        if not deploying:
            return
        try:
            prepared = self.prepare_hosting(deploying[0])
        except (OSError, RuntimeError) as exc:  # the local endpoints' errors are RuntimeErrors
            # Getting ready early is only for speed: the deploy does it again and reports its error.
            log.warning("hosting for %s could not be prepared at the run's start: %s", deploying[0], exc)
            return
        if prepared and context.log is not None:
            context.log.info(prepared)

    def prepare_hosting(self, env: str) -> str | None:
        """Called when a run that will deploy to the ``env`` endpoint starts (or starts its pipeline
        execution). SageMaker provisions an endpoint's instances when the endpoint is created:
        nothing to do. Returns what was prepared, for the log."""
        return None

    def poll_pauses(self, max_poll: float) -> Iterator[float]:
        """Pauses between status checks of a running pipeline execution, endless. SageMaker's
        executions take minutes and its Describe/List calls are throttled: back off from 1 s,
        doubling up to ``max_poll``."""
        pause = 1.0
        while True:
            yield min(pause, max_poll)
            pause *= 2

    def wait_for_execution_change(self, execution_arn: str, seconds: float) -> None:
        """Wait up to ``seconds`` before the next status check of the execution."""
        time.sleep(seconds)


class LocalSageMaker(SageMaker):
    """The local SageMaker service: executions in detached workers, state in SQLite under home."""

    home: str
    region: str
    bucket: str
    store: ObjectStore

    def get_client(self):
        from ..sagemaker.local import LocalSageMakerService

        return LocalSageMakerService(Path(self.home), self.store, region=self.region, account_id=LOCAL_ACCOUNT_ID)

    def sdk_boto_session(self) -> boto3.Session:
        from ..sagemaker.offline import local_boto_session

        return local_boto_session(self.store, self.bucket, self.region)

    def execution_role_arn(self) -> str:
        return f"arn:aws:iam::{LOCAL_ACCOUNT_ID}:role/mlops-local-execution-role"

    def get_runtime_client(self):
        from ..sagemaker.local import LocalSageMakerRuntime

        return LocalSageMakerRuntime(Path(self.home), self.store, region=self.region)

    def console_link(self, kind: str, name: str) -> MetadataValue | None:
        home = Path(self.home)
        if kind in ("training-job", "processing-job"):
            return MetadataValue.path(str(self.get_client().job_log_path(name)))
        if kind == "pipeline-execution":
            return MetadataValue.path(str(home / "sagemaker" / "workers" / f"{name.rsplit('/', 1)[-1]}.log"))
        if kind == "endpoint":
            return MetadataValue.url(self.get_client().local_endpoint_url(name).replace("/invocations", "/ping"))
        return None  # the local registry has no page of its own; its state is in sagemaker/state.db

    def curl_command(self, endpoint_name: str, csv_row: str) -> str:
        url = self.get_client().local_endpoint_url(endpoint_name)
        return f"curl -s -X POST {url} -H 'Content-Type: text/csv' --data-binary '{csv_row}'"

    def prepare_hosting(self, env: str) -> str | None:
        """The SageMaker Runtime gateway starts (unless it is up), and unless ``env``'s server is up
        (a deploy loads the new model into it) a standby endpoint server imports the serving stack
        and the model's libraries, at the lowest CPU priority, while the pipeline trains; the
        endpoint's deploy adopts it (serving/standby.py)."""
        from ..serving import process, standby

        threading.Thread(
            target=_gateway_ahead, args=(Path(self.home), self.region), name="runtime-gateway-ahead", daemon=True
        ).start()
        record = process.read_endpoint(Path(self.home), env)
        if record is not None and process.is_alive(record):
            return None
        directory = process.endpoints_dir(Path(self.home))
        pid = standby.start(directory)
        if pid is None:
            return None
        return f"a standby endpoint server (pid {pid}) is starting for the deploy after training ({directory / standby.LOG})"

    def poll_pauses(self, max_poll: float) -> Iterator[float]:
        return itertools.repeat(min(LOCAL_POLL_SECONDS, max_poll))

    def wait_for_execution_change(self, execution_arn: str, seconds: float) -> None:
        """Returns early when the execution's worker, started by this process, exits (it has
        recorded the end status by then)."""
        from ..sagemaker.local import worker

        worker.wait(execution_arn, seconds)

    def job_log_tail(self, job_name: str, kind: str, lines: int = 40) -> str:
        path = self.get_client().job_log_path(job_name)
        if not path.is_file():
            return f"(no log at {path})"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def _gateway_ahead(home: Path, region: str) -> None:
    """Start the local SageMaker Runtime gateway before the deploy that needs it; the deploy starts
    it itself (and reports its error) when this did not work."""
    from ..serving import gateway, process

    try:
        gateway.ensure_gateway(home, region, LOCAL_ACCOUNT_ID, ahead=True)
    except (process.EndpointError, OSError) as exc:
        log.warning("the SageMaker Runtime gateway did not start ahead of the deploy (%s); the deploy starts it", exc)
