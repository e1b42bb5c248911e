"""Hosting in the local SageMaker service: models, endpoint configs and endpoints (state and semantics).

An endpoint is served by ``mlops_dagster.serving.process``: one detached server per *environment*
(the record ``$MLOPS_HOME/endpoints/<env>.json``), with blue/green deploys that check the model's
sha256 and smoke-test it before switching. The environment is the endpoint's ``mlops:environment``
tag, else its name. The tables live in the service's ``state.db`` beside the pipeline tables.

Where this differs from SageMaker, on purpose:

- CreateEndpoint and UpdateEndpoint deploy **synchronously, inside the call**: the endpoint is
  ``Creating``/``Updating`` while the call runs, and when it returns it is ``InService``, or
  ``Failed`` (create), or back ``InService`` on its old config with FailureReason
  ``update rolled back: <reason>`` (a refused update). An ``endpoint_in_service`` waiter called
  afterwards finds the end state on its first DescribeEndpoint.
- One production variant per endpoint config, served by one local process whatever
  ``InitialInstanceCount`` says (``CurrentInstanceCount`` reports 1).
- UpdateEndpoint also accepts a ``Failed`` endpoint (SageMaker wants delete and create): it starts
  a new server (the old one died, or the create was refused) and deploys the new config.
- A model artifact must be an ``s3://`` object in the local ObjectStore, a ``model.tar.gz`` of
  training/inference.py's format, whose sha256 is recorded and matches before it is unpickled
  (a pickle runs code when it is loaded): a model created from a package (``ModelPackageName``)
  uses the package's CustomerMetadataProperties ``mlops:model_sha256`` (the pipeline's
  RegisterModel step records it); a model created with a direct ``ModelDataUrl`` must carry a
  tag ``mlops:model_sha256`` (CreateModel refuses it otherwise). An artifact without a recorded
  hash, or with another one, is refused and the model that serves keeps serving.
- Constructs the local server cannot honour (async inference, shadow variants, multi-model
  containers) are refused with a ValidationException, not silently ignored.
- ``DataCaptureConfig`` is honoured: checked at CreateEndpointConfig (a shape SageMaker would
  refuse is a ValidationException naming the field; ``KmsKeyId`` is accepted and not used: the
  local store does not encrypt), sent to the server with each deploy, and the server captures to
  the local ObjectStore (``mlops_dagster.monitoring.capture``). DescribeEndpoint reports it as
  SageMaker does (``DataCaptureConfig``: EnableCapture, CaptureStatus, CurrentSamplingPercentage,
  DestinationS3Uri). Only ``s3://`` destinations (SageMaker also takes https://).

Endpoints whose deploy was cut short (the calling process died) or whose server process died are
detected when they are next read (pid + create time, and /ping), so none stays ``Creating``,
``Updating`` or ``InService`` forever.
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
import re
import shutil
import tarfile
import tempfile
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlops_dagster.monitoring.capture import CaptureConfigError, CaptureSettings, data_capture_summary
from mlops_dagster.serving import gateway, process

from .models import (
    SHA256,
    SHA256_PROPERTY,
    Record,
    RecordT,
    ResourceNotFound,
    ValidationError,
    _drop_none,
    _process_created,
    _process_matches,
    utc,
)

if TYPE_CHECKING:
    from mlops_dagster.resources.object_store import ObjectStore

    from .models import LocalSageMakerBackend

ENVIRONMENT_TAG = "mlops:environment"
# SHA256_PROPERTY ("mlops:model_sha256"): in a package's CustomerMetadataProperties, or a model's tag
SMOKE_ROWS_VARIABLE = "MLOPS_SMOKE_ROWS"  # in a container's Environment
FEATURES_JSON_LIMIT = 1 << 20  # features.json is a list of names; anything larger is not one
IN_PROGRESS = ("Creating", "Updating")
NAME = re.compile(r"[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}")  # endpoint, config and variant names

# CreateModel / CreateEndpointConfig fields that the Describe calls echo back.
MODEL_FIELDS = (
    "PrimaryContainer",
    "Containers",
    "InferenceExecutionConfig",
    "ExecutionRoleArn",
    "VpcConfig",
    "EnableNetworkIsolation",
)
CONFIG_FIELDS = (
    "ProductionVariants", "DataCaptureConfig", "KmsKeyId", "ExecutionRoleArn", "VpcConfig", "EnableNetworkIsolation",
)  # fmt: skip
UNSUPPORTED_CONFIG = {
    "AsyncInferenceConfig": "asynchronous inference",
    "ShadowProductionVariants": "shadow variants",
    "ExplainerConfig": "online explainability",
}

HOSTING_SCHEMA = """
CREATE TABLE IF NOT EXISTS hosting_models (
    name TEXT NOT NULL, arn TEXT PRIMARY KEY, request TEXT NOT NULL, created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS hosting_endpoint_configs (
    name TEXT NOT NULL, arn TEXT PRIMARY KEY, request TEXT NOT NULL, created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS hosting_endpoints (
    name TEXT NOT NULL, arn TEXT PRIMARY KEY, env TEXT NOT NULL UNIQUE, config_name TEXT NOT NULL,
    status TEXT NOT NULL, failure_reason TEXT, tags TEXT NOT NULL, deployment_config TEXT,
    live TEXT, pending TEXT, owner_pid INTEGER, owner_created REAL,
    created REAL NOT NULL, modified REAL NOT NULL
);
"""


class Refused(Exception):
    """This service will not deploy a model (before the server saw it); ``reason`` says why."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class NotServing(Exception):
    """The endpoint does not exist or is not InService (InvokeEndpoint's "not found")."""


# --- records ---------------------------------------------------------------------------------


@dataclass
class HostedModel(Record):
    JSON_FIELDS = ("request",)
    name: str
    arn: str
    request: dict
    created: float

    def describe(self) -> dict:
        response = {"ModelName": self.name, "ModelArn": self.arn, "CreationTime": utc(self.created)}
        response.update({k: self.request[k] for k in MODEL_FIELDS if k in self.request})
        response.setdefault("EnableNetworkIsolation", False)
        return response

    def summary(self) -> dict:
        return {"ModelName": self.name, "ModelArn": self.arn, "CreationTime": utc(self.created)}

    def container(self) -> dict:
        return self.request.get("PrimaryContainer") or self.request["Containers"][0]


@dataclass
class EndpointConfig(Record):
    JSON_FIELDS = ("request",)
    name: str
    arn: str
    request: dict
    created: float

    def describe(self) -> dict:
        response = {"EndpointConfigName": self.name, "EndpointConfigArn": self.arn, "CreationTime": utc(self.created)}
        response.update({k: self.request[k] for k in CONFIG_FIELDS if k in self.request})
        response["ProductionVariants"] = [
            {"InitialVariantWeight": 1.0, **v} for v in self.request["ProductionVariants"]
        ]
        return response

    def summary(self) -> dict:
        return {"EndpointConfigName": self.name, "EndpointConfigArn": self.arn, "CreationTime": utc(self.created)}


@dataclass
class Endpoint(Record):
    """``live``: what the server serves for this endpoint (config, variant, model, package, sha256).
    ``pending``: the deploy in progress (its config, and its ``live`` once the artifact is fetched).
    ``owner_pid``/``owner_created``: the process running that deploy, to detect one that died."""

    JSON_FIELDS = ("tags", "deployment_config", "live", "pending")
    name: str
    arn: str
    env: str
    config_name: str
    status: str
    failure_reason: str | None
    tags: list
    deployment_config: dict | None
    live: dict | None
    pending: dict | None
    owner_pid: int | None
    owner_created: float | None
    created: float
    modified: float

    def describe(self) -> dict:
        response = {
            "EndpointName": self.name,
            "EndpointArn": self.arn,
            "EndpointConfigName": self.config_name,
            "ProductionVariants": [self._variant_summary()] if self.live else None,
            "DataCaptureConfig": (self.live or {}).get("data_capture"),
            "EndpointStatus": self.status,
            "FailureReason": self.failure_reason,
            "CreationTime": utc(self.created),
            "LastModifiedTime": utc(self.modified),
            "LastDeploymentConfig": self.deployment_config,
        }
        if self.status == "Updating" and self.pending:
            response["PendingDeploymentSummary"] = {
                "EndpointConfigName": self.pending["config_name"],
                "StartTime": utc(self.pending["started"]),
            }
        return _drop_none(response)

    def _variant_summary(self) -> dict:
        live = self.live
        images = []
        if live.get("image"):
            # No registry to resolve a digest from: the resolved image is the one specified.
            images = [
                {
                    "SpecifiedImage": live["image"],
                    "ResolvedImage": live["image"],
                    "ResolutionTime": utc(live["deployed"]),
                }
            ]
        return {
            "VariantName": live["variant_name"],
            "DeployedImages": images,
            "CurrentWeight": live["weight"],
            "DesiredWeight": live["weight"],
            "CurrentInstanceCount": 1,  # one local server process
            "DesiredInstanceCount": live["instance_count"],
        }

    def summary(self) -> dict:
        return {
            "EndpointName": self.name,
            "EndpointArn": self.arn,
            "CreationTime": utc(self.created),
            "LastModifiedTime": utc(self.modified),
            "EndpointStatus": self.status,
        }


@dataclass(frozen=True)
class Target:
    """What an endpoint config deploys, resolved down to one artifact URI and its expected hash."""

    config_name: str
    variant: dict
    model_name: str
    image: str | None
    package_arn: str | None
    model_data_url: str
    expected_sha256: str | None
    environment: dict
    data_capture: dict | None = None  # the config's DataCaptureConfig, as CreateEndpointConfig took it

    def source(self) -> str:
        via = f"model package {self.package_arn}, " if self.package_arn else ""
        return f"model {self.model_name} ({via}{self.model_data_url})"

    def hash_holder(self) -> str:
        """Where the expected sha256 is recorded: the package, else the model's tag."""
        if self.package_arn:
            return f"model package {self.package_arn} records {SHA256_PROPERTY}"
        return f"model {self.model_name}'s tag {SHA256_PROPERTY} records"

    def unrecorded(self) -> str:
        return unrecorded_reason(self.model_name, self.package_arn, self.model_data_url)

    def live(self, sha256: str) -> dict:
        return {
            "config_name": self.config_name,
            "variant_name": self.variant["VariantName"],
            "model_name": self.model_name,
            "image": self.image,
            "package_arn": self.package_arn,
            "model_data_url": self.model_data_url,
            "sha256": sha256,
            "weight": float(self.variant.get("InitialVariantWeight", 1.0)),
            "instance_count": int(self.variant.get("InitialInstanceCount", 1)),
            "deployed": time.time(),
            "data_capture": data_capture_summary(self.data_capture),
        }

    def capture(self, endpoint_name: str, store: ObjectStore | None) -> dict | None:
        """What the server is sent to capture with (process.deploy's ``capture``); None: no capture."""
        if not self.data_capture:
            return None
        try:
            settings = CaptureSettings.from_data_capture_config(
                self.data_capture, endpoint_name, self.variant["VariantName"]
            )
        except CaptureConfigError as err:  # checked at CreateEndpointConfig: only an old record gets here
            raise Refused(f"endpoint config {self.config_name}: {err}") from None
        if settings is None:
            return None
        root = getattr(store, "root", None)
        if root is None:
            raise Refused(f"endpoint config {self.config_name}: data capture needs the local object store")
        return {"settings": settings.to_dict(), "store_root": str(Path(root).resolve())}


# --- the backend -----------------------------------------------------------------------------


class HostingBackend:
    """Models, endpoint configs and endpoints of the local SageMaker service.

    ``registry`` is the service's backend (state.db, ARNs, the model registry); ``store`` the
    ObjectStore model artifacts are downloaded from (None for a backend that only looks endpoints
    up, as the runtime's does).
    """

    def __init__(self, home: Path | str, registry: LocalSageMakerBackend, store: ObjectStore | None = None):
        self.home = Path(home)
        self.registry = registry
        self.store = store
        self.db = registry.db
        with self.db.read() as conn:
            conn.executescript(HOSTING_SCHEMA)  # idempotent (IF NOT EXISTS), and cheap

    @property
    def models_dir(self) -> Path:
        """Downloaded artifacts, one directory per sha256 (the server copies from here)."""
        return self.registry.root / "models"

    def arn(self, resource: str, name: str) -> str:
        return self.registry.arn(resource, name)

    def _by_arn(self, table: str, arn: str, record: type[RecordT], what: str) -> RecordT:
        """The ``record`` of the ``table`` row with this ARN; else SageMaker's ValidationException about ``what``."""
        with self.db.read() as conn:
            row = conn.execute(f"SELECT * FROM {table} WHERE arn = ?", (arn,)).fetchone()
        if row is None:
            raise ValidationError(f'Could not find {what} "{arn}".')
        return record.from_row(row)

    def _insert_request(self, table: str, name: str, arn: str, params: dict, *, what: str) -> None:
        """Record a Create call as a (name, arn, request, created) row of ``table``, the request being its
        params that are not None; a ValidationException about ``what`` if ``arn`` is already there."""
        request = {k: v for k, v in params.items() if v is not None}
        with self.db.write() as conn:
            if conn.execute(f"SELECT 1 FROM {table} WHERE arn = ?", (arn,)).fetchone():
                raise ValidationError(f'Cannot create already existing {what} "{arn}".')
            conn.execute(f"INSERT INTO {table} VALUES (?, ?, ?, ?)", (name, arn, json.dumps(request), time.time()))

    # models

    def create_model(self, params: dict) -> HostedModel:
        name = params["ModelName"]
        _check_name(name, "ModelName")
        container = _single_container(params)
        self._check_container(container, name, params.get("Tags") or [])
        self._insert_request("hosting_models", name, self.arn("model", name), params, what="model")
        return self.get_model(name)

    def _check_container(self, container: dict, model: str, tags: list[dict]) -> None:
        """Refuse at CreateModel what a deploy could never serve (SageMaker checks these up front too)."""
        if container.get("Mode") == "MultiModel" or container.get("MultiModelConfig"):
            raise ValidationError(f"model {model}: multi-model containers are not supported by the local service")
        if container.get("ModelDataSource") or container.get("AdditionalModelDataSources"):
            raise ValidationError(
                f"model {model}: ModelDataSource is not supported by the local service; give ModelDataUrl "
                "(an s3:// model.tar.gz) or ModelPackageName"
            )
        if container.get("ModelPackageName"):
            try:
                self._package_container(container["ModelPackageName"])
            except Refused as err:
                raise ValidationError(f"model {model}: {err.reason}") from None
        elif not container.get("Image"):
            raise ValidationError(f"model {model}: the container needs Image (or ModelPackageName)")
        elif not container.get("ModelDataUrl"):
            raise ValidationError(
                f"model {model}: the local service serves model artifacts only; give ModelDataUrl (s3://...model.tar.gz)"
            )
        elif _tagged_sha256(tags, model) is None:
            raise ValidationError(unrecorded_reason(model, None, container["ModelDataUrl"]))
        try:
            _smoke_rows_from(container.get("Environment") or {})
        except ValueError as err:
            raise ValidationError(f"model {model}: {err}") from None

    def get_model(self, name: str) -> HostedModel:
        return self._by_arn("hosting_models", self.arn("model", name), HostedModel, "model")

    def delete_model(self, name: str) -> None:
        model = self.get_model(name)  # endpoints that serve it keep serving, as on SageMaker
        with self.db.write() as conn:
            conn.execute("DELETE FROM hosting_models WHERE arn = ?", (model.arn,))

    def list_models(self) -> list[HostedModel]:
        with self.db.read() as conn:
            return [HostedModel.from_row(r) for r in conn.execute("SELECT * FROM hosting_models")]

    # endpoint configs

    def create_endpoint_config(self, params: dict) -> EndpointConfig:
        name = params["EndpointConfigName"]
        _check_name(name, "EndpointConfigName")
        for key, what in UNSUPPORTED_CONFIG.items():
            if params.get(key):
                raise ValidationError(f"endpoint config {name}: {key} ({what}) is not supported by the local service")
        variants = params["ProductionVariants"]
        if len(variants) != 1:
            raise ValidationError(
                f"endpoint config {name}: the local service serves one production variant per endpoint, got {len(variants)}"
            )
        _check_name(variants[0]["VariantName"], "VariantName")
        if params.get("DataCaptureConfig") is not None:
            try:
                CaptureSettings.from_data_capture_config(
                    params["DataCaptureConfig"], "check", variants[0]["VariantName"]
                )
            except CaptureConfigError as err:
                raise ValidationError(f"endpoint config {name}: {err}") from None
        self.get_model(variants[0]["ModelName"])  # SageMaker also refuses a config of an unknown model
        arn = self.arn("endpoint-config", name)
        self._insert_request("hosting_endpoint_configs", name, arn, params, what="endpoint configuration")
        return self.get_endpoint_config(name)

    def get_endpoint_config(self, name: str) -> EndpointConfig:
        arn = self.arn("endpoint-config", name)
        return self._by_arn("hosting_endpoint_configs", arn, EndpointConfig, "endpoint configuration")

    def delete_endpoint_config(self, name: str) -> None:
        config = self.get_endpoint_config(name)  # an endpoint running it keeps running, as on SageMaker
        with self.db.write() as conn:
            conn.execute("DELETE FROM hosting_endpoint_configs WHERE arn = ?", (config.arn,))

    def list_endpoint_configs(self) -> list[EndpointConfig]:
        with self.db.read() as conn:
            return [EndpointConfig.from_row(r) for r in conn.execute("SELECT * FROM hosting_endpoint_configs")]

    # endpoints: create, update, delete

    def create_endpoint(
        self, name: str, config_name: str, tags: list[dict] | None, deployment_config: dict | None
    ) -> Endpoint:
        """Record the endpoint (Creating), deploy its config, and return it InService or Failed."""
        _check_name(name, "EndpointName")
        self.get_endpoint_config(config_name)
        env = _environment(name, tags or [])
        endpoint = self._insert_endpoint(name, env, config_name, tags or [], deployment_config)
        return self._roll_out(endpoint, config_name, creating=True)

    def _insert_endpoint(
        self, name: str, env: str, config_name: str, tags: list[dict], deployment_config: dict | None
    ) -> Endpoint:
        arn, now = self.arn("endpoint", name), time.time()
        pending = {"config_name": config_name, "started": now}
        with self.db.write() as conn:
            if conn.execute("SELECT 1 FROM hosting_endpoints WHERE arn = ?", (arn,)).fetchone():
                raise ValidationError(f'Cannot create already existing endpoint "{arn}".')
            other = conn.execute("SELECT name FROM hosting_endpoints WHERE env = ?", (env,)).fetchone()
            if other is not None:
                raise ValidationError(
                    f"endpoint {other['name']} already serves environment {env} "
                    f"({process.record_path(self.home, env)}); delete it, or tag endpoint {name} with "
                    f"another {ENVIRONMENT_TAG}"
                )
            conn.execute(
                "INSERT INTO hosting_endpoints VALUES (?, ?, ?, ?, 'Creating', NULL, ?, ?, NULL, ?, ?, ?, ?, ?)",
                (
                    name, arn, env, config_name, json.dumps(tags), _json_or_none(deployment_config),
                    json.dumps(pending), os.getpid(), _process_created(os.getpid()), now, now,
                ),
            )  # fmt: skip
        return self._endpoint_by_arn(arn)

    def update_endpoint(
        self, name: str, config_name: str, deployment_config: dict | None, retain_deployment_config: bool = False
    ) -> Endpoint:
        """Deploy ``config_name`` blue/green into the endpoint's server (a new one if it died)."""
        endpoint = self.get_endpoint(name)
        self.get_endpoint_config(config_name)
        if endpoint.status in IN_PROGRESS:
            raise ValidationError(f'Cannot update in-progress endpoint "{endpoint.arn}".')
        if retain_deployment_config and deployment_config is None:
            deployment_config = endpoint.deployment_config
        pending = {"config_name": config_name, "started": time.time()}
        with self.db.write() as conn:
            claimed = conn.execute(
                "UPDATE hosting_endpoints SET status = 'Updating', pending = ?, deployment_config = ?,"
                " owner_pid = ?, owner_created = ?, modified = ? WHERE arn = ? AND status = ?",
                (
                    json.dumps(pending), _json_or_none(deployment_config), os.getpid(),
                    _process_created(os.getpid()), time.time(), endpoint.arn, endpoint.status,
                ),
            ).rowcount  # fmt: skip
        if not claimed:  # another caller started an update (or deleted it) since we read it
            raise ValidationError(f'Cannot update in-progress endpoint "{endpoint.arn}".')
        return self._roll_out(self._endpoint_by_arn(endpoint.arn), config_name, creating=False)

    def delete_endpoint(self, name: str) -> None:
        """Stop the endpoint's server (a dead one is fine) and forget the endpoint."""
        endpoint = self.get_endpoint(name, check_server=False)
        if endpoint.status in IN_PROGRESS:
            raise ValidationError(
                f'Cannot delete in-progress endpoint "{endpoint.arn}": process {endpoint.owner_pid} is deploying '
                f"{(endpoint.pending or {}).get('config_name')} to it"
            )
        process.stop_endpoint(self.home, endpoint.env)
        with self.db.write() as conn:
            conn.execute("DELETE FROM hosting_endpoints WHERE arn = ?", (endpoint.arn,))

    # endpoints: reading

    def get_endpoint(self, name: str, check_server: bool = True) -> Endpoint:
        """The endpoint, after noticing a deploy whose process died or (``check_server``) a dead server."""
        endpoint = self._endpoint_by_arn(self.arn("endpoint", name))
        return self._refresh(endpoint, check_server)

    def list_endpoints(self) -> list[Endpoint]:
        with self.db.read() as conn:
            endpoints = [Endpoint.from_row(r) for r in conn.execute("SELECT * FROM hosting_endpoints")]
        return [self._refresh(e, check_server=True) for e in endpoints]

    def _endpoint_by_arn(self, arn: str) -> Endpoint:
        return self._by_arn("hosting_endpoints", arn, Endpoint, "endpoint")

    def serving(self, name: str) -> tuple[Endpoint, process.EndpointRecord]:
        """The InService endpoint and its server record, for InvokeEndpoint. Reads state only: the
        server is not pinged here (that would double each request); a failed request checks it."""
        try:
            endpoint = self._endpoint_by_arn(self.arn("endpoint", name))
        except ValidationError:
            raise NotServing(name) from None
        if endpoint.status != "InService":
            raise NotServing(name)
        record = _read_record(self.home, endpoint.env)
        if record is None:
            self._refresh(endpoint, check_server=True)  # records why: describe_endpoint will say
            raise NotServing(name)
        return endpoint, record

    def endpoint_url(self, name: str) -> str:
        endpoint = self.get_endpoint(name)
        record = process.read_endpoint(self.home, endpoint.env)
        if endpoint.status != "InService" or record is None:
            raise ValidationError(
                f"endpoint {name} ({endpoint.arn}) is {endpoint.status}, not InService: "
                f"{endpoint.failure_reason or 'no server is running'}"
            )
        return f"{record.url}/invocations"

    def stop_all(self) -> list[str]:
        """Stop every endpoint's server (local only); the endpoints stay, Failed, until updated or deleted.
        Returns the names of the endpoints whose server was running."""
        with self.db.read() as conn:
            endpoints = [Endpoint.from_row(r) for r in conn.execute("SELECT * FROM hosting_endpoints")]
        stopped = []
        for endpoint in endpoints:
            if process.stop_endpoint(self.home, endpoint.env):
                stopped.append(endpoint.name)
            if endpoint.status == "InService":  # a Failed one keeps the reason it failed for
                self._set_state(
                    endpoint.arn,
                    "Failed",
                    f"the local server of endpoint {endpoint.name} was stopped (stop_all_endpoints); "
                    "UpdateEndpoint starts a new one",
                    expect=endpoint,
                )
        return stopped

    # the deploy

    def _roll_out(self, endpoint: Endpoint, config_name: str, creating: bool) -> Endpoint:
        """Resolve, fetch, check and deploy ``config_name``; record the outcome (never left in progress)."""
        started = False
        # The SageMaker Runtime gateway starts (a process importing its web stack) while the
        # endpoint's server starts and loads the model: on 2 cores the two overlap.
        gateway_up = self._ensure_gateway_async()
        try:
            target = self._resolve(config_name)
            archive, sha256 = self._fetch(target)
            live = target.live(sha256)
            self._set_pending_live(endpoint.arn, live)
            rows = self._smoke_rows(target, archive)
            capture = target.capture(endpoint.name, self.store)
            ensured = process.ensure_endpoint(self.home, endpoint.env)
            started = ensured.started
            process.deploy(ensured.record, archive, sha256, target.package_arn, rows, capture=capture)
        except (Refused, process.EndpointError) as err:  # DeployRefused is an EndpointError
            reason = err.reason if isinstance(err, (Refused, process.DeployRefused)) else str(err)
            self._settle_gateway(gateway_up, deployed=False)
            return self._deploy_failed(endpoint, reason, creating, started)
        except BaseException as err:
            self._settle_gateway(gateway_up, deployed=False)
            self._deploy_failed(endpoint, f"internal error: {type(err).__name__}: {err}", creating, started)
            raise
        self._finish(endpoint.arn, "InService", None, config_name, live)
        # boto3 and the SDK reach InService endpoints through the gateway (runtime.json): up with the
        # first one, restarted here if it died.
        self._settle_gateway(gateway_up, deployed=True)
        return self._endpoint_by_arn(endpoint.arn)

    def _ensure_gateway_async(self) -> Future:
        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="runtime-gateway")
        try:
            return pool.submit(gateway.ensure_gateway, self.home, self.registry.region, self.registry.account_id)
        finally:
            pool.shutdown(wait=False)  # the thread ends with its one task

    def _settle_gateway(self, gateway_up: Future, deployed: bool) -> None:
        """After a deploy: the gateway's start must have worked (its error is the caller's). After a
        failed one, the deploy's error is what is reported: a gateway that failed to start is tried
        again by the next deploy, and one that serves no endpoint is stopped."""
        if deployed:
            gateway_up.result()
            return
        try:
            gateway_up.result()
        except process.EndpointError:
            return  # nothing runs: ensure_gateway killed its process before raising
        gateway.stop_if_idle(self.home)

    def _deploy_failed(self, endpoint: Endpoint, reason: str, creating: bool, started: bool) -> Endpoint:
        """Create: Failed. Update: the old config still serves (InService, rolled back) if its server
        is alive with a model; otherwise Failed. A server started here with no model is stopped."""
        record = _read_record(self.home, endpoint.env)
        serving = record is not None and record.sha256 is not None and process.is_alive(record)
        if started and not serving:
            process.stop_endpoint(self.home, endpoint.env)  # an idle server nobody can use
        if creating:
            self._finish(endpoint.arn, "Failed", f"deploy failed: {reason}", endpoint.config_name, None)
        elif serving:
            self._finish(
                endpoint.arn, "InService", f"update rolled back: {reason}", endpoint.config_name, endpoint.live
            )
        else:
            self._finish(
                endpoint.arn,
                "Failed",
                f"update failed and no model serves: {reason}",
                endpoint.config_name,
                endpoint.live,
            )
        return self._endpoint_by_arn(endpoint.arn)

    def _resolve(self, config_name: str) -> Target:
        try:
            config = self.get_endpoint_config(config_name)
            variant = config.request["ProductionVariants"][0]
            model = self.get_model(variant["ModelName"])
        except ValidationError as err:
            raise Refused(err.message) from None  # deleted since the call began
        container = model.container()
        image, url, environment = container.get("Image"), container.get("ModelDataUrl"), {}
        try:
            expected = _tagged_sha256(model.request.get("Tags") or [], model.name)
        except ValidationError as err:
            raise Refused(err.message) from None
        package_arn = container.get("ModelPackageName")
        if package_arn:
            package_container, expected = self._package_container(package_arn)
            image, url = image or package_container.get("Image"), package_container["ModelDataUrl"]
            environment.update(package_container.get("Environment") or {})
        environment.update(container.get("Environment") or {})
        capture = config.request.get("DataCaptureConfig")
        return Target(config_name, variant, model.name, image, package_arn, url, expected, environment, capture)

    def _package_container(self, package_arn: str) -> tuple[dict, str | None]:
        """(InferenceSpecification.Containers[0], the recorded sha256 or None) of a registered package."""
        try:
            package = self.registry.get_package(package_arn)
        except ResourceNotFound as err:  # the registry's message names the ARN and region
            raise Refused(f"ModelPackageName {package_arn}: {err.message}") from None
        containers = (package.body.get("InferenceSpecification") or {}).get("Containers") or []
        if not containers or not containers[0].get("ModelDataUrl"):
            raise Refused(f"model package {package.arn} has no InferenceSpecification.Containers[0].ModelDataUrl")
        expected = (package.body.get("CustomerMetadataProperties") or {}).get(SHA256_PROPERTY)
        if expected is not None and not SHA256.match(str(expected).lower()):
            raise Refused(f"model package {package.arn} records {SHA256_PROPERTY} {expected!r}, which is not a sha256")
        return containers[0], str(expected).lower() if expected else None

    def _fetch(self, target: Target) -> tuple[Path, str]:
        """Download the artifact to models/<sha256>/model.tar.gz and check it against the recorded hash.

        Nothing is downloaded without a recorded hash. Always downloaded (no cache by expected hash):
        an object replaced behind the registry's back must be refused, not masked by an earlier good copy."""
        if self.store is None:
            raise RuntimeError("this hosting backend has no ObjectStore to download model artifacts from")
        if target.expected_sha256 is None:
            raise Refused(target.unrecorded())
        self.models_dir.mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(prefix=".download-", dir=self.models_dir))
        try:
            try:
                downloaded = self.store.download(target.model_data_url, scratch / "model.tar.gz")
            except (FileNotFoundError, ValueError) as err:
                raise Refused(f"cannot fetch the artifact of {target.source()}: {err}") from None
            sha256 = _sha256_file(downloaded)
            if sha256 != target.expected_sha256:
                raise Refused(
                    f"the artifact {target.model_data_url} has sha256 {sha256}, but {target.hash_holder()} "
                    f"{target.expected_sha256}: refusing to deploy it"
                )
            final = self.models_dir / sha256 / "model.tar.gz"
            final.parent.mkdir(exist_ok=True)
            os.replace(downloaded, final)  # same bytes if it was there: replacing is harmless
            return final, sha256
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    def _smoke_rows(self, target: Target, archive: Path) -> list:
        """MLOPS_SMOKE_ROWS from the container, else one row of zeros as wide as features.json."""
        try:
            rows = _smoke_rows_from(target.environment)
        except ValueError as err:
            raise Refused(f"{target.source()}: {err}") from None
        if rows is not None:
            return rows
        features = _archive_features(archive, target)
        return [[0.0] * len(features)]

    # state transitions

    def _set_pending_live(self, arn: str, live: dict) -> None:
        with self.db.write() as conn:
            row = conn.execute("SELECT pending FROM hosting_endpoints WHERE arn = ?", (arn,)).fetchone()
            if row is not None and row["pending"]:
                pending = {**json.loads(row["pending"]), "live": live}
                conn.execute("UPDATE hosting_endpoints SET pending = ? WHERE arn = ?", (json.dumps(pending), arn))

    def _finish(self, arn: str, status: str, reason: str | None, config_name: str, live: dict | None) -> None:
        """End this process's deploy (a no-op if the endpoint was deleted or reconciled meanwhile)."""
        with self.db.write() as conn:
            conn.execute(
                "UPDATE hosting_endpoints SET status = ?, failure_reason = ?, config_name = ?, live = ?,"
                " pending = NULL, owner_pid = NULL, owner_created = NULL, modified = ? WHERE arn = ? AND owner_pid = ?",
                (status, reason, config_name, _json_or_none(live), time.time(), arn, os.getpid()),
            )

    def _set_state(
        self, arn: str, status: str, reason: str | None, expect: Endpoint | None = None, **columns: Any
    ) -> bool:
        """Set status and reason (and ``columns``); with ``expect``, only if the row is unchanged since."""
        assignments = "".join(f", {column} = ?" for column in columns)
        query = f"UPDATE hosting_endpoints SET status = ?, failure_reason = ?, modified = ?{assignments} WHERE arn = ?"
        args: list = [status, reason, time.time(), *(_column_value(v) for v in columns.values()), arn]
        if expect is not None:
            query += " AND status = ? AND modified = ?"
            args += [expect.status, expect.modified]
        with self.db.write() as conn:
            return conn.execute(query, args).rowcount == 1

    # noticing what died

    def _refresh(self, endpoint: Endpoint, check_server: bool) -> Endpoint:
        # (psutil takes a pid of None for this process: an ownerless deploy counts as abandoned)
        owner_gone = endpoint.owner_pid is None or not _process_matches(endpoint.owner_pid, endpoint.owner_created)
        if endpoint.status in IN_PROGRESS and owner_gone:
            self._reconcile_abandoned(endpoint)
        elif endpoint.status == "InService" and check_server:
            reason = self._dead_server_reason(endpoint)
            if reason:
                self._set_state(endpoint.arn, "Failed", reason, expect=endpoint)
            elif not gateway.runtime_path(self.home).exists():  # deployed before the gateway existed
                gateway.ensure_gateway(self.home, self.registry.region, self.registry.account_id)
        else:
            return endpoint
        return self._endpoint_by_arn(endpoint.arn)

    def _dead_server_reason(self, endpoint: Endpoint) -> str | None:
        try:
            record = process.read_endpoint(self.home, endpoint.env)
        except process.EndpointError as err:
            return f"the server record of endpoint {endpoint.name} is unreadable: {err}"
        if record is None:
            return (
                f"no local server is recorded for endpoint {endpoint.name} "
                f"({process.record_path(self.home, endpoint.env)} is gone: stopped outside the SageMaker API)"
            )
        if process.is_alive(record):
            return None
        return (
            f"the local server process of endpoint {endpoint.name} (pid {record.pid}, {record.url}) is not "
            f"running any more; UpdateEndpoint starts a new one (its log: {record.log})"
        )

    def _reconcile_abandoned(self, endpoint: Endpoint) -> None:
        """A deploy whose process died: settle on what the server actually serves."""
        pending = endpoint.pending or {}
        doing = "creating" if endpoint.status == "Creating" else "updating"
        why = f"the process (pid {endpoint.owner_pid}) {doing} endpoint {endpoint.name} exited before it finished"
        record = _read_record(self.home, endpoint.env)
        serving = record.sha256 if record is not None and process.is_alive(record) else None
        candidate = pending.get("live")
        if serving and candidate and serving == candidate["sha256"]:  # it got as far as the switch
            self._set_state(
                endpoint.arn, "InService", None, expect=endpoint, config_name=pending["config_name"], live=candidate,
                pending=None, owner_pid=None, owner_created=None,
            )  # fmt: skip
        elif serving and endpoint.live and serving == endpoint.live["sha256"]:
            self._set_state(
                endpoint.arn, "InService", f"update rolled back: {why}", expect=endpoint, pending=None,
                owner_pid=None, owner_created=None,
            )  # fmt: skip
        else:
            self._set_state(
                endpoint.arn, "Failed", why, expect=endpoint, pending=None, owner_pid=None, owner_created=None
            )


