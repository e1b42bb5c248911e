"""The loop after deployment (issue 10): what an endpoint served, judged against the baseline of
the model that served it.

``endpoint_traffic`` reads the requests an environment's endpoint captured in a time window
(SageMaker's data capture files, chunk by chunk, so a million records never sit in one table) and
judges them there: it hands on the drift reports and the window's figures, not the rows.
``data_quality_report`` writes Model Monitor's statistics.json and constraint_violations.json and
carries the checks data_quality, feature_drift and prediction_drift; ``model_quality_report``
joins ground truth (Model Monitor's groundTruthData files) with the window's predictions and
checks model_quality against the model's validation metrics.

The default window runs from the end of the previous window of the same endpoint (or from the
deployment of the model now serving, when that is later: traffic an older model served is not
judged against this model's baseline) to now.
"""

from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd
from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    AssetKey,
    Config,
    Failure,
    MetadataValue,
    Output,
    asset,
)
from pydantic import Field

from .. import naming
from ..monitoring import PREDICTION_COLUMN, DriftConfig, DriftReport, WindowAccumulator
from ..monitoring.capture import default_capture_destination, iter_capture_files, read_capture
from ..monitoring.ground_truth import Joined, ground_truth_files, read_ground_truth
from ..monitoring.model_quality import METRICS, compare_quality, regression_metrics
from ..monitoring.plots import Panel, distribution_svg, window_values
from ..monitoring.store import load_model_baselines
from ..resources.object_store import ObjectStore
from ..resources.sagemaker import SageMaker
from ..settings import Settings
from .deployment import VARIANT, serving_package

TRAFFIC = AssetKey("endpoint_traffic")
MAX_SOURCES = 20  # capture files listed in metadata (the count says how many there were)
HISTORY = 100  # materializations of endpoint_traffic searched for the previous window's end
DRIFT_PICTURE = "drift.svg"


class TrafficConfig(Config):
    environment: str = Field(default="dev", description="whose endpoint's traffic: dev, staging or prod")
    start: str | None = Field(
        default=None,
        description="window start, ISO-8601 (UTC when no zone is given); default: the end of the previous "
        "window of this endpoint, or the deployment of the model now serving if that is later",
    )
    end: str | None = Field(
        default=None, description="window end (exclusive), ISO-8601; default: now less settle_seconds, to the second"
    )
    settle_seconds: int = Field(
        default=2,
        ge=0,
        le=86_400,
        description="the default end leaves out requests younger than this, which the endpoint may not have "
        "written yet (local endpoints write their capture every second; S3 delivery on aws can take longer)",
    )
    capture_destination: str | None = Field(
        default=None, description="DataCaptureConfig's DestinationS3Uri; default s3://{bucket}/{prefix}/datacapture"
    )
    alpha: float = Field(default=0.01, gt=0, lt=1, description="drift: family-wise significance (Bonferroni)")
    min_statistic: float = Field(default=0.1, ge=0, le=1, description="drift: smallest KS statistic that counts")
    min_samples: int = Field(default=30, ge=1, description="fewer rows than this: insufficient samples, not judged")
    chunk_rows: int = Field(default=100_000, ge=1, le=1_000_000, description="rows read per chunk")


class DataQualityConfig(Config):
    max_bad_record_fraction: float = Field(
        default=0.01, ge=0, le=1, description="data_quality fails when more captured records than this are unreadable"
    )


class ModelQualityConfig(Config):
    ground_truth: str | None = Field(
        default=None, description="prefix of the groundTruthData files; default s3://{bucket}/{prefix}/groundtruth/"
    )
    worse_ratio: float = Field(default=1.5, ge=1, description="model_quality fails above this times the validation")
    metrics: list[str] = Field(default=["mse"], description=f"metrics judged: some of {list(METRICS)}")
    min_samples: int = Field(default=30, ge=1, description="fewer labelled rows than this: not judged")


# --- the window ----------------------------------------------------------------------------------


