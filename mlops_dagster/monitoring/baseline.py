"""Drift baselines in SageMaker Model Monitor's formats, computed from a pandas DataFrame.

A baseline is three files, written next to the model:

- ``statistics.json``: Model Monitor's per-feature statistics (inferred type, present/missing
  counts, mean, sum, population std_dev, min, max, and a ``kll`` distribution: 10 equal-width
  buckets between min and max, as deequ computes them, plus the sketch).
- ``constraints.json``: Model Monitor's suggested constraints (inferred type, completeness,
  ``is_non_negative``) and its ``monitoring_config`` with ``distribution_constraints``.
- ``baseline_sample.json`` (ours): per feature, the sorted reference values the two-sample KS test
  needs (ten buckets are too coarse for an empirical CDF). All values when there are at most
  ``SAMPLE_SIZE`` (10,000) of them, else 10,000 evenly spaced order statistics, which keep the
  CDF to within 1/10,000; the KS p-value then counts 10,000 reference values, which errs on the
  side of no alarm. Plain JSON, so nothing is unpickled to read it.

The ``sketch`` in statistics.json holds one level of at most k = 2048 values (all values up to
2048, else evenly spaced order statistics), with KLL's parameters c = 0.64 and k = 2048 as Model
Monitor writes them: a valid, if not compacted, quantile summary. Numbers are JSON floats.

Pure: numpy and pandas only, no Dagster, no store; callers put ``Baseline.files()`` where they like.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

STATISTICS_FILE = "statistics.json"
CONSTRAINTS_FILE = "constraints.json"
SAMPLE_FILE = "baseline_sample.json"
BASELINE_FILES = (STATISTICS_FILE, CONSTRAINTS_FILE, SAMPLE_FILE)
PREDICTION_COLUMN = "prediction"

INTEGRAL, FRACTIONAL, STRING, UNKNOWN = "Integral", "Fractional", "String", "Unknown"
NUMERIC_TYPES = (INTEGRAL, FRACTIONAL)
KLL_BUCKETS = 10  # Model Monitor always materializes 10 buckets
KLL_C, KLL_K = 0.64, 2048  # KLL's shrinking factor and sketch size, as Model Monitor writes them
SAMPLE_SIZE = 10_000  # reference values kept per feature for the KS test
MAX_DOMAIN = 20  # distinct strings listed as a String feature's domain

# Model Monitor's suggested monitoring_config (its defaults for the thresholds below).
MONITORING_CONFIG = {
    "evaluate_constraints": "Enabled",
    "emit_metrics": "Enabled",
    "datatype_check_threshold": 1.0,
    "domain_content_threshold": 1.0,
    "distribution_constraints": {
        "perform_comparison": "Enabled",
        "comparison_threshold": 0.1,
        "comparison_method": "Robust",
        "categorical_comparison_threshold": 0.1,
        "categorical_drift_method": "LInfinity",
    },
}


class BaselineError(ValueError):
    """A baseline cannot be computed or read; the message names the column or file and what to do."""


@dataclass(frozen=True)
class ColumnValues:
    """One column split the way the checks need it: finite numbers, missing cells, the rest."""

    numbers: np.ndarray  # float64 finite values, in row order
    missing: int  # null cells (None, NaN, empty)
    non_numeric: int  # present cells that are not a finite number (text, inf)
    non_whole: int  # finite numbers with a fractional part

    @property
    def present(self) -> int:
        return len(self.numbers) + self.non_numeric


def split_column(series: pd.Series) -> ColumnValues:
    """Split a column into finite numbers, missing cells and non-numeric cells."""
    if pd.api.types.is_bool_dtype(series.dtype):
        series = series.astype("float64")  # True/False count as 1/0, like Model Monitor's Integral
    missing_mask = series.isna().to_numpy()
    if pd.api.types.is_numeric_dtype(series.dtype):
        values = series.to_numpy(dtype="float64", na_value=np.nan)
    else:  # text, object or category: a cell counts as numeric when it parses as a number
        values = pd.to_numeric(series.astype("object"), errors="coerce").to_numpy(dtype="float64", na_value=np.nan)
    finite = np.isfinite(values)
    numbers = values[finite]
    return ColumnValues(
        numbers=numbers,
        missing=int(missing_mask.sum()),
        non_numeric=int(np.count_nonzero(~finite & ~missing_mask)),
        non_whole=int(np.count_nonzero(numbers != np.floor(numbers))),
    )


def infer_type(series: pd.Series, column: ColumnValues | None = None) -> str:
    """Model Monitor's inferred_type: Integral, Fractional, String, or Unknown (no value present)."""
    column = split_column(series) if column is None else column
    if column.present == 0:
        return UNKNOWN
    if column.non_numeric:
        return STRING
    if pd.api.types.is_float_dtype(series.dtype):
        return FRACTIONAL  # a float column is Fractional even when its values happen to be whole
    return INTEGRAL if column.non_whole == 0 else FRACTIONAL