# --- helpers ---------------------------------------------------------------------------------


def _check_name(name: str, member: str) -> None:
    """SageMaker's name rule (botocore's client checks types, not patterns)."""
    if not NAME.fullmatch(name or ""):
        raise ValidationError(
            f"{member} {name!r} must be 1 to 63 letters, digits and hyphens, starting and ending with a letter or digit"
        )


def unrecorded_reason(model: str, package_arn: str | None, model_data_url: str) -> str:
    """Why an artifact without a recorded sha256 is not loaded, and how to record one."""
    if package_arn:
        return (
            f"model package {package_arn} records no {SHA256_PROPERTY} in its CustomerMetadataProperties, "
            f"so its artifact {model_data_url} is not loaded (a pickle runs code when it is loaded): "
            "record the sha256 of the model.tar.gz you trust with UpdateModelPackage("
            f"ModelPackageArn=..., CustomerMetadataProperties={{'{SHA256_PROPERTY}': '<sha256>'}}), "
            "or materialize trained_model and registered_model for the execution that registered it"
        )
    return (
        f"model {model} gives ModelDataUrl {model_data_url} without a {SHA256_PROPERTY} tag, so the "
        "artifact is not loaded (a pickle runs code when it is loaded): create the model with "
        f"Tags=[{{'Key': '{SHA256_PROPERTY}', 'Value': '<sha256 of the model.tar.gz>'}}], or from a "
        "registered model package (ModelPackageName)"
    )


