"""Drift of a window of traffic against a model's baseline, with Model Monitor's violation checks.

The drift rule is a two-sample Kolmogorov-Smirnov test per feature (scipy's ``ks_2samp`` against
the baseline's reference sample) whose threshold accounts for sample size: a feature drifted
only when its p-value is below ``alpha / number of features`` (Bonferroni: the chance that an
undrifted window alarms on any feature stays below ``alpha``) **and** its KS statistic (the
L-infinity distance between the two CDFs, the quantity Model Monitor compares with
``comparison_threshold``) is at least ``min_statistic``, so a huge window does not alarm on a
difference nobody cares about. Model Monitor's own rule (distance > 0.1 whatever the size)
alarms on most features of a 100-row window drawn from the training distribution itself.

A window with fewer than ``min_samples`` rows (or values of a feature) is "insufficient samples":
reported, never drifted. PSI (10 buckets at the baseline's deciles) is reported beside the test.

The report also runs Model Monitor's schema checks (``violations``: missing and extra columns,
completeness, data type) and writes the window's statistics.json and constraint_violations.json.

Windows can be large: ``WindowAccumulator`` takes chunks of rows and keeps one float64 array per
feature (1,000,000 rows x 13 features is about 100 MB); ``report()`` computes everything at the end.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from .baseline import (
    FRACTIONAL,
    INTEGRAL,
    KLL_BUCKETS,
    STRING,
    UNKNOWN,
    Baseline,
    numerical_statistics,
    split_column,
)
from .violations import (
    BASELINE_DRIFT_CHECK,
    VIOLATIONS_FILE,
    ColumnCounts,
    Violation,
    baseline_drift,
    column_violations,
    extra_column,
    missing_column,
)

WINDOW_STATISTICS_FILE = "statistics.json"

# Status of a feature's drift test.
OK = "ok"
DRIFTED = "drifted"
INSUFFICIENT = "insufficient samples"  # too few rows or values to judge: never drifted
MISSING = "missing column"
NOT_COMPARED = "not compared"  # constraints.json turned distribution comparison off


class DriftInputError(ValueError):
    """A window or a setting the drift report cannot use; the message says which and why."""


@dataclass(frozen=True)
class DriftConfig:
    """Thresholds of the drift rule; the defaults hold false alarms near 1% (see bench/monitoring.py)."""

    alpha: float = 0.01  # family-wise significance, split over the features (Bonferroni)
    min_statistic: float = 0.1  # minimum KS statistic (CDF distance) that counts as drift
    min_samples: int = 30  # fewer rows (or values of a feature) than this: insufficient samples
    psi_buckets: int = KLL_BUCKETS
    psi_epsilon: float = 1e-4  # floor of a bucket's share, so an empty bucket does not divide by 0
    exact_max: int = 10_000  # windows larger than this use the asymptotic KS p-value (speed)

    def __post_init__(self) -> None:
        problems = []
        if not (isinstance(self.alpha, int | float) and 0 < self.alpha < 1):
            problems.append(f"alpha must be between 0 and 1 (exclusive), got {self.alpha!r}")
        if not (isinstance(self.min_statistic, int | float) and 0 <= self.min_statistic <= 1):
            problems.append(f"min_statistic must be between 0 and 1, got {self.min_statistic!r}")
        for name in ("min_samples", "psi_buckets", "exact_max"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < (2 if name == "psi_buckets" else 1):
                problems.append(f"{name} must be an integer >= {2 if name == 'psi_buckets' else 1}, got {value!r}")
        if not (isinstance(self.psi_epsilon, int | float) and 0 < self.psi_epsilon < 1):
            problems.append(f"psi_epsilon must be between 0 and 1 (exclusive), got {self.psi_epsilon!r}")
        if problems:
            raise DriftInputError("drift settings: " + "; ".join(problems))


@dataclass(frozen=True)
class FeatureDrift:
    """The drift test of one feature; numbers are None where there was nothing to test."""

    name: str
    status: str  # ok | drifted | insufficient samples | missing column | not compared
    window_count: int  # finite values of the feature in the window
    baseline_count: int  # values the baseline's reference sample stands for
    statistic: float | None = None  # KS statistic: max distance between the two CDFs
    p_value: float | None = None
    psi: float | None = None
    critical_statistic: float | None = None  # KS statistic where p = corrected alpha (asymptotic)

    @property
    def drifted(self) -> bool:
        return self.status == DRIFTED

    def to_dict(self) -> dict:
        return {
            "feature": self.name,
            "status": self.status,
            "drifted": self.drifted,
            "ks_statistic": self.statistic,
            "p_value": self.p_value,
            "psi": self.psi,
            "critical_statistic": self.critical_statistic,
            "window_count": self.window_count,
            "baseline_count": self.baseline_count,
        }


@dataclass(frozen=True)
class DriftReport:
    """Everything a monitoring asset needs to record and judge one window."""

    rows: int
    features: tuple[FeatureDrift, ...]
    violations: tuple[Violation, ...]
    statistics: dict  # the window's statistics.json
    config: DriftConfig
    corrected_alpha: float

    @property
    def insufficient(self) -> bool:
        return self.rows < self.config.min_samples

    @property
    def drifted_features(self) -> list[str]:
        return [f.name for f in self.features if f.drifted]

    @property
    def drift_violations(self) -> list[Violation]:
        return [v for v in self.violations if v.constraint_check_type == BASELINE_DRIFT_CHECK]

    @property
    def schema_violations(self) -> list[Violation]:
        return [v for v in self.violations if v.constraint_check_type != BASELINE_DRIFT_CHECK]

    @property
    def status(self) -> str:
        if self.drifted_features:
            return DRIFTED
        return INSUFFICIENT if self.insufficient else OK

    def feature(self, name: str) -> FeatureDrift:
        return next(f for f in self.features if f.name == name)

    def constraint_violations(self) -> dict:
        return {"violations": [v.to_dict() for v in self.violations]}

    def files(self) -> dict[str, bytes]:
        """The window's statistics.json and constraint_violations.json, as UTF-8 JSON."""
        return {
            WINDOW_STATISTICS_FILE: json.dumps(self.statistics, indent=2, allow_nan=False).encode("utf-8"),
            VIOLATIONS_FILE: json.dumps(self.constraint_violations(), indent=2, allow_nan=False).encode("utf-8"),
        }

    def table(self) -> list[dict]:
        """One row per feature (for a metadata table)."""
        return [f.to_dict() for f in self.features]

    def markdown(self) -> str:
        lines = ["| feature | status | KS statistic | p-value | PSI | window n |", "|---|---|---|---|---|---|"]
        for f in self.features:
            lines.append(
                f"| {f.name} | {f.status} | {_fmt(f.statistic, '.3f')} | {_fmt(f.p_value, '.2e')} | "
                f"{_fmt(f.psi, '.3f')} | {f.window_count:,} |"
            )
        return "\n".join(lines)

    def summary(self) -> str:
        rule = (
            f"KS p < {self.corrected_alpha:.2e} (alpha {self.config.alpha} / {len(self.features)} features) "
            f"and KS statistic >= {self.config.min_statistic}"
        )
        if self.drifted_features:
            return f"drift in {len(self.drifted_features)} feature(s) {self.drifted_features} over {self.rows:,} rows ({rule})"
        if self.insufficient:
            return f"insufficient samples: {self.rows:,} rows, fewer than min_samples={self.config.min_samples}; not judged"
        return f"no drift over {self.rows:,} rows ({rule})"