def parse_time(value: str, field: str) -> datetime:
    """An ISO-8601 time as an aware UTC datetime (no zone: UTC); Failure naming the field."""
    try:
        moment = datetime.fromisoformat(value.strip())
    except ValueError as err:
        raise Failure(
            f"endpoint_traffic config {field}={value!r} is not an ISO-8601 time such as 2026-11-30T23:00:00Z"
        ) from err
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def deployment_time(endpoint: dict) -> datetime:
    """When the endpoint's current model went live: its image resolution time, else the last update."""
    for variant in endpoint.get("ProductionVariants") or []:
        for image in variant.get("DeployedImages") or []:
            if isinstance(image.get("ResolutionTime"), datetime):
                return image["ResolutionTime"].astimezone(UTC)
    moment = endpoint.get("LastModifiedTime") or endpoint.get("CreationTime")
    if not isinstance(moment, datetime):
        raise Failure(f"endpoint {endpoint.get('EndpointName')} has no deployment time in describe_endpoint")
    return moment.astimezone(UTC)


def previous_window_end(context: AssetExecutionContext, endpoint: str) -> datetime | None:
    """The latest end of an earlier window of ``endpoint`` (among the last materializations)."""
    records = context.instance.fetch_materializations(TRAFFIC, limit=HISTORY).records
    ends = []
    for record in records:
        metadata = record.asset_materialization.metadata if record.asset_materialization else {}
        if "endpoint_name" in metadata and metadata["endpoint_name"].value == endpoint and "window_end" in metadata:
            # A window configured to end in the future judged nothing past its materialization.
            materialized = datetime.fromtimestamp(record.timestamp, UTC)
            ends.append(min(parse_time(str(metadata["window_end"].value), "window_end"), materialized))
    return max(ends, default=None)


def window_bounds(
    context: AssetExecutionContext, config: TrafficConfig, endpoint: str, deployed: datetime
) -> tuple[datetime, datetime, str]:
    """(start, end, where the start came from)."""
    if config.end:
        end = parse_time(config.end, "end")
    else:  # inferenceTime is to the second: a whole-second end splits no second between two windows
        end = (datetime.now(UTC) - timedelta(seconds=config.settle_seconds)).replace(microsecond=0)
    if config.start:
        start, origin = parse_time(config.start, "start"), "config"
    else:
        previous = previous_window_end(context, endpoint)
        if previous is not None and previous >= deployed:
            start, origin = previous, "end of the previous window"
        else:
            start, origin = deployed, "deployment of the model now serving"
    if start > end and not (config.start or config.end):
        # The model (or the previous window) is younger than settle_seconds, as right after a
        # deployment in the same run: nothing has settled yet, so the window is empty, not an error.
        context.log.info(f"{endpoint}: no settled traffic since the {origin} at {start.isoformat()}: an empty window")
        end = start
    if start > end:
        raise Failure(f"endpoint_traffic window starts at {start.isoformat()}, after its end {end.isoformat()}")
    return start, end, origin


def report_prefix(settings: Settings, endpoint: str, end: datetime) -> str:
    return f"s3://{settings.bucket}/{settings.prefix}/monitoring/{endpoint}/{end:%Y/%m/%d/%H-%M-%S}"


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


# --- endpoint_traffic --------------------------------------------------------------------------