def order_statistics(sorted_values: np.ndarray, size: int) -> np.ndarray:
    """At most ``size`` values: all of them, or the order statistics at ranks (i + 0.5) / size."""
    n = len(sorted_values)
    if n <= size:
        return sorted_values
    ranks = ((np.arange(size) + 0.5) * n / size).astype(np.int64)
    return sorted_values[np.minimum(ranks, n - 1)]


def kll_distribution(sorted_values: np.ndarray) -> dict:
    """Model Monitor's ``kll`` block: 10 equal-width buckets over [min, max] and the sketch.

    As deequ does: bucket i counts values in [lower, upper), the last one [lower, upper].
    """
    n = len(sorted_values)
    if n == 0:
        return {"kll": {"buckets": [], "sketch": {"parameters": {"c": KLL_C, "k": float(KLL_K)}, "data": []}}}
    start, end = float(sorted_values[0]), float(sorted_values[-1])
    bounds = [start + (end - start) * i / KLL_BUCKETS for i in range(KLL_BUCKETS)] + [end]  # end exact, no rounding
    below = np.searchsorted(sorted_values, bounds, side="left")  # values < bound
    buckets = []
    for i in range(KLL_BUCKETS):
        upper_count = n if i == KLL_BUCKETS - 1 else below[i + 1]  # the last bucket includes max
        buckets.append({"lower_bound": bounds[i], "upper_bound": bounds[i + 1], "count": float(upper_count - below[i])})
    sketch = order_statistics(sorted_values, KLL_K)
    return {
        "kll": {
            "buckets": buckets,
            "sketch": {"parameters": {"c": KLL_C, "k": float(KLL_K)}, "data": [sketch.tolist()]},
        }
    }


def numerical_statistics(sorted_values: np.ndarray, missing: int, extra_present: int = 0) -> dict:
    """Model Monitor's ``numerical_statistics`` of finite values (sorted ascending).

    ``extra_present`` counts present cells that are not numbers (a window's bad values): they are
    present for completeness but take no part in mean, min, max or the distribution.
    """
    common = {"num_present": int(len(sorted_values) + extra_present), "num_missing": int(missing)}
    if len(sorted_values) == 0:
        return {"common": common}
    return {
        "common": common,
        "mean": float(sorted_values.mean()),
        "sum": float(sorted_values.sum()),
        "std_dev": float(sorted_values.std()),  # population std, as deequ's StandardDeviation
        "min": float(sorted_values[0]),
        "max": float(sorted_values[-1]),
        "distribution": kll_distribution(sorted_values),
    }


def string_statistics(series: pd.Series, column: ColumnValues) -> dict:
    counts = series.dropna().astype(str).value_counts()
    return {
        "common": {"num_present": column.present, "num_missing": column.missing},
        "distinct_count": float(len(counts)),
        "distribution": {
            "categorical": {"buckets": [{"value": str(v), "count": float(c)} for v, c in counts.head(1000).items()]}
        },
    }


def feature_statistics(name: str, series: pd.Series, column: ColumnValues | None = None) -> tuple[dict, dict]:
    """One column's entry of statistics.json and of constraints.json."""
    column = split_column(series) if column is None else column
    inferred = infer_type(series, column)
    statistics: dict = {"name": name, "inferred_type": inferred}
    constraint: dict = {"name": name, "inferred_type": inferred, "completeness": completeness(column)}
    if inferred in NUMERIC_TYPES:
        values = np.sort(column.numbers)
        statistics["numerical_statistics"] = numerical_statistics(values, column.missing)
        constraint["num_constraints"] = {"is_non_negative": bool(values[0] >= 0)}
    elif inferred == STRING:
        statistics["string_statistics"] = string_statistics(series, column)
        domain = series.dropna().astype(str).unique()
        if len(domain) <= MAX_DOMAIN:
            constraint["string_constraints"] = {"domains": sorted(domain.tolist())}
    else:
        statistics["numerical_statistics"] = {"common": {"num_present": 0, "num_missing": column.missing}}
    return statistics, constraint


def completeness(column: ColumnValues) -> float:
    total = column.present + column.missing
    return float(column.present / total) if total else 0.0