@dataclass
class _FeatureState:
    parts: list[np.ndarray] = field(default_factory=list)  # finite values of chunks not yet merged
    merged: np.ndarray = field(default_factory=lambda: np.empty(0))  # sorted values merged so far
    seen: bool = False  # the column appeared in at least one chunk
    count: int = 0  # finite values
    missing: int = 0  # null cells, and rows of chunks without the column
    non_numeric: int = 0
    non_whole: int = 0

    def values(self) -> np.ndarray:
        """All finite values, sorted; merged into one array so a second report copies nothing."""
        if self.parts:
            self.merged = np.concatenate([self.merged, *self.parts])
            self.merged.sort()
            self.parts = []
        return self.merged


class WindowAccumulator:
    """Collects a window chunk by chunk (DataFrames or 2-D arrays) and reports on it at the end."""

    def __init__(self, baseline: Baseline) -> None:
        if not isinstance(baseline, Baseline):
            raise DriftInputError(f"a drift report needs a Baseline, got {type(baseline).__name__}")
        self.baseline = baseline
        self.rows = 0
        self._state = {name: _FeatureState() for name in baseline.features}
        self._extra: dict[str, None] = {}  # columns not in the baseline, in order of appearance

    def add(self, chunk: pd.DataFrame) -> None:
        """Add rows; columns are matched to the baseline's features by name."""
        if not isinstance(chunk, pd.DataFrame):
            raise DriftInputError(f"a window chunk must be a pandas DataFrame, got {type(chunk).__name__}")
        names = [str(c) for c in chunk.columns]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise DriftInputError(f"window chunk has columns named twice: {twice}; rename or drop them")
        chunk = chunk.set_axis(names, axis=1)
        for name in names:
            if name not in self._state:
                self._extra.setdefault(name, None)
        for name, state in self._state.items():
            if name not in chunk.columns:
                state.missing += len(chunk)
                continue
            column = split_column(chunk[name])
            state.seen = True
            state.parts.append(column.numbers)
            state.count += len(column.numbers)
            state.missing += column.missing
            state.non_numeric += column.non_numeric
            state.non_whole += column.non_whole
        self.rows += len(chunk)

    def add_array(self, rows: np.ndarray, columns: Sequence[str]) -> None:
        """Add a 2-D array of rows whose columns are named by ``columns`` (no copy for float64)."""
        rows = np.asarray(rows)
        if rows.ndim != 2 or rows.shape[1] != len(columns):
            raise DriftInputError(f"rows of shape {rows.shape} do not match {len(columns)} column names")
        self.add(pd.DataFrame(rows, columns=list(columns), copy=False))

    def report(self, config: DriftConfig | None = None) -> DriftReport:
        config = config or DriftConfig()
        monitoring = self.baseline.constraints.get("monitoring_config", {})
        evaluate = monitoring.get("evaluate_constraints", "Enabled") != "Disabled"
        compare = monitoring.get("distribution_constraints", {}).get("perform_comparison", "Enabled") != "Disabled"
        corrected = config.alpha / len(self._state)
        features, violations, window_stats = [], [], []
        for name, state in self._state.items():
            values = state.values()
            if state.seen:
                window_stats.append(self._feature_statistics(name, state, values))
            if evaluate:
                violations += self._schema_violations(name, state)
            result = self._drift(name, state, values, config, corrected, compare)
            features.append(result)
            if result.drifted:
                violations.append(_drift_violation(result, config, corrected, len(self._state)))
        if evaluate:
            violations += [extra_column(name, self._window_columns(), len(self._state)) for name in self._extra]
        statistics = {"version": 0.0, "dataset": {"item_count": self.rows}, "features": window_stats}
        return DriftReport(self.rows, tuple(features), tuple(violations), statistics, config, corrected)

    def _feature_statistics(self, name: str, state: _FeatureState, values: np.ndarray) -> dict:
        if len(values) + state.non_numeric == 0:
            observed = UNKNOWN
        elif state.non_numeric:
            observed = STRING
        else:
            observed = INTEGRAL if state.non_whole == 0 else FRACTIONAL
        stats = numerical_statistics(values, state.missing, extra_present=state.non_numeric)
        return {"name": name, "inferred_type": observed, "numerical_statistics": stats}

    def _schema_violations(self, name: str, state: _FeatureState) -> list[Violation]:
        if self.rows == 0:
            return []
        if not state.seen:
            return [missing_column(name, self._window_columns(), len(self._state))]
        counts = ColumnCounts(self.rows, state.count, state.non_numeric, state.non_whole)
        monitoring = self.baseline.constraints.get("monitoring_config", {})
        return column_violations(name, counts, self.baseline.constraint(name), monitoring)

    def _window_columns(self) -> int:
        return sum(s.seen for s in self._state.values()) + len(self._extra)

    def _drift(
        self, name: str, state: _FeatureState, values: np.ndarray, config: DriftConfig, corrected: float, compare: bool
    ) -> FeatureDrift:
        reference, count = self.baseline.samples[name], int(self.baseline.counts[name])
        if not state.seen:
            return FeatureDrift(name, MISSING, 0, count)
        n = len(values)
        if not compare or n == 0:
            return FeatureDrift(name, NOT_COMPARED if not compare else INSUFFICIENT, n, count)
        method = "asymp" if n > config.exact_max else "auto"
        from scipy.stats import ks_2samp  # scipy.stats takes ~1 s to import: not when the code location loads

        test = ks_2samp(values, reference, method=method)
        statistic, p_value = float(test.statistic), float(test.pvalue)
        critical = critical_statistic(n, len(reference), corrected)
        if self.rows < config.min_samples or n < config.min_samples:
            status = INSUFFICIENT
        elif p_value < corrected and statistic >= config.min_statistic:
            status = DRIFTED
        else:
            status = OK
        score = _psi_sorted(reference, values, config.psi_buckets, config.psi_epsilon)
        return FeatureDrift(name, status, n, count, statistic, p_value, score, critical)