@asset(
    group_name="monitoring",
    kinds={"sagemaker", "python"},
    deps=["dev_endpoint"],
    description=(
        "The requests an endpoint captured in a time window (default: since the previous window, or since "
        "the deployment of the model now serving), read chunk by chunk and judged against that model's "
        "baseline: row counts, bad records, window, capture files, the drift reports."
    ),
)
def endpoint_traffic(
    context: AssetExecutionContext, config: TrafficConfig, settings: Settings, sagemaker: SageMaker, store: ObjectStore
) -> Output[dict]:
    if config.environment not in naming.ENVIRONMENTS:
        raise Failure(f"endpoint_traffic config environment={config.environment!r} is not one of {naming.ENVIRONMENTS}")
    name = naming.endpoint_name(settings.pipeline_name, config.environment)
    package_arn, endpoint = serving_package(sagemaker.get_client(), name)
    if endpoint is None or not package_arn:
        raise Failure(
            f"no {config.environment} endpoint {name} serving a model package: deploy one first "
            f"(make run, or materialize {config.environment}_endpoint), then send it requests"
        )
    baselines = load_model_baselines(store, sagemaker.get_client(), package_arn)
    start, end, origin = window_bounds(context, config, name, deployment_time(endpoint))
    destination = config.capture_destination or default_capture_destination(settings)
    drift = DriftConfig(alpha=config.alpha, min_statistic=config.min_statistic, min_samples=config.min_samples)
    window = _read_window(store, destination, name, baselines, start, end, config.chunk_rows)
    data_report = window["data"].report(drift)
    prediction_report = window["prediction"].report(drift) if window["prediction"] is not None else None
    stats = window["stats"]
    drifted = set(data_report.drifted_features)
    value = {
        "environment": config.environment,
        "endpoint_name": name,
        "model_package_arn": package_arn,
        "capture_destination": destination,
        "window_start": _iso(start),
        "window_end": _iso(end),
        "window_origin": origin,
        "records": stats.records,
        "rows": stats.rows,
        "bad_records": stats.bad_records,
        "bad_examples": list(stats.bad_examples),
        "source_count": len(stats.sources),
        "sources": list(stats.sources)[:MAX_SOURCES],
        "features": baselines.data.features,
        "data_report": data_report,
        "prediction_report": prediction_report,
        # For the picture: the baseline's reference values of what drifted, not the whole baseline.
        "reference": {
            **{f: baselines.data.samples[f] for f in drifted},
            **(
                {PREDICTION_COLUMN: baselines.prediction.samples[PREDICTION_COLUMN]}
                if prediction_report is not None and prediction_report.drifted_features
                else {}
            ),
        },
        "validation_metrics": dict(baselines.validation_metrics),
        "baseline_uris": {k: str(v) for k, v in baselines.uris.items()},
        "report_prefix": report_prefix(settings, name, end),
    }
    context.log.info(
        f"{name}: {stats.rows:,} rows in {stats.records:,} records ({stats.bad_records:,} bad) from "
        f"{len(stats.sources):,} capture files, {value['window_start']} to {value['window_end']} ({origin})"
    )
    return Output(value, metadata=_traffic_metadata(value, stats))


def _read_window(store, destination, name, baselines, start, end, chunk_rows) -> dict[str, Any]:
    """Feed the window's captured rows, chunk by chunk, to a drift accumulator per baseline."""
    data = WindowAccumulator(baselines.data)
    prediction = WindowAccumulator(baselines.prediction) if baselines.prediction is not None else None
    uris = iter_capture_files(store, destination, name, VARIANT, start=start, end=end)
    reader = read_capture(store, uris, baselines.data.features, start=start, end=end, chunk_rows=chunk_rows)
    for chunk in reader:
        data.add(chunk.features)
        if prediction is not None:
            prediction.add(pd.DataFrame({PREDICTION_COLUMN: np.asarray(chunk.predictions, dtype="float64")}))
    return {"data": data, "prediction": prediction, "stats": reader.stats}


def _traffic_metadata(value: dict, stats) -> dict:
    return {
        "environment": value["environment"],
        "endpoint_name": value["endpoint_name"],
        "model_package_arn": value["model_package_arn"],
        "window_start": value["window_start"],
        "window_end": value["window_end"],
        "window_origin": value["window_origin"],
        "dagster/row_count": value["rows"],
        "records": value["records"],
        "bad_records": value["bad_records"],
        "bad_examples": MetadataValue.json(value["bad_examples"]),
        "first_inference_time": stats.first_time or "",
        "last_inference_time": stats.last_time or "",
        "records_outside_window": stats.outside_window,
        "capture_files": value["source_count"],
        "sources": MetadataValue.json(value["sources"]),
        "capture_destination": value["capture_destination"],
        "drift": value["data_report"].summary(),
    }


# --- data_quality_report -----------------------------------------------------------------------