def dataset_statistics(
    frame: pd.DataFrame, columns: Sequence[str] | None = None, splits: Mapping[str, ColumnValues] | None = None
) -> tuple[dict, dict]:
    """statistics.json and constraints.json of any table (numeric and String columns alike).

    ``splits`` may hold the columns already split by ``split_column``, so they are not split twice.
    """
    columns = list(frame.columns if columns is None else columns)
    splits = splits or {}
    pairs = [feature_statistics(str(name), frame[name], splits.get(name)) for name in columns]
    statistics = {"version": 0.0, "dataset": {"item_count": int(len(frame))}, "features": [s for s, _ in pairs]}
    constraints = {
        "version": 0.0,
        "features": [c for _, c in pairs],
        "monitoring_config": json.loads(json.dumps(MONITORING_CONFIG)),  # a copy callers may edit
    }
    return statistics, constraints


@dataclass(frozen=True)
class Baseline:
    """A model's drift baseline: Model Monitor's two files plus the reference sample."""

    statistics: dict
    constraints: dict
    samples: Mapping[str, np.ndarray]  # feature -> sorted reference values
    counts: Mapping[str, int]  # feature -> how many values the sample stands for

    @property
    def features(self) -> list[str]:
        return [f["name"] for f in self.constraints["features"]]

    @property
    def item_count(self) -> int:
        return int(self.statistics["dataset"]["item_count"])

    def constraint(self, name: str) -> dict:
        return next(f for f in self.constraints["features"] if f["name"] == name)

    def feature_statistics(self, name: str) -> dict:
        return next(f for f in self.statistics["features"] if f["name"] == name)

    def files(self) -> dict[str, bytes]:
        """The three files by name, as UTF-8 JSON."""
        sample = {
            "version": 1,
            "description": (
                "sorted reference values per feature for two-sample tests (mlops-dagster): all of the "
                "feature's values when there are as many as its count, else evenly spaced order statistics"
            ),
            "features": {
                name: {"count": int(self.counts[name]), "values": self.samples[name].tolist()} for name in self.features
            },
        }
        return {
            STATISTICS_FILE: _dump(self.statistics),
            CONSTRAINTS_FILE: _dump(self.constraints),
            SAMPLE_FILE: json.dumps(sample, allow_nan=False).encode("utf-8"),
        }

    def save(self, directory: str | Path) -> list[Path]:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        written = []
        for name, data in self.files().items():
            (directory / name).write_bytes(data)
            written.append(directory / name)
        return written

    @classmethod
    def from_files(cls, files: Mapping[str, bytes], where: str = "baseline") -> Baseline:
        """Read the three files (bytes by name); ``where`` names their location in errors."""
        missing = [n for n in BASELINE_FILES if n not in files]
        if missing:
            raise BaselineError(f"{where}: missing {', '.join(missing)}; recompute the baseline of the model")
        statistics = load_json_object(files[STATISTICS_FILE], f"{where}/{STATISTICS_FILE}")
        constraints = load_json_object(files[CONSTRAINTS_FILE], f"{where}/{CONSTRAINTS_FILE}")
        sample = load_json_object(files[SAMPLE_FILE], f"{where}/{SAMPLE_FILE}")
        return _validated(statistics, constraints, sample, where)

    @classmethod
    def load(cls, directory: str | Path) -> Baseline:
        directory = Path(directory)
        files = {n: (directory / n).read_bytes() for n in BASELINE_FILES if (directory / n).is_file()}
        return cls.from_files(files, str(directory))


def compute_baseline(
    frame: pd.DataFrame, features: Iterable[str] | None = None, sample_size: int = SAMPLE_SIZE
) -> Baseline:
    """The drift baseline of ``features`` of ``frame`` (default: every column), all numeric."""
    if not isinstance(frame, pd.DataFrame):
        raise BaselineError(f"a baseline needs a pandas DataFrame, got {type(frame).__name__}")
    frame = frame.set_axis([str(c) for c in frame.columns], axis=1)  # names are text in the JSON files
    features = [str(f) for f in (frame.columns if features is None else features)]
    if not features:
        raise BaselineError("a baseline needs at least one feature column; the list of features is empty")
    absent = [f for f in features if f not in frame.columns]
    if absent:
        raise BaselineError(f"baseline features {absent} are not columns of the table (it has {list(frame.columns)})")
    if len(set(features)) != len(features):
        raise BaselineError(
            f"baseline features are listed twice: {sorted({f for f in features if features.count(f) > 1})}"
        )
    if sample_size < 1:
        raise BaselineError(f"sample_size must be >= 1, got {sample_size}")
    if len(frame) == 0:
        raise BaselineError("the baseline table is empty (0 rows): train on data before computing its baseline")
    splits = {name: split_column(frame[name]) for name in features}
    statistics, constraints = dataset_statistics(frame, features, splits)
    samples, counts = {}, {}
    for entry in statistics["features"]:
        name, inferred, column = entry["name"], entry["inferred_type"], splits[entry["name"]]
        if inferred not in NUMERIC_TYPES:
            raise BaselineError(
                f"baseline feature {name!r} is not numeric (inferred {inferred}: {column.non_numeric} of "
                f"{len(frame)} values are not finite numbers, {column.missing} are missing); drift tests need "
                "numbers: clean the column, encode it, or leave it out of the features"
            )
        values = np.sort(column.numbers)
        samples[name], counts[name] = order_statistics(values, sample_size), len(values)
    return Baseline(statistics, constraints, samples, counts)