def _tagged_sha256(tags: list[dict], model: str) -> str | None:
    """The ``mlops:model_sha256`` tag of a model (lower case), None without one; not a sha256: an error."""
    value = next((t.get("Value") for t in tags if t.get("Key") == SHA256_PROPERTY), None)
    if value is None:
        return None
    if not SHA256.match(value.lower()):
        raise ValidationError(f"model {model}: tag {SHA256_PROPERTY} {value!r} is not a sha256 (64 hex digits)")
    return value.lower()


def _single_container(params: dict) -> dict:
    primary, containers = params.get("PrimaryContainer"), params.get("Containers")
    if primary and containers:
        raise ValidationError(f"model {params['ModelName']}: give PrimaryContainer or Containers, not both")
    if containers and len(containers) > 1:
        raise ValidationError(
            f"model {params['ModelName']}: the local service serves one container per model, got {len(containers)}"
        )
    container = primary or (containers[0] if containers else None)
    if not container:
        raise ValidationError(f"model {params['ModelName']}: PrimaryContainer is required")
    return container


def _environment(name: str, tags: list[dict]) -> str:
    """The serving environment (endpoints/<env>.json): the mlops:environment tag, else the name."""
    env = next((t["Value"] for t in tags if t.get("Key") == ENVIRONMENT_TAG), name)
    try:
        if env == gateway.RESERVED_ENV:
            raise ValueError(f"{env!r} is reserved (endpoints/{gateway.RUNTIME_FILE} is the runtime gateway's)")
        return process.check_env(env)
    except ValueError as err:
        source = f"its {ENVIRONMENT_TAG} tag" if env != name else f"its name (no {ENVIRONMENT_TAG} tag)"
        raise ValidationError(f"endpoint {name}: the environment from {source} is not usable: {err}") from None


