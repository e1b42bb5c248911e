"""Model Monitor's constraint violations: check types, entries, and the schema checks of a window.

``constraint_violations.json`` is ``{"violations": [{"feature_name", "constraint_check_type",
"description"}]}``. The descriptions follow Model Monitor's wording and add the counts behind them.

- ``missing_column_check`` / ``extra_column_check``: a baseline feature absent from the window, or
  a window column the baseline does not have (one entry per column).
- ``completeness_check``: the window's share of present values is below the baseline's
  ``completeness`` constraint.
- ``data_type_check``: the share of present values that fit the baseline's type is below
  ``monitoring_config.datatype_check_threshold`` (1.0: every value must fit). Integral takes
  whole numbers, Fractional any finite number; text and inf fit neither.
- ``baseline_drift_check``: written by ``drift`` for a drifted feature.
"""

from __future__ import annotations

from dataclasses import dataclass

from .baseline import INTEGRAL

BASELINE_DRIFT_CHECK = "baseline_drift_check"
DATA_TYPE_CHECK = "data_type_check"
COMPLETENESS_CHECK = "completeness_check"
MISSING_COLUMN_CHECK = "missing_column_check"
EXTRA_COLUMN_CHECK = "extra_column_check"
VIOLATIONS_FILE = "constraint_violations.json"


@dataclass(frozen=True)
class Violation:
    """One entry of Model Monitor's constraint_violations.json."""

    feature_name: str
    constraint_check_type: str
    description: str

    def to_dict(self) -> dict:
        return {
            "feature_name": self.feature_name,
            "constraint_check_type": self.constraint_check_type,
            "description": self.description,
        }


@dataclass(frozen=True)
class ColumnCounts:
    """What a window held for one baseline feature."""

    rows: int  # rows of the window
    numbers: int  # finite numbers
    non_numeric: int  # present cells that are not finite numbers
    non_whole: int  # finite numbers with a fractional part

    @property
    def present(self) -> int:
        return self.numbers + self.non_numeric


def missing_column(name: str, window_columns: int, baseline_columns: int) -> Violation:
    return Violation(
        name,
        MISSING_COLUMN_CHECK,
        f"There are missing columns in current dataset: {name!r} is not in it. Number of columns in current "
        f"dataset: {window_columns}, Number of columns in baseline constraints: {baseline_columns}",
    )


def extra_column(name: str, window_columns: int, baseline_columns: int) -> Violation:
    return Violation(
        name,
        EXTRA_COLUMN_CHECK,
        f"There are extra columns in current dataset: {name!r} is not in the baseline. Number of columns in "
        f"current dataset: {window_columns}, Number of columns in baseline constraints: {baseline_columns}",
    )


def column_violations(name: str, counts: ColumnCounts, constraint: dict, monitoring_config: dict) -> list[Violation]:
    """completeness_check and data_type_check of a feature present in the window."""
    found = []
    if counts.rows == 0:
        return found
    wanted = float(constraint.get("completeness", 1.0))
    observed = counts.present / counts.rows
    if observed < wanted:
        found.append(
            Violation(
                name,
                COMPLETENESS_CHECK,
                f"Data completeness requirement is not met. Expected completeness: {wanted:.4g}, Observed "
                f"completeness: {observed:.4g} ({counts.rows - counts.present:,} of {counts.rows:,} values missing)",
            )
        )
    expected = constraint.get("inferred_type")
    misfits = counts.non_numeric + (counts.non_whole if expected == INTEGRAL else 0)
    threshold = float(monitoring_config.get("datatype_check_threshold", 1.0))
    if counts.present and (fit := (counts.present - misfits) / counts.present) < threshold:
        why = f"{counts.non_numeric:,} not a finite number" + (
            f", {counts.non_whole:,} with a fractional part" if expected == INTEGRAL else ""
        )
        found.append(
            Violation(
                name,
                DATA_TYPE_CHECK,
                f"Data type match requirement is not met. Expected data type: {expected}, Expected match: "
                f"{threshold:.1%}. Observed: only {fit:.1%} of data is {expected} ({why})",
            )
        )
    return found


def baseline_drift(
    name: str, statistic: float, p_value: float, psi: float, threshold: float, significance: str, counts: str
) -> Violation:
    return Violation(
        name,
        BASELINE_DRIFT_CHECK,
        f"Baseline drift distance: {statistic:.4g} exceeds threshold: {threshold} and its KS p-value "
        f"{p_value:.3g} is below {significance}; PSI {psi:.3g}; {counts}",
    )
