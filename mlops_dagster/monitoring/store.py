"""A model package's drift baselines in the object store: where they are, writing and reading them.

DriftCheckBaselines can only be set when a package is created, so the pipeline's RegisterModel step
names the files (``pipeline_builder``: ``Std:Join`` on the execution id, fixed in the definition):

    s3://{bucket}/{prefix}/{pipeline}/{execution-id}/baseline/data/{statistics,constraints}.json
    s3://{bucket}/{prefix}/{pipeline}/{execution-id}/baseline/prediction/{statistics,constraints}.json

and the ``registered_model`` asset computes them and writes them to exactly the URIs the package
names (read back from DescribeModelPackage: the URI scheme lives in the definition only). Where
they are in SageMaker's shape:

- ``DriftCheckBaselines.ModelDataQuality`` (and ``ModelMetrics.ModelDataQuality``): the data
  baseline, the training data's features in Model Monitor's data-quality formats;
- ``DriftCheckBaselines.ModelQuality``: the prediction baseline, the model's predictions on the
  validation split as one column ``prediction``, in the same data-quality formats (a Model Monitor
  model-quality monitor would expect regression metrics there; those are the next item);
- ``ModelMetrics.ModelQuality.Statistics``: evaluation.json, the held-out regression metrics
  (``validation_metrics``).

Each statistics.json has its reference sample (``baseline_sample.json``) beside it: no SageMaker
field holds it. No Dagster here; errors name the package, the file and what to do.
"""

from __future__ import annotations

import io
import posixpath
from collections.abc import Mapping
from dataclasses import dataclass, field

import pandas as pd

from ..resources.object_store import ObjectNotFound, ObjectStore
from .baseline import (
    CONSTRAINTS_FILE,
    PREDICTION_COLUMN,
    SAMPLE_FILE,
    STATISTICS_FILE,
    Baseline,
    BaselineError,
    compute_baseline,
    load_json_object,
    prediction_baseline,
)
from .model_quality import ModelQualityError, validation_metrics

PREDICTIONS_FILE = "predictions.csv"  # training/evaluate.py writes it beside evaluation.json
REMEDY = "materialize registered_model for it (its run computes and writes the baselines)"


class MissingBaselineError(BaselineError):
    """A package names no baseline, or a file it names is absent or unreadable."""


@dataclass(frozen=True)
class BaselineLocation:
    """Where one baseline's three files are: the package names two, the sample sits beside statistics."""

    statistics: str
    constraints: str

    @property
    def sample(self) -> str:
        return posixpath.join(posixpath.dirname(self.statistics), SAMPLE_FILE)

    def by_file(self) -> dict[str, str]:
        """URI of each of ``Baseline.files()``'s names."""
        return {STATISTICS_FILE: self.statistics, CONSTRAINTS_FILE: self.constraints, SAMPLE_FILE: self.sample}


@dataclass(frozen=True)
class PackageBaselines:
    """The baseline files one model package names."""

    model_package_arn: str
    data: BaselineLocation
    prediction: BaselineLocation | None
    evaluation: str | None  # evaluation.json (ModelMetrics.ModelQuality.Statistics)

    def uris(self) -> dict[str, str]:
        """Flat names -> URIs, as registered_model's metadata shows them."""
        uris = {f"baseline_{_stem(name)}_uri": uri for name, uri in self.data.by_file().items()}
        if self.prediction is not None:
            uris |= {f"prediction_baseline_{_stem(name)}_uri": uri for name, uri in self.prediction.by_file().items()}
        if self.evaluation:
            uris["evaluation_uri"] = self.evaluation
        return uris


@dataclass(frozen=True)
class ModelBaselines:
    """What monitoring judges a model's traffic against."""

    data: Baseline
    prediction: Baseline | None  # None when the package names no prediction baseline
    validation_metrics: dict  # flat {"mse": ..., "rmse": ..., "mae": ..., "r2": ...}; {} when none is named
    uris: dict = field(default_factory=dict)  # as PackageBaselines.uris()
    model_package_arn: str = ""


def _stem(name: str) -> str:
    return {STATISTICS_FILE: "statistics", CONSTRAINTS_FILE: "constraints", SAMPLE_FILE: "sample"}[name]


def _source(package: Mapping, *path: str) -> str | None:
    node = package
    for key in path:
        node = node.get(key) if isinstance(node, Mapping) else None
    return node if isinstance(node, str) and node else None


def _location(package: Mapping, root: str, block: str) -> BaselineLocation | None:
    statistics = _source(package, root, block, "Statistics", "S3Uri")
    constraints = _source(package, root, block, "Constraints", "S3Uri")
    if statistics is None and constraints is None:
        return None
    arn = package.get("ModelPackageArn", "?")
    if statistics is None or constraints is None:
        raise MissingBaselineError(
            f"model package {arn}: {root}.{block} names only one of Statistics and Constraints; a baseline needs both"
        )
    return BaselineLocation(statistics, constraints)


