"""Model quality of a served model on a window with ground truth, against its validation metrics.

Metrics are scikit-learn's (the same functions ``training/evaluate.py`` uses for the validation
metrics, so the two sides are computed alike). ``statistics()`` writes them in Model Monitor's
model-quality shape (``regression_metrics.<name>.value`` and ``standard_deviation``: from 200
samples on, the spread of the metric over five random 80% subsamples, as Model Monitor does;
null below). The validation metrics may be given flat (``{"mse": 4.2}``) or as evaluation.json
(``{"regression_metrics": {"mse": {"value": 4.2}}}``).

The rule: a window fails when a checked metric (MSE by default) is worse than ``worse_ratio``
times its validation value; a window with fewer than ``min_samples`` labelled rows is
"insufficient samples" and passes.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

METRICS = ("mse", "rmse", "mae", "r2")
LOWER_IS_BETTER = {"mse": True, "rmse": True, "mae": True, "r2": False}
STD_MIN_SAMPLES = 200  # Model Monitor reports a standard deviation from 200 samples on
STD_ROUNDS, STD_FRACTION = 5, 0.8

OK, DEGRADED, INSUFFICIENT = "ok", "degraded", "insufficient samples"


class ModelQualityError(ValueError):
    """Predictions, ground truth or validation metrics the comparison cannot use."""


@dataclass(frozen=True)
class RegressionMetrics:
    n: int
    mse: float
    rmse: float
    mae: float
    r2: float | None  # undefined below two rows or for a constant ground truth
    standard_deviations: Mapping[str, float | None]

    def value(self, name: str) -> float | None:
        return getattr(self, name)

    def statistics(self) -> dict:
        """Model Monitor's model-quality statistics.json for this window."""
        return {
            "version": 0.0,
            "dataset": {"item_count": self.n},
            "regression_metrics": {
                name: {"value": self.value(name), "standard_deviation": self.standard_deviations.get(name)}
                for name in METRICS
            },
        }


def regression_metrics(
    y_true: Sequence[float] | np.ndarray, y_pred: Sequence[float] | np.ndarray, seed: int = 0
) -> RegressionMetrics:
    """MSE, RMSE, MAE and R² of aligned ground truth and predictions (row i with row i)."""
    truth, predicted = _aligned(y_true, y_pred)
    values = _metrics(truth, predicted)
    deviations: dict[str, float | None] = dict.fromkeys(METRICS)
    if len(truth) >= STD_MIN_SAMPLES:
        rng = np.random.default_rng(seed)
        size = int(len(truth) * STD_FRACTION)
        rounds = [
            _metrics(truth[idx], predicted[idx])
            for idx in (rng.choice(len(truth), size, replace=False) for _ in range(STD_ROUNDS))
        ]
        for name in METRICS:
            samples = [r[name] for r in rounds if r[name] is not None]
            deviations[name] = float(np.std(samples)) if len(samples) == STD_ROUNDS else None
    return RegressionMetrics(len(truth), values["mse"], values["rmse"], values["mae"], values["r2"], deviations)


def validation_metrics(report: Mapping) -> dict[str, float]:
    """Flat ``{metric: value}`` from evaluation.json's shape or from a flat mapping."""
    if not isinstance(report, Mapping):
        raise ModelQualityError(f"validation metrics must be a mapping, got {type(report).__name__}")
    source = report.get("regression_metrics", report)
    if not isinstance(source, Mapping):
        raise ModelQualityError(f"'regression_metrics' must be an object of metrics, got {type(source).__name__}")
    flat = {}
    for name, item in source.items():
        value = item.get("value") if isinstance(item, Mapping) else item
        if value is None:
            continue  # undefined on the validation set (evaluation.json writes null)
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise ModelQualityError(f"validation metric {name!r} is {value!r}, not a finite number")
        flat[str(name)] = float(value)
    return flat


@dataclass(frozen=True)
class QualityComparison:
    """A window's metrics against the validation metrics, judged by ``worse_ratio``."""

    metrics: RegressionMetrics
    validation: Mapping[str, float]
    worse_ratio: float
    checked: tuple[str, ...]
    status: str  # ok | degraded | insufficient samples
    failures: Mapping[str, str]  # failed metric -> what failed, in a sentence

    @property
    def passed(self) -> bool:
        return self.status != DEGRADED

    def ratios(self) -> dict[str, float | None]:
        """window / validation per metric (None where undefined or the validation value is 0)."""
        out: dict[str, float | None] = {}
        for name in METRICS:
            window, base = self.metrics.value(name), self.validation.get(name)
            out[name] = None if window is None or not base else float(window / base)
        return out

    def constraints(self) -> dict:
        """Model Monitor's model-quality constraints.json equivalent of the rule."""
        return {
            "version": 0.0,
            "regression_constraints": {
                name: _constraint(name, self.validation[name], self.worse_ratio) for name in self.checked
            },
        }

    def constraint_violations(self) -> dict:
        return {
            "violations": [
                {
                    "metric_name": name,
                    "constraint_check_type": _constraint(name, 0, 1)["comparison_operator"],
                    "description": text,
                }
                for name, text in self.failures.items()
            ]
        }

    def summary(self) -> str:
        shown = ", ".join(
            f"{m}={self.metrics.value(m):.4g} (validation {self.validation.get(m, float('nan')):.4g})"
            for m in self.checked
            if self.metrics.value(m) is not None
        )
        if self.status == INSUFFICIENT:
            return f"insufficient samples: {self.metrics.n} labelled rows; not judged ({shown})"
        if self.failures:
            return "model quality degraded: " + "; ".join(self.failures.values())
        return f"model quality ok over {self.metrics.n} rows: {shown} (fails above {self.worse_ratio}x validation)"


