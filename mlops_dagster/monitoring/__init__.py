"""Monitoring statistics: drift baselines, drift and schema checks, model quality (no Dagster here).

``baseline`` computes a model's baseline in SageMaker Model Monitor's formats (statistics.json,
constraints.json) plus the reference sample the KS test needs; ``drift`` judges a window of
traffic against it (KS with a Bonferroni-corrected p-value and a minimum effect size, PSI,
Model Monitor's schema checks, whose entries ``violations`` writes) and writes the window's
statistics.json and constraint_violations.json; ``model_quality`` scores predictions against ground truth and
compares with the validation metrics. The assets, capture reader, alerts and triggers build on these.
"""

from .baseline import (
    BASELINE_FILES,
    CONSTRAINTS_FILE,
    PREDICTION_COLUMN,
    SAMPLE_FILE,
    STATISTICS_FILE,
    Baseline,
    BaselineError,
    compute_baseline,
    dataset_statistics,
    prediction_baseline,
)
from .drift import (
    DriftConfig,
    DriftInputError,
    DriftReport,
    FeatureDrift,
    WindowAccumulator,
    compare_window,
    critical_statistic,
    psi,
)
from .model_quality import (
    ModelQualityError,
    QualityComparison,
    RegressionMetrics,
    compare_quality,
    regression_metrics,
    validation_metrics,
)
from .violations import (
    BASELINE_DRIFT_CHECK,
    COMPLETENESS_CHECK,
    DATA_TYPE_CHECK,
    EXTRA_COLUMN_CHECK,
    MISSING_COLUMN_CHECK,
    VIOLATIONS_FILE,
    Violation,
)

__all__ = [
    "BASELINE_DRIFT_CHECK",
    "BASELINE_FILES",
    "COMPLETENESS_CHECK",
    "CONSTRAINTS_FILE",
    "DATA_TYPE_CHECK",
    "EXTRA_COLUMN_CHECK",
    "MISSING_COLUMN_CHECK",
    "PREDICTION_COLUMN",
    "SAMPLE_FILE",
    "STATISTICS_FILE",
    "VIOLATIONS_FILE",
    "Baseline",
    "BaselineError",
    "DriftConfig",
    "DriftInputError",
    "DriftReport",
    "FeatureDrift",
    "ModelQualityError",
    "QualityComparison",
    "RegressionMetrics",
    "Violation",
    "WindowAccumulator",
    "compare_quality",
    "compare_window",
    "compute_baseline",
    "critical_statistic",
    "dataset_statistics",
    "prediction_baseline",
    "psi",
    "regression_metrics",
    "validation_metrics",
]