def prediction_baseline(
    predictions: Sequence[float] | np.ndarray | pd.Series, name: str = PREDICTION_COLUMN
) -> Baseline:
    """The baseline of a model's predictions (e.g. on the validation set), one column ``name``."""
    try:
        values = np.asarray(predictions, dtype="float64")
    except (TypeError, ValueError) as err:
        raise BaselineError(f"predictions for a baseline must be numbers: {err}") from err
    if values.ndim == 2 and values.shape[1] == 1:
        values = values[:, 0]
    if values.ndim != 1:
        raise BaselineError(f"predictions for a baseline must be one value per row, got shape {values.shape}")
    return compute_baseline(pd.DataFrame({name: values}), [name])


def _dump(document: dict) -> bytes:
    return json.dumps(document, indent=2, allow_nan=False).encode("utf-8")


def load_json_object(data: bytes, where: str) -> dict:
    """A baseline file's JSON object, or a BaselineError naming ``where``."""
    try:
        document = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise BaselineError(f"{where} is not JSON ({err}); recompute the baseline of the model") from err
    if not isinstance(document, dict):
        raise BaselineError(f"{where} holds a JSON {type(document).__name__}, expected an object")
    return document


def _validated(statistics: dict, constraints: dict, sample: dict, where: str) -> Baseline:
    def fail(what: str) -> BaselineError:
        return BaselineError(f"{where}: {what}; recompute the baseline of the model")

    features = constraints.get("features")
    if not isinstance(features, list) or not features:
        raise fail(f"{CONSTRAINTS_FILE} has no 'features' list")
    if not isinstance(constraints.get("monitoring_config"), dict):
        raise fail(f"{CONSTRAINTS_FILE} has no 'monitoring_config' object")
    if not isinstance(statistics.get("features"), list) or "item_count" not in statistics.get("dataset", {}):
        raise fail(f"{STATISTICS_FILE} has no 'features' list or no 'dataset.item_count'")
    stat_names = {f.get("name") for f in statistics["features"] if isinstance(f, dict)}
    entries = sample.get("features")
    if not isinstance(entries, dict):
        raise fail(f"{SAMPLE_FILE} has no 'features' object")
    samples, counts = {}, {}
    for feature in features:
        name = feature.get("name") if isinstance(feature, dict) else None
        if not isinstance(name, str):
            raise fail(f"a feature of {CONSTRAINTS_FILE} has no name: {feature!r:.200}")
        if feature.get("inferred_type") not in NUMERIC_TYPES:
            raise fail(
                f"feature {name!r} has inferred_type {feature.get('inferred_type')!r}; drift tests need Integral or Fractional"
            )
        if name not in stat_names:
            raise fail(f"feature {name!r} of {CONSTRAINTS_FILE} is not in {STATISTICS_FILE}")
        entry = entries.get(name)
        values = entry.get("values") if isinstance(entry, dict) else None
        if not isinstance(values, list) or not values:
            raise fail(f"{SAMPLE_FILE} has no reference values for feature {name!r}")
        try:
            array = np.asarray(values, dtype="float64")
        except (TypeError, ValueError) as err:
            raise fail(f"{SAMPLE_FILE}: the values of {name!r} are not numbers ({err})") from err
        if array.ndim != 1 or not np.all(np.isfinite(array)):
            raise fail(f"{SAMPLE_FILE}: the values of {name!r} are not a flat list of finite numbers")
        count = entry.get("count", len(array))
        if not isinstance(count, int) or count < len(array):
            raise fail(f"{SAMPLE_FILE}: feature {name!r} has count {count!r}, fewer than its {len(array)} values")
        samples[name], counts[name] = np.sort(array), count
    return Baseline(statistics, constraints, samples, counts)