@asset(
    group_name="monitoring",
    kinds={"python", "s3"},
    check_specs=[
        AssetCheckSpec(
            "data_quality",
            asset="data_quality_report",
            description="Schema and completeness of the window (Model Monitor's missing/extra column, completeness "
            "and data type checks) and the share of unreadable captured records.",
        ),
        AssetCheckSpec(
            "feature_drift",
            asset="data_quality_report",
            description="Per feature, a two-sample KS test against the baseline with a Bonferroni-corrected p-value "
            "and a minimum KS statistic; names the drifted features. Too small a window passes, not judged.",
        ),
        AssetCheckSpec(
            "prediction_drift",
            asset="data_quality_report",
            description="The same KS test on the model's predictions against its predictions on the validation set.",
        ),
    ],
    description=(
        "The window's statistics.json and constraint_violations.json (Model Monitor's formats and check types) "
        "against the baseline of the model that served it, written under monitoring/{endpoint}/yyyy/mm/dd/HH-MM-SS/, "
        "with a picture of the drifted features."
    ),
)
def data_quality_report(
    context: AssetExecutionContext, config: DataQualityConfig, endpoint_traffic: dict, store: ObjectStore
):
    traffic, prefix = endpoint_traffic, endpoint_traffic["report_prefix"]
    data: DriftReport = traffic["data_report"]
    prediction: DriftReport | None = traffic["prediction_report"]
    written = _put_all(store, prefix, data.files())
    if prediction is not None:
        written += _put_all(store, f"{prefix}/prediction", prediction.files())
    picture = _picture(store, prefix, traffic) if traffic["reference"] else None
    context.log.info(f"{traffic['endpoint_name']}: {data.summary()}; reports in {prefix}/")
    yield Output(
        {
            "report_prefix": prefix,
            "files": written,
            "drifted_features": data.drifted_features,
            "violations": [v.to_dict() for v in data.violations],
            "picture": picture,
        },
        metadata={
            "report_prefix": prefix,
            "report": store.link(f"{prefix}/statistics.json"),
            "files": MetadataValue.json(written),
            "model_package_arn": traffic["model_package_arn"],
            "rows": data.rows,
            "violations": len(data.violations),
            "drifted_features": MetadataValue.json(data.drifted_features),
            "features": MetadataValue.md(data.markdown()),
            **({"drift_picture": store.link(picture)} if picture else {}),
        },
    )
    yield _data_quality_check(traffic, data, config)
    yield _drift_check("feature_drift", traffic, data, picture, store)
    yield _prediction_check(traffic, prediction, picture, store)


def _put_all(store: ObjectStore, prefix: str, files: dict[str, bytes]) -> list[str]:
    written = []
    for name, data in files.items():
        store.put_bytes(f"{prefix}/{name}", data)
        written.append(f"{prefix}/{name}")
    return written


def _picture(store: ObjectStore, prefix: str, traffic: dict) -> str:
    """drift.svg: baseline vs window for each drifted feature (and the predictions if they drifted)."""
    panels = []
    for report in (traffic["data_report"], traffic["prediction_report"]):
        if report is None:
            continue
        for name in report.drifted_features:
            feature = report.feature(name)
            caption = f"KS {feature.statistic:.3f}, p {feature.p_value:.1e}, PSI {feature.psi:.2f}, n={feature.window_count:,}"
            panels.append(Panel(name, traffic["reference"][name], window_values(report.statistics, name), caption))
    title = f"{traffic['endpoint_name']} {traffic['window_start']} to {traffic['window_end']}: baseline vs window"
    uri = f"{prefix}/{DRIFT_PICTURE}"
    store.put_bytes(uri, distribution_svg(panels, title))
    return uri


def _window_metadata(traffic: dict) -> dict:
    return {
        "endpoint_name": traffic["endpoint_name"],
        "model_package_arn": traffic["model_package_arn"],
        "window_start": traffic["window_start"],
        "window_end": traffic["window_end"],
        "report_prefix": traffic["report_prefix"],
    }