def compare_window(baseline: Baseline, window: pd.DataFrame, config: DriftConfig | None = None) -> DriftReport:
    """Drift report of one in-memory window (see ``WindowAccumulator`` for chunked windows)."""
    accumulator = WindowAccumulator(baseline)
    accumulator.add(window)
    return accumulator.report(config)


def critical_statistic(n: int, m: int, alpha: float) -> float:
    """KS statistic at which the asymptotic two-sample p-value equals ``alpha``: shrinks as n, m grow."""
    return math.sqrt(-0.5 * math.log(alpha / 2)) * math.sqrt((n + m) / (n * m))


def psi(
    reference: Sequence[float] | np.ndarray,
    window: Sequence[float] | np.ndarray,
    buckets: int = 10,
    epsilon: float = 1e-4,
) -> float:
    """Population stability index of ``window`` against ``reference``, in buckets at its quantiles."""
    reference = np.sort(np.asarray(reference, dtype="float64"))
    window = np.sort(np.asarray(window, dtype="float64"))
    if len(reference) == 0 or len(window) == 0:
        raise DriftInputError(
            f"PSI needs values on both sides, got {len(reference)} reference and {len(window)} window values"
        )
    return _psi_sorted(reference, window, buckets, epsilon)


def _psi_sorted(reference: np.ndarray, window: np.ndarray, buckets: int, epsilon: float) -> float:
    # Interior edges at the reference's quantiles; a repeated edge (a discrete feature) is merged.
    # Bucket i holds (edge[i-1], edge[i]], so a value equal to an edge falls the same way on both sides.
    edges = np.unique(np.quantile(reference, np.arange(1, buckets) / buckets))
    expected = _bucket_shares(reference, edges, epsilon)
    actual = _bucket_shares(window, edges, epsilon)
    return float(np.sum((actual - expected) * np.log(actual / expected)))


def _bucket_shares(sorted_values: np.ndarray, edges: np.ndarray, epsilon: float) -> np.ndarray:
    at_or_below = np.searchsorted(sorted_values, edges, side="right")
    counts = np.diff(np.concatenate(([0], at_or_below, [len(sorted_values)])))
    return np.maximum(counts / len(sorted_values), epsilon)


def _drift_violation(result: FeatureDrift, config: DriftConfig, corrected: float, features: int) -> Violation:
    return baseline_drift(
        result.name,
        result.statistic,
        result.p_value,
        result.psi,
        config.min_statistic,
        f"{corrected:.3g} (alpha {config.alpha} / {features} features)",
        f"{result.window_count:,} window values vs {result.baseline_count:,} baseline values",
    )


def _fmt(value: float | None, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)