def compare_quality(
    metrics: RegressionMetrics,
    validation: Mapping,
    worse_ratio: float = 1.5,
    checked: Sequence[str] = ("mse",),
    min_samples: int = 30,
) -> QualityComparison:
    """Judge ``metrics`` against ``validation``: worse than ``worse_ratio`` times it fails.

    For a lower-is-better metric (MSE, RMSE, MAE) that is ``window > ratio * validation``; for R²
    it is ``1 - window > ratio * (1 - validation)`` (the unexplained share grew by the ratio).
    """
    if isinstance(worse_ratio, bool) or not isinstance(worse_ratio, int | float) or not worse_ratio >= 1:
        raise ModelQualityError(f"worse_ratio must be a number >= 1 (1.5 fails at 50% worse), got {worse_ratio!r}")
    if isinstance(min_samples, bool) or not isinstance(min_samples, int) or min_samples < 1:
        raise ModelQualityError(f"min_samples must be an integer >= 1, got {min_samples!r}")
    checked = tuple(checked)
    unknown = [m for m in checked if m not in METRICS]
    if not checked or unknown:
        raise ModelQualityError(f"checked metrics must be some of {list(METRICS)}, got {list(checked)}")
    flat = validation_metrics(validation)
    absent = [m for m in checked if m not in flat]
    if absent:
        raise ModelQualityError(
            f"validation metrics have no {absent} (they have {sorted(flat)}); check the model's evaluation.json"
        )
    if metrics.n < min_samples:
        return QualityComparison(metrics, flat, float(worse_ratio), checked, INSUFFICIENT, {})
    failures = {}
    for name in checked:
        window, base = metrics.value(name), flat[name]
        if window is None:
            continue
        if LOWER_IS_BETTER[name] and window > worse_ratio * base:
            failures[name] = (
                f"{name} {window:.4g} is worse than {worse_ratio}x the validation {name} {base:.4g} ({metrics.n} rows)"
            )
        elif not LOWER_IS_BETTER[name] and 1 - window > worse_ratio * (1 - base):
            failures[name] = (
                f"{name} {window:.4g} is worse than the validation {name} {base:.4g} by more than "
                f"{worse_ratio}x the unexplained variance ({metrics.n} rows)"
            )
    return QualityComparison(metrics, flat, float(worse_ratio), checked, DEGRADED if failures else OK, failures)


def _constraint(name: str, base: float, ratio: float) -> dict:
    if LOWER_IS_BETTER[name]:
        return {"threshold": ratio * base, "comparison_operator": "GreaterThanThreshold"}
    return {"threshold": 1 - ratio * (1 - base), "comparison_operator": "LessThanThreshold"}


def _aligned(
    y_true: Sequence[float] | np.ndarray, y_pred: Sequence[float] | np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    arrays = []
    for label, data in (("ground truth", y_true), ("predictions", y_pred)):
        try:
            array = np.asarray(data, dtype="float64")
        except (TypeError, ValueError) as err:
            raise ModelQualityError(f"{label} are not numbers: {err}") from err
        if array.ndim != 1:
            raise ModelQualityError(f"{label} must be one value per row, got shape {array.shape}")
        bad = int(np.count_nonzero(~np.isfinite(array)))
        if bad:
            raise ModelQualityError(f"{label} hold {bad} missing or non-finite values; drop those rows before scoring")
        arrays.append(array)
    truth, predicted = arrays
    if len(truth) != len(predicted):
        raise ModelQualityError(
            f"ground truth has {len(truth)} values but predictions have {len(predicted)}; join them on inferenceId/eventId first"
        )
    if len(truth) == 0:
        raise ModelQualityError("no labelled rows: ground truth and predictions are empty")
    return truth, predicted


def _metrics(truth: np.ndarray, predicted: np.ndarray) -> dict[str, float | None]:
    # Imported here: sklearn.metrics takes ~1 s to import, and the code location loads this module.
    from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score

    mse = float(mean_squared_error(truth, predicted))
    r2 = float(r2_score(truth, predicted)) if len(truth) >= 2 and np.ptp(truth) > 0 else None
    return {"mse": mse, "rmse": math.sqrt(mse), "mae": float(mean_absolute_error(truth, predicted)), "r2": r2}