def _smoke_rows_from(environment: dict) -> list | None:
    """MLOPS_SMOKE_ROWS: a non-empty JSON list of rows (lists of feature values, or records); None if unset."""
    text = environment.get(SMOKE_ROWS_VARIABLE)
    if text is None:
        return None
    try:
        rows = json.loads(text)
    except ValueError as err:
        raise ValueError(f"{SMOKE_ROWS_VARIABLE} is not JSON ({err})") from None
    if not isinstance(rows, list) or not rows or not all(isinstance(r, (list, dict)) for r in rows):
        raise ValueError(f"{SMOKE_ROWS_VARIABLE} must be a non-empty JSON list of rows (lists or records)")
    return rows


def _archive_features(archive: Path, target: Target) -> list[str]:
    """features.json from the archive root, read (never extracted, never unpickled) after tarfile's
    data filter has accepted its member."""
    try:
        with tarfile.open(archive, "r:*") as tar:
            member = next((m for m in tar if posixpath.normpath(m.name) == "features.json"), None)
            if member is None:
                raise Refused(
                    f"{target.source()}: no {SMOKE_ROWS_VARIABLE} in the container Environment and no "
                    "features.json at the archive root to build a smoke row from"
                )
            member = tarfile.data_filter(member, str(archive.parent))
            if not member.isfile() or member.size > FEATURES_JSON_LIMIT:
                raise Refused(f"{target.source()}: features.json is not a small regular file")
            features = json.loads(tar.extractfile(member).read())
    except (tarfile.TarError, OSError, EOFError, ValueError) as err:
        raise Refused(
            f"{target.source()}: the artifact is not a readable model.tar.gz ({type(err).__name__}: {err})"
        ) from None
    if not isinstance(features, list) or not features or not all(isinstance(f, str) for f in features):
        raise Refused(f"{target.source()}: features.json is not a non-empty list of feature names")
    return features


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def _read_record(home: Path, env: str) -> process.EndpointRecord | None:
    try:
        return process.read_endpoint(home, env)
    except process.EndpointError:
        return None


def _json_or_none(value: Any) -> str | None:
    return None if value is None else json.dumps(value)


def _column_value(value: Any) -> Any:
    return json.dumps(value) if isinstance(value, (dict, list)) else value