def baseline_locations(package: Mapping) -> PackageBaselines:
    """Where a package's baselines are (``package``: a DescribeModelPackage answer).

    The data baseline is DriftCheckBaselines.ModelDataQuality, else ModelMetrics.ModelDataQuality;
    a package that names neither was not registered by this project's pipeline (or by one from
    before baselines) and cannot be monitored: that is an error saying so.
    """
    arn = package.get("ModelPackageArn", "?")
    data = _location(package, "DriftCheckBaselines", "ModelDataQuality") or _location(
        package, "ModelMetrics", "ModelDataQuality"
    )
    if data is None:
        raise MissingBaselineError(
            f"model package {arn} names no data baseline (no DriftCheckBaselines.ModelDataQuality or "
            "ModelMetrics.ModelDataQuality): it was not registered by this project's pipeline definition, or by one "
            "from before baselines. Run the pipeline again (materialize pipeline_definition, pipeline_execution, "
            "trained_model and registered_model) and monitor the new model."
        )
    return PackageBaselines(
        model_package_arn=arn,
        data=data,
        prediction=_location(package, "DriftCheckBaselines", "ModelQuality"),
        evaluation=_source(package, "ModelMetrics", "ModelQuality", "Statistics", "S3Uri"),
    )


def read_csv(store: ObjectStore, uri: str, what: str) -> pd.DataFrame:
    """A CSV object as a DataFrame; a missing or unreadable one is an error naming it and ``what`` it is."""
    try:
        data = store.get_bytes(uri)
    except ObjectNotFound as err:
        raise MissingBaselineError(f"{what} {uri} does not exist: {err}") from err
    try:
        return pd.read_csv(io.BytesIO(data))
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise BaselineError(f"{what} {uri} is not a readable CSV file: {err}") from err


def data_baseline(train: pd.DataFrame, target: str, features: list[str] | None = None) -> Baseline:
    """The baseline of the training features: ``features``, else every column but ``target``."""
    if target not in train.columns:
        raise BaselineError(
            f"the target column {target!r} is not a column of the training data (columns: {list(train.columns)}); "
            "the features are the other columns, so the target must be known"
        )
    if features is None:
        features = [str(c) for c in train.columns if str(c) != target]
    return compute_baseline(train, features)


def predictions_baseline(predictions: pd.DataFrame, where: str) -> Baseline:
    """The baseline of the ``prediction`` column of evaluate.py's predictions.csv."""
    if PREDICTION_COLUMN not in predictions.columns:
        raise BaselineError(
            f"{where} has no '{PREDICTION_COLUMN}' column (columns: {list(predictions.columns)}): it was not written "
            "by training/evaluate.py with --validation-dir; rebuild the pipeline definition and run it again"
        )
    if predictions.empty:
        raise BaselineError(
            f"{where} holds no predictions: the validation split was empty. A prediction baseline needs validation "
            "rows: give s3_dataset more rows (raw_data's rows or a smaller train_fraction)"
        )
    return prediction_baseline(predictions[PREDICTION_COLUMN])


def write_model_baselines(
    store: ObjectStore, package: Mapping, data: Baseline, prediction: Baseline | None
) -> dict[str, str]:
    """Write the baselines to the URIs ``package`` (a DescribeModelPackage answer) names; returns
    ``PackageBaselines.uris()``. A prediction baseline the package has no place for is an error."""
    locations = baseline_locations(package)
    if prediction is not None and locations.prediction is None:
        raise MissingBaselineError(
            f"model package {locations.model_package_arn} names no DriftCheckBaselines.ModelQuality for the "
            "prediction baseline; it was registered by a pipeline definition from before baselines"
        )
    targets = [(locations.data, data)] + ([(locations.prediction, prediction)] if prediction is not None else [])
    for location, baseline in targets:
        files, uris = baseline.files(), location.by_file()
        # Statistics last: a reader that finds statistics.json finds the other two as well.
        for name in (SAMPLE_FILE, CONSTRAINTS_FILE, STATISTICS_FILE):
            store.put_bytes(uris[name], files[name])
    return locations.uris()


def load_model_baselines(store: ObjectStore, client, model_package_arn: str) -> ModelBaselines:
    """The data and prediction baselines and the validation metrics of a registered model package.

    Raises MissingBaselineError naming the package, the file and what to materialize when a file the
    package names is absent, BaselineError when one is malformed.
    """
    package = client.describe_model_package(ModelPackageName=model_package_arn)
    locations = baseline_locations(package)
    arn = locations.model_package_arn
    data = _read_baseline(store, arn, "data", locations.data)
    prediction = _read_baseline(store, arn, "prediction", locations.prediction) if locations.prediction else None
    metrics: dict = {}
    if locations.evaluation:
        report = _read_object(
            store, arn, "evaluation report (ModelMetrics.ModelQuality.Statistics)", locations.evaluation
        )
        try:
            metrics = validation_metrics(load_json_object(report, locations.evaluation))
        except ModelQualityError as err:
            raise BaselineError(f"model package {arn}: {locations.evaluation}: {err}") from err
    return ModelBaselines(data, prediction, metrics, locations.uris(), arn)


def _read_object(store: ObjectStore, arn: str, what: str, uri: str) -> bytes:
    try:
        return store.get_bytes(uri)
    except ObjectNotFound as err:
        raise MissingBaselineError(f"model package {arn}: its {what} {uri} does not exist; {REMEDY}") from err


def _read_baseline(store: ObjectStore, arn: str, kind: str, location: BaselineLocation) -> Baseline:
    files = {name: _read_object(store, arn, f"{kind} baseline file", uri) for name, uri in location.by_file().items()}
    return Baseline.from_files(
        files, where=f"model package {arn}: {kind} baseline {posixpath.dirname(location.statistics)}"
    )
