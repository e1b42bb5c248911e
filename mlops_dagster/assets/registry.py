"""The model registry (the recipe's first challenge): the registered model package with its
lineage, a gate against the model serving in prod, and the approval job."""

import hashlib
import json

from botocore.exceptions import ClientError
from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    AssetKey,
    AssetObservation,
    Config,
    DataVersion,
    Failure,
    MetadataValue,
    OpExecutionContext,
    Output,
    asset,
    job,
    op,
)
from pydantic import Field

from ..infrastructure import read_code_commit
from ..monitoring.baseline import PREDICTION_COLUMN, BaselineError
from ..monitoring.store import (
    PREDICTIONS_FILE,
    MissingBaselineError,
    baseline_locations,
    data_baseline,
    predictions_baseline,
    read_csv,
    write_model_baselines,
)
from ..resources.object_store import ObjectStore
from ..resources.sagemaker import SageMaker
from ..settings import Settings

APPROVAL_STATUSES = ("Approved", "Rejected", "PendingManualApproval")
PROD_ENDPOINT = AssetKey("prod_endpoint")
SHA256_PROPERTY = "mlops:model_sha256"  # CustomerMetadataProperties key the deployments check
GATE_METRIC = "mse"  # lower is better; the pipeline's CheckQuality uses it too


class RegistryGateConfig(Config):
    max_mse_increase: float = Field(
        default=0.0, ge=0, description="how much higher than prod's MSE (as a fraction) a new model may be"
    )


def _metrics_of_package(client, store: ObjectStore, package_arn: str) -> dict:
    """regression metrics from the package's ModelQuality statistics (evaluation.json)."""
    package = client.describe_model_package(ModelPackageName=package_arn)
    uri = package.get("ModelMetrics", {}).get("ModelQuality", {}).get("Statistics", {}).get("S3Uri")
    if not uri:
        return {}
    report = json.loads(store.get_bytes(uri))
    return {k: v.get("value") for k, v in report.get("regression_metrics", {}).items()}


def _serving_in_prod(context: AssetExecutionContext) -> str | None:
    event = context.instance.get_latest_materialization_event(PROD_ENDPOINT)
    entry = event.asset_materialization.metadata.get("model_package_arn") if event and event.asset_materialization else None
    return str(entry.value) if entry is not None and entry.value else None


def _lineage(client, store: ObjectStore, settings: Settings, trained_model: dict, run_tags: dict | None = None) -> dict:
    """Where the model came from: dataset (URI and file hashes), code commit, definition, run, and
    why the run ran (the triggers' mlops/trigger tag; a run started by hand has none)."""
    arn = trained_model["execution_arn"]
    parameters = {
        p["Name"]: p["Value"]
        for p in client.list_pipeline_parameters_for_execution(PipelineExecutionArn=arn)["PipelineParameters"]
    }
    dataset = parameters.get("InputData", "")
    manifest = {}
    if dataset and store.exists(dataset.rstrip("/") + "/manifest.json"):
        manifest = json.loads(store.get_bytes(dataset.rstrip("/") + "/manifest.json"))
    definition = client.describe_pipeline_definition_for_execution(PipelineExecutionArn=arn)["PipelineDefinition"]
    commit = read_code_commit(settings.home) or {}
    return {
        "dataset_uri": dataset,
        "dataset_files_sha256": manifest.get("files", {}),
        "target": manifest.get("rule", {}).get("target", ""),
        "code_commit": commit.get("commit_id") or "unknown (run the setup_infrastructure job to record it)",
        "code_repository": commit.get("repository", ""),
        "definition_sha256": hashlib.sha256(definition.encode()).hexdigest(),
        "execution_arn": arn,
        "training_job_name": trained_model["training_job_name"],
        "model_data_url": trained_model["model_data_url"],
        "model_sha256": trained_model["sha256"],
        "trigger": (run_tags or {}).get("mlops/trigger", "manual"),
        "trigger_detail": (run_tags or {}).get("mlops/trigger_detail", ""),
    }