def _data_quality_check(traffic: dict, report: DriftReport, config: DataQualityConfig) -> AssetCheckResult:
    records, bad = traffic["records"], traffic["bad_records"]
    problems = [f"{v.feature_name}: {v.constraint_check_type}" for v in report.schema_violations]
    too_many_bad = records > 0 and bad / records > config.max_bad_record_fraction
    if too_many_bad:
        problems.append(
            f"{bad:,} of {records:,} captured records unreadable (more than {config.max_bad_record_fraction:.0%})"
        )
    bad_note = f"; {bad:,} unreadable captured records" if bad else ""
    if problems:
        description = f"data quality failed over {report.rows:,} rows: " + "; ".join(problems)
    elif report.rows == 0:
        description = f"no rows in the window: nothing to check{bad_note}"
    else:
        description = f"schema and completeness as the baseline over {report.rows:,} rows{bad_note}"
    return AssetCheckResult(
        check_name="data_quality",
        passed=not problems,
        severity=AssetCheckSeverity.ERROR,
        description=description,
        metadata={
            **_window_metadata(traffic),
            "rows": report.rows,
            "records": records,
            "bad_records": bad,
            "bad_examples": MetadataValue.json(traffic["bad_examples"]),
            "violations": MetadataValue.json([v.to_dict() for v in report.schema_violations]),
        },
    )


def _drift_check(
    name: str, traffic: dict, report: DriftReport, picture: str | None, store: ObjectStore
) -> AssetCheckResult:
    drifted = report.drifted_features
    return AssetCheckResult(
        check_name=name,
        passed=not drifted,
        severity=AssetCheckSeverity.ERROR,
        description=report.summary(),
        metadata={
            **_window_metadata(traffic),
            "status": report.status,
            "rows": report.rows,
            "drifted_features": MetadataValue.json(drifted),
            "features": MetadataValue.md(_drift_table(report)),
            "corrected_alpha": float(report.corrected_alpha),
            "min_statistic": float(report.config.min_statistic),
            **({"drift_picture": store.link(picture)} if picture and drifted else {}),
        },
    )


def _prediction_check(
    traffic: dict, report: DriftReport | None, picture: str | None, store: ObjectStore
) -> AssetCheckResult:
    if report is None:
        return AssetCheckResult(
            check_name="prediction_drift",
            passed=True,
            description=f"not judged: model package {traffic['model_package_arn']} has no prediction baseline",
            metadata=_window_metadata(traffic),
        )
    return _drift_check("prediction_drift", traffic, report, picture, store)


def _drift_table(report: DriftReport) -> str:
    """Per feature: KS statistic, p-value, PSI, drifted? (markdown)."""
    lines = [
        "| feature | KS statistic | p-value | PSI | drifted? | window n |",
        "|---|---|---|---|---|---|",
    ]
    for f in report.features:
        verdict = "**yes**" if f.drifted else ("no" if f.status == "ok" else f.status)
        lines.append(
            f"| {f.name} | {_fmt(f.statistic, '.3f')} | {_fmt(f.p_value, '.2e')} | {_fmt(f.psi, '.3f')} | "
            f"{verdict} | {f.window_count:,} |"
        )
    return "\n".join(lines)


