"""Data-quality rules for ``raw_data``, as plain functions over a DataFrame.

The asset checks in ``assets/data.py`` report them; ``s3_dataset`` runs the blocking ones again
before it writes, so bad data never reaches the store even when ``s3_dataset`` is materialized
on its own. Rows are numbered from 1, header excluded (row 1 is the CSV's line 2).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

MAX_LISTED = 5  # rows named in a message before "…"


@dataclass(frozen=True)
class QualityRule:
    """Thresholds of the rules; defaults suit the recipe's Boston Housing data."""

    features: tuple[str, ...]
    target: str
    min_rows: int = 20
    max_missing_fraction: float = 0.05
    target_min: float = 0.0
    target_max: float = 100.0
    max_row_drop_fraction: float = 0.5


@dataclass(frozen=True)
class QualityResult:
    name: str
    passed: bool
    message: str
    blocking: bool = True
    metadata: dict = field(default_factory=dict)


def _rows(index: pd.Index | np.ndarray) -> str:
    numbers = [str(int(i) + 1) for i in list(index)[:MAX_LISTED]]
    more = len(index) - len(numbers)
    return ", ".join(numbers) + (f" and {more} more" if more > 0 else "")


def required_columns(frame: pd.DataFrame, rule: QualityRule) -> QualityResult:
    required = [*rule.features, rule.target]
    missing = [c for c in required if c not in frame.columns]
    if missing:
        return QualityResult(
            "required_columns", False,
            f"missing required column(s) {missing}; found columns {list(frame.columns)}",
            metadata={"missing": missing},
        )  # fmt: skip
    return QualityResult("required_columns", True, f"all {len(required)} required columns present")


def header_rows(frame: pd.DataFrame, rule: QualityRule) -> QualityResult:
    """Rows that repeat the header (files concatenated with their headers)."""
    if frame.empty or frame.shape[1] == 0:
        return QualityResult("no_header_rows", True, "no rows to check")
    as_text = frame.astype("string").apply(lambda col: col.str.strip().str.lower())
    names = pd.Series([str(c).strip().lower() for c in frame.columns], index=frame.columns)
    matches = as_text.eq(names, axis=1).sum(axis=1)
    bad = frame.index[matches >= max(2, (frame.shape[1] + 1) // 2)]
    if len(bad):
        return QualityResult(
            "no_header_rows", False,
            f"row(s) {_rows(bad)} repeat the header line inside the data",
            metadata={"rows": [int(i) + 1 for i in bad[:MAX_LISTED]]},
        )  # fmt: skip
    return QualityResult("no_header_rows", True, "no repeated header rows")


def numeric_columns(frame: pd.DataFrame, rule: QualityRule) -> QualityResult:
    problems = []
    for column in [c for c in (*rule.features, rule.target) if c in frame.columns]:
        values = frame[column]
        coerced = pd.to_numeric(values, errors="coerce")
        bad = values.index[coerced.isna() & values.notna()]
        if len(bad):
            first = bad[0]
            problems.append(
                f"column {column!r} has non-numeric value {str(values[first])!r} at row {int(first) + 1}"
                + (f" ({len(bad)} rows in all: {_rows(bad)})" if len(bad) > 1 else "")
            )
    if problems:
        return QualityResult("numeric_columns", False, "; ".join(problems))
    return QualityResult("numeric_columns", True, "features and target are numeric")


def target_finite(frame: pd.DataFrame, rule: QualityRule) -> QualityResult:
    if rule.target not in frame.columns:
        return QualityResult("target_finite", False, f"target column {rule.target!r} is missing")
    target = pd.to_numeric(frame[rule.target], errors="coerce").astype("float64")
    nan_rows = frame.index[target.isna() & frame[rule.target].isna()]
    inf_rows = frame.index[np.isinf(target.to_numpy())]
    parts = []
    if len(nan_rows):
        parts.append(f"NaN at row(s) {_rows(nan_rows)}")
    if len(inf_rows):
        parts.append(f"infinite value at row(s) {_rows(inf_rows)}")
    if parts:
        return QualityResult("target_finite", False, f"target {rule.target!r} has " + " and ".join(parts))
    return QualityResult("target_finite", True, f"target {rule.target!r} has no NaN or infinite values")


def features_missing(frame: pd.DataFrame, rule: QualityRule) -> QualityResult:
    # Only truly empty cells count here; non-numeric cells are numeric_columns' to report.
    fractions = {c: float(frame[c].isna().mean()) if len(frame) else 0.0 for c in rule.features if c in frame.columns}
    over = {c: f for c, f in fractions.items() if f > rule.max_missing_fraction}
    if over:
        listed = ", ".join(f"{c!r} {f:.1%}" for c, f in sorted(over.items()))
        return QualityResult(
            "features_missing", False,
            f"feature(s) missing more than {rule.max_missing_fraction:.1%} of values: {listed}",
            metadata={"missing_fraction": over},
        )  # fmt: skip
    worst = max(fractions.values(), default=0.0)
    return QualityResult("features_missing", True, f"at most {worst:.1%} missing in any feature")


def min_rows(frame: pd.DataFrame, rule: QualityRule) -> QualityResult:
    n = len(frame)
    if n < rule.min_rows:
        return QualityResult(
            "min_rows", False, f"has {n} rows, needs at least {rule.min_rows}", metadata={"rows": n}
        )
    return QualityResult("min_rows", True, f"{n} rows (minimum {rule.min_rows})", metadata={"rows": n})


def target_range(frame: pd.DataFrame, rule: QualityRule) -> QualityResult:
    if rule.target not in frame.columns:
        return QualityResult("target_range", False, f"target column {rule.target!r} is missing")
    target = pd.to_numeric(frame[rule.target], errors="coerce").astype("float64")
    outside = frame.index[(target < rule.target_min) | (target > rule.target_max)]
    if len(outside):
        first = outside[0]
        return QualityResult(
            "target_range", False,
            f"target {rule.target!r} outside [{rule.target_min}, {rule.target_max}] at row(s) "
            f"{_rows(outside)} (first value {target[first]})",
        )  # fmt: skip
    return QualityResult(
        "target_range", True, f"target {rule.target!r} within [{rule.target_min}, {rule.target_max}]"
    )


def row_count_drop(rows: int, previous_rows: int | None, rule: QualityRule) -> QualityResult:
    """Warns (does not block) when the table shrank by more than the allowed fraction."""
    if not previous_rows:
        return QualityResult("row_count_drop", True, "no previous materialization to compare", blocking=False)
    drop = 1 - rows / previous_rows
    metadata = {"rows": rows, "previous_rows": previous_rows}
    if drop > rule.max_row_drop_fraction:
        return QualityResult(
            "row_count_drop", False,
            f"row count fell from {previous_rows} to {rows} ({drop:.0%} drop, more than "
            f"{rule.max_row_drop_fraction:.0%})",
            blocking=False, metadata=metadata,
        )  # fmt: skip
    return QualityResult("row_count_drop", True, f"{rows} rows, previously {previous_rows}", False, metadata)


BLOCKING_RULES = (required_columns, header_rows, numeric_columns, target_finite, features_missing, min_rows, target_range)


def run_blocking(frame: pd.DataFrame, rule: QualityRule) -> list[QualityResult]:
    return [check(frame, rule) for check in BLOCKING_RULES]