@asset(
    group_name="model",
    kinds={"sagemaker"},
    output_required=False,
    check_specs=[
        AssetCheckSpec(
            "not_worse_than_prod",
            asset="registered_model",
            blocking=True,
            description="The new model's MSE is no worse than that of the model serving in prod.",
        )
    ],
    description=(
        "The model package the pipeline's RegisterModel step created, with approval status, lineage and its drift "
        "baselines (training data and validation predictions, in Model Monitor's formats, where the package names them)."
    ),
)
def registered_model(
    context: AssetExecutionContext,
    config: RegistryGateConfig,
    trained_model: dict,
    settings: Settings,
    sagemaker: SageMaker,
    store: ObjectStore,
):
    package_arn = trained_model.get("model_package_arn")
    if not package_arn:
        # Not an error: the pipeline's quality gate refused it. Nothing downstream deploys.
        context.log.warning(f"not registered: {trained_model.get('quality_gate')}; no endpoint will be updated")
        yield AssetCheckResult(
            check_name="not_worse_than_prod", passed=True, description="skipped: no model was registered"
        )
        return
    client = sagemaker.get_client()
    package = _record_sha256(client, package_arn, trained_model["sha256"])
    lineage = _lineage(client, store, settings, trained_model, dict(context.run.tags))
    baselines, baseline_metadata = _write_baselines(context, store, package, lineage, trained_model)
    metrics = trained_model["metrics"]
    yield Output(
        {
            "model_package_arn": package_arn,
            "model_package_group": package["ModelPackageGroupName"],
            "version": package.get("ModelPackageVersion"),
            "approval_status": package["ModelApprovalStatus"],
            "metrics": metrics,
            "lineage": lineage,
            "target": lineage["target"],
            "model_sha256": trained_model["sha256"],
            "baselines": baselines,
        },
        metadata={
            "model_package_arn": package_arn,
            "model_package_version": package.get("ModelPackageVersion") or 0,
            "approval_status": package["ModelApprovalStatus"],
            **{k: round(float(v), 6) for k, v in metrics.items() if v is not None},
            **{k: v for k, v in lineage.items() if isinstance(v, str)},
            "dataset_files_sha256": MetadataValue.json(lineage["dataset_files_sha256"]),
            **baseline_metadata,
            **_optional("model_package_link", sagemaker.console_link("model-package", package_arn)),
        },
        data_version=DataVersion(package_arn),
    )
    yield _compare_with_prod(context, client, store, package_arn, metrics, config.max_mse_increase)


def _write_baselines(
    context: AssetExecutionContext, store: ObjectStore, package: dict, lineage: dict, trained_model: dict
) -> tuple[dict, dict]:
    """The model's drift baselines, computed and written to the URIs its package names (the pipeline
    definition fixes them; monitoring/store.py says which field is which): the training data's
    features (the dataset's train.csv) and the model's predictions on the validation split (the
    Evaluate step's predictions.csv). Returns their URIs and the metadata that shows them."""
    arn = package["ModelPackageArn"]
    try:
        baseline_locations(package)
    except MissingBaselineError as err:
        # UpdateModelPackage cannot add baselines: say so, and register the model anyway.
        context.log.warning(f"no drift baseline: {err}")
        return {}, {"drift_baseline": "none: the package names no baseline (see the run's log)"}
    try:
        train_uri = lineage["dataset_uri"].rstrip("/") + "/train.csv"
        predictions_uri = trained_model["evaluation_uri"].rsplit("/", 1)[0] + "/" + PREDICTIONS_FILE
        train = read_csv(store, train_uri, "the training data")
        predictions = read_csv(store, predictions_uri, "the Evaluate step's validation predictions")
        target = lineage["target"] or next((str(c) for c in predictions.columns if c != PREDICTION_COLUMN), "")
        data = data_baseline(train, target)
        prediction = predictions_baseline(predictions, predictions_uri)
        uris = write_model_baselines(store, package, data, prediction)
    except BaselineError as err:
        raise Failure(
            f"cannot write the drift baselines of model package {arn}: {err}. The package is registered; "
            "materialize registered_model again once the cause is fixed (monitoring needs the baselines)."
        ) from err
    context.log.info(
        f"drift baselines of {arn}: data ({data.item_count} rows of {train_uri}, {len(data.features)} features) at "
        f"{uris['baseline_statistics_uri']}; predictions ({prediction.item_count} validation rows) at "
        f"{uris['prediction_baseline_statistics_uri']}"
    )
    metadata = {
        **uris,
        "baseline_rows": data.item_count,
        "baseline_features": MetadataValue.json(data.features),
        "prediction_baseline_rows": prediction.item_count,
        "baseline_link": store.link(uris["baseline_statistics_uri"]),
    }
    return uris, metadata


def _record_sha256(client, package_arn: str, sha256: str) -> dict:
    """The package, with the artifact's sha256 recorded (deployments check the artifact against it
    before it is unpickled: joblib is pickle). The first to see a package records it (the local
    RegisterModel step already has; on aws this asset); a different recorded hash is never replaced."""
    package = client.describe_model_package(ModelPackageName=package_arn)
    recorded = package.get("CustomerMetadataProperties", {}).get(SHA256_PROPERTY)
    if recorded is None:
        client.update_model_package(ModelPackageArn=package_arn, CustomerMetadataProperties={SHA256_PROPERTY: sha256})
        # UpdateModelPackage has no condition: read it back, so a hash another writer recorded at
        # the same moment is reported below rather than silently replaced by ours.
        # Laid over the first answer: moto's UpdateModelPackage drops fields it was not given.
        package = {**package, **client.describe_model_package(ModelPackageName=package_arn)}
        recorded = package.get("CustomerMetadataProperties", {}).get(SHA256_PROPERTY)
    if str(recorded).lower() != sha256.lower():
        raise Failure(
            f"model package {package_arn} records {SHA256_PROPERTY} {recorded}, but the artifact trained_model "
            f"verified has sha256 {sha256}: the artifact changed after registration, or the package names another "
            "one; it is not deployed. Check which bytes are the model you trust before changing the recorded hash."
        )
    return package