def _fmt(value: float | None, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


# --- model_quality_report ----------------------------------------------------------------------


@asset(
    group_name="monitoring",
    kinds={"python", "s3"},
    check_specs=[
        AssetCheckSpec(
            "model_quality",
            asset="model_quality_report",
            description="MSE (by default) of the served model on the window's labelled requests, against its "
            "validation metrics: fails when worse than worse_ratio times it. Passes with no ground truth.",
        )
    ],
    description=(
        "MSE, RMSE, MAE and R2 of the served model on the window's requests that have ground truth "
        "(groundTruthData files joined on inferenceId, else eventId), vs. its validation metrics."
    ),
)
def model_quality_report(
    context: AssetExecutionContext,
    config: ModelQualityConfig,
    endpoint_traffic: dict,
    settings: Settings,
    store: ObjectStore,
):
    unknown = [m for m in config.metrics if m not in METRICS]
    if unknown or not config.metrics:
        raise Failure(f"model_quality_report config metrics={config.metrics} must be some of {list(METRICS)}")
    traffic = endpoint_traffic
    prefix = config.ground_truth or f"s3://{settings.bucket}/{settings.prefix}/groundtruth/"
    start = parse_time(traffic["window_start"], "window_start")
    truth = read_ground_truth(store, ground_truth_files(store, prefix, start))
    joined = _join(store, traffic, truth.labels, start) if truth.labels else Joined()
    found = {
        "ground_truth": prefix,
        "ground_truth_files": len(truth.sources),
        "labels": len(truth.labels),
        "bad_ground_truth_records": truth.bad_records,
        "bad_ground_truth_examples": truth.bad_examples,
        "labelled_rows": len(joined.truth),
        "label_width_mismatches": joined.width_mismatches,
    }
    if not joined.truth:
        description = (
            f"no ground truth for this window: {len(truth.labels):,} labels in {len(truth.sources):,} files under "
            f"{prefix}, none for its {traffic['records']:,} requests"
        )
        context.log.info(description)
        yield Output({**found, "status": "no ground truth"}, metadata=_quality_metadata(found))
        yield AssetCheckResult(
            check_name="model_quality",
            passed=True,
            description=description,
            metadata={**_window_metadata(traffic), **_quality_metadata(found)},
        )
        return
    metrics = regression_metrics(joined.truth, joined.predictions)
    comparison = compare_quality(
        metrics, traffic["validation_metrics"], config.worse_ratio, config.metrics, config.min_samples
    )
    out = f"{traffic['report_prefix']}/model_quality"
    files = {
        "statistics.json": metrics.statistics(),
        "constraints.json": comparison.constraints(),
        "constraint_violations.json": comparison.constraint_violations(),
    }
    written = _put_all(store, out, {k: _json_bytes(v) for k, v in files.items()})
    figures = {
        **{m: metrics.value(m) for m in METRICS if metrics.value(m) is not None},
        **{f"validation_{m}": v for m, v in comparison.validation.items() if m in METRICS},
    }
    context.log.info(f"{traffic['endpoint_name']}: {comparison.summary()}")
    yield Output(
        {**found, "status": comparison.status, "metrics": figures, "files": written},
        metadata={
            **_quality_metadata(found),
            **figures,
            "status": comparison.status,
            "files": MetadataValue.json(written),
        },
    )
    yield AssetCheckResult(
        check_name="model_quality",
        passed=comparison.passed,
        severity=AssetCheckSeverity.ERROR,
        description=comparison.summary(),
        metadata={
            **_window_metadata(traffic),
            **_quality_metadata(found),
            **figures,
            "worse_ratio": float(config.worse_ratio),
            "status": comparison.status,
            "ratios": MetadataValue.json(comparison.ratios()),
        },
    )


def _join(store: ObjectStore, traffic: dict, labels: dict[str, list[float]], start: datetime) -> Joined:
    """The window's predictions (read again, chunk by chunk) that have labels, keyed on inferenceId
    (else eventId); the rows of one request are labelled in their order."""
    end = parse_time(traffic["window_end"], "window_end")
    uris = iter_capture_files(
        store, traffic["capture_destination"], traffic["endpoint_name"], VARIANT, start=start, end=end
    )
    joined, pending_key, pending = Joined(), None, []
    for chunk in read_capture(store, uris, traffic["features"], start=start, end=end):
        for inference_id, event_id, value in zip(
            chunk.inference_ids, chunk.event_ids, np.asarray(chunk.predictions, dtype="float64"), strict=True
        ):
            key = (inference_id or event_id, event_id)
            if key != pending_key:
                _label(joined, labels, pending_key, pending)
                pending_key, pending = key, []
            pending.append(float(value))
    _label(joined, labels, pending_key, pending)
    return joined


def _label(joined: Joined, labels: dict[str, list[float]], key: tuple[str, str] | None, predictions: list) -> None:
    if key is None:
        return
    found = labels.get(key[0], labels.get(key[1]))
    if found is not None:
        joined.add(found, predictions)


def _quality_metadata(found: dict) -> dict:
    return {
        **{k: v for k, v in found.items() if not isinstance(v, list)},
        "bad_ground_truth_examples": MetadataValue.json(found["bad_ground_truth_examples"]),
    }


def _json_bytes(document: dict) -> bytes:
    import json

    return json.dumps(document, indent=2, allow_nan=False).encode("utf-8")