def _optional(label: str, value) -> dict:
    return {label: value} if value is not None else {}


def _compare_with_prod(context, client, store, package_arn: str, metrics: dict, allowed: float) -> AssetCheckResult:
    prod_arn = _serving_in_prod(context)
    new = metrics.get(GATE_METRIC)
    if not prod_arn or prod_arn == package_arn:
        return AssetCheckResult(
            check_name="not_worse_than_prod", passed=True,
            description="no other model serves in prod yet" if not prod_arn else "this model already serves in prod",
        )  # fmt: skip
    try:
        prod = _metrics_of_package(client, store, prod_arn).get(GATE_METRIC)
    except ClientError as err:
        return AssetCheckResult(
            check_name="not_worse_than_prod", passed=False,
            description=f"cannot read the prod model {prod_arn}: {err}",
        )  # fmt: skip
    if new is None or prod is None:
        return AssetCheckResult(
            check_name="not_worse_than_prod", passed=False,
            description=f"{GATE_METRIC} missing (new {new}, prod {prod}): cannot compare",
        )  # fmt: skip
    difference = new - prod
    passed = new <= prod * (1 + allowed)
    verdict = "no worse than" if passed else "worse than"
    return AssetCheckResult(
        check_name="not_worse_than_prod",
        passed=passed,
        severity=AssetCheckSeverity.ERROR,
        description=f"new {GATE_METRIC} {new:.4g} is {verdict} prod's {prod:.4g} (difference {difference:+.4g})",
        metadata={"new_mse": float(new), "prod_mse": float(prod), "difference": float(difference),
                  "prod_model_package_arn": prod_arn},  # fmt: skip
    )


class ApprovalConfig(Config):
    model_package: str = Field(description="the package's version number in the group, or its ARN")
    status: str = Field(default="Approved", description="Approved, Rejected or PendingManualApproval")
    # SageMaker's ApprovalDescription holds at most 1,024 characters: refused here, not after the run starts.
    comment: str = Field(
        default="", max_length=1024, description="why: stored verbatim as the package's ApprovalDescription"
    )


def resolve_package_arn(client, group: str, model_package: str) -> str:
    """A version number within the group, or an ARN, to the package's ARN."""
    if model_package.startswith("arn:"):
        return client.describe_model_package(ModelPackageName=model_package)["ModelPackageArn"]
    if not model_package.isdigit():
        raise Failure(f"model_package {model_package!r} is neither a version number (e.g. 3) nor an ARN")
    pages = client.get_paginator("list_model_packages") if hasattr(client, "get_paginator") else None
    summaries = (
        [s for page in pages.paginate(ModelPackageGroupName=group) for s in page["ModelPackageSummaryList"]]
        if pages
        else client.list_model_packages(ModelPackageGroupName=group, MaxResults=100)["ModelPackageSummaryList"]
    )
    for summary in summaries:
        if str(summary.get("ModelPackageVersion")) == model_package:
            return summary["ModelPackageArn"]
    versions = sorted(s.get("ModelPackageVersion") for s in summaries)
    raise Failure(f"model package group {group} has no version {model_package} (versions: {versions})")


@op(description="Approve or reject a registered model package (the registry's manual approval step).")
def approve_model_package(context: OpExecutionContext, config: ApprovalConfig, settings: Settings, sagemaker: SageMaker):
    if config.status not in APPROVAL_STATUSES:
        raise Failure(f"status {config.status!r} is not one of {', '.join(APPROVAL_STATUSES)}")
    client = sagemaker.get_client()
    arn = resolve_package_arn(client, f"{settings.pipeline_name}-models", config.model_package)
    before = client.describe_model_package(ModelPackageName=arn)["ModelApprovalStatus"]
    client.update_model_package(
        ModelPackageArn=arn, ModelApprovalStatus=config.status, ApprovalDescription=config.comment or config.status
    )
    context.log.info(f"{arn}: {before} -> {config.status}" + (f" ({config.comment})" if config.comment else ""))
    # Shown on registered_model's page in the UI, next to its materializations.
    context.log_event(
        AssetObservation(
            asset_key="registered_model",
            metadata={"model_package_arn": arn, "approval_status": config.status, "previous_status": before,
                      "comment": config.comment},  # fmt: skip
        )
    )
    return arn


@job(description="Set a model package's approval status (Approved unlocks staging and prod).")
def approve_model():
    approve_model_package()
