"""Data-quality rules for ``raw_data``, as plain functions over a DataFrame.

The asset checks in ``assets/data.py`` report them. They run once per table: ``raw_data`` hands
``s3_dataset`` a ``Verdict`` bound to the checked table by a fingerprint, so ``s3_dataset``
refuses bad data (even when materialized on its own) without running the rules again.
Rows are numbered from 1, header excluded (row 1 is the CSV's line 2).

Every message is bounded: a value, a name or a whole message that is too long is cut, and the
text says how much was cut, so one huge cell cannot turn into a huge message or metadata entry.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

MAX_LISTED = 5  # rows named in a message before "…"
MAX_MESSAGE = 2000  # characters of one check message
MAX_VALUE = 80  # characters of one cell value or column name quoted in a message
MAX_NAMES = 30  # column names listed in a message or metadata entry before "… N more"


def shorten(text: str, keep: int) -> str:
    """The first ``keep`` characters of ``text`` and a note of how many more were cut."""
    if len(text) <= keep:
        return text
    return text[:keep] + f"… ({len(text) - keep:,} more characters cut)"


def clip(text: str, limit: int = MAX_MESSAGE) -> str:
    """``text`` cut to at most ``limit`` characters (note included) when it is longer."""
    return text if len(text) <= limit else shorten(text, max(limit - 48, 0))  # 48: room for the note


def show(value: object, limit: int = MAX_VALUE) -> str:
    """``repr(value)`` for a message; a long string is cut before it is quoted (no huge copy)."""
    if isinstance(value, str) and len(value) > limit:
        return f"{value[:limit]!r}… ({len(value) - limit:,} more characters cut)"
    return clip(repr(value), limit + 48)


def show_names(names: Iterable[object]) -> str:
    """A list of names as ``repr(list)`` would print it, bounded in count and in length."""
    names = list(names)
    shown = ", ".join(show(n) for n in names[:MAX_NAMES])
    more = f", … {len(names) - MAX_NAMES:,} more" if len(names) > MAX_NAMES else ""
    return f"[{shown}{more}]"


def bounded_names(names: Iterable[object]) -> list[str]:
    """Names for a metadata entry: at most ``MAX_NAMES``, each cut to ``MAX_VALUE`` characters."""
    names = list(names)
    listed = [shorten(str(n), MAX_VALUE) for n in names[:MAX_NAMES]]
    if len(names) > MAX_NAMES:
        listed.append(f"… ({len(names) - MAX_NAMES:,} more cut)")
    return listed


def bounded_mapping(mapping: Mapping[object, object]) -> dict[str, object]:
    """A name -> value mapping for a metadata entry, bounded like ``bounded_names``."""
    items = list(mapping.items())
    out: dict[str, object] = {shorten(str(k), MAX_VALUE): v for k, v in items[:MAX_NAMES]}
    if len(items) > MAX_NAMES:
        out["…"] = f"{len(items) - MAX_NAMES:,} more cut"
    return out


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

    def __post_init__(self) -> None:
        # The last guard on size: whatever a rule put in its message, the stored text is bounded.
        object.__setattr__(self, "message", clip(self.message))


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
            f"missing required column(s) {show_names(missing)}; found columns {show_names(frame.columns)}",
            metadata={"missing": bounded_names(missing)},
        )  # fmt: skip
    return QualityResult("required_columns", True, f"all {len(required)} required columns present")


def header_rows(frame: pd.DataFrame, rule: QualityRule) -> QualityResult:
    """Rows that repeat the header (files concatenated with their headers)."""
    if frame.empty or frame.shape[1] == 0:
        return QualityResult("no_header_rows", True, "no rows to check")
    matches = np.zeros(len(frame), dtype=np.int32)
    for position, (name, dtype) in enumerate(zip(frame.columns, frame.dtypes, strict=True)):
        name = str(name).strip().lower()
        if _could_hold(dtype, name):
            matches += _header_matches(frame.iloc[:, position], name)
    bad = frame.index[matches >= max(2, (frame.shape[1] + 1) // 2)]
    if len(bad):
        return QualityResult(
            "no_header_rows", False,
            f"row(s) {_rows(bad)} repeat the header line inside the data",
            metadata={"rows": [int(i) + 1 for i in bad[:MAX_LISTED]]},
        )  # fmt: skip
    return QualityResult("no_header_rows", True, "no repeated header rows")


def _header_matches(values: pd.Series, name: str) -> np.ndarray:
    """Which cells of one column read as its (stripped, lower-cased) header name.

    One column at a time (never a text copy of the whole table), and only cells at least as long
    as the name are stripped and compared.
    """
    if not (pd.api.types.is_object_dtype(values) or pd.api.types.is_string_dtype(values)):
        return values.astype("string").str.strip().str.lower().eq(name).fillna(False).to_numpy(dtype=bool)
    if pd.api.types.infer_dtype(values, skipna=True) not in ("string", "empty"):
        values = values.astype("string")  # mixed objects (Parquet): compare their text, as a CSV would
    lengths = values.str.len()
    candidates = (lengths >= len(name)).fillna(False).to_numpy(dtype=bool)
    out = np.zeros(len(values), dtype=bool)
    if candidates.any():
        out[candidates] = values[candidates].str.strip().str.lower().eq(name).fillna(False).to_numpy(dtype=bool)
    return out


def _could_hold(dtype: object, name: str) -> bool:
    """Whether a column of ``dtype`` can hold a cell that reads as ``name`` (skips numbers quickly)."""
    if pd.api.types.is_object_dtype(dtype) or pd.api.types.is_string_dtype(dtype):
        return True
    return _looks_numeric(name) or name in ("true", "false")


def _looks_numeric(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def numeric_columns(frame: pd.DataFrame, rule: QualityRule) -> QualityResult:
    problems = []
    for column in [c for c in (*rule.features, rule.target) if c in frame.columns]:
        values = frame[column]
        coerced = pd.to_numeric(values, errors="coerce")
        bad = values.index[coerced.isna() & values.notna()]
        if len(bad):
            first = bad[0]
            problems.append(
                f"column {show(column)} has non-numeric value {show(str(values[first]))} at row {int(first) + 1}"
                + (f" ({len(bad)} rows in all: {_rows(bad)})" if len(bad) > 1 else "")
            )
    if problems:
        return QualityResult("numeric_columns", False, "; ".join(problems))
    return QualityResult("numeric_columns", True, "features and target are numeric")


def target_finite(frame: pd.DataFrame, rule: QualityRule) -> QualityResult:
    if rule.target not in frame.columns:
        return QualityResult("target_finite", False, f"target column {show(rule.target)} is missing")
    target = pd.to_numeric(frame[rule.target], errors="coerce").astype("float64")
    nan_rows = frame.index[target.isna() & frame[rule.target].isna()]
    inf_rows = frame.index[np.isinf(target.to_numpy())]
    parts = []
    if len(nan_rows):
        parts.append(f"NaN at row(s) {_rows(nan_rows)}")
    if len(inf_rows):
        parts.append(f"infinite value at row(s) {_rows(inf_rows)}")
    if parts:
        return QualityResult("target_finite", False, f"target {show(rule.target)} has " + " and ".join(parts))
    return QualityResult("target_finite", True, f"target {show(rule.target)} has no NaN or infinite values")


def features_missing(frame: pd.DataFrame, rule: QualityRule) -> QualityResult:
    # Only truly empty cells count here; non-numeric cells are numeric_columns' to report.
    fractions = {c: float(frame[c].isna().mean()) if len(frame) else 0.0 for c in rule.features if c in frame.columns}
    over = {c: f for c, f in fractions.items() if f > rule.max_missing_fraction}
    if over:
        listed = ", ".join(f"{show(c)} {f:.1%}" for c, f in sorted(over.items())[:MAX_NAMES])
        if len(over) > MAX_NAMES:
            listed += f", … {len(over) - MAX_NAMES:,} more"
        return QualityResult(
            "features_missing", False,
            f"feature(s) missing more than {rule.max_missing_fraction:.1%} of values: {listed}",
            metadata={"missing_fraction": bounded_mapping(dict(sorted(over.items())))},
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
        return QualityResult("target_range", False, f"target column {show(rule.target)} is missing")
    target = pd.to_numeric(frame[rule.target], errors="coerce").astype("float64")
    outside = frame.index[(target < rule.target_min) | (target > rule.target_max)]
    if len(outside):
        first = outside[0]
        return QualityResult(
            "target_range", False,
            f"target {show(rule.target)} outside [{rule.target_min}, {rule.target_max}] at row(s) "
            f"{_rows(outside)} (first value {target[first]})",
        )  # fmt: skip
    return QualityResult(
        "target_range", True, f"target {show(rule.target)} within [{rule.target_min}, {rule.target_max}]"
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


@dataclass(frozen=True)
class Verdict:
    """The blocking rules' outcome on one table, tied to that table by its fingerprint."""

    fingerprint: str
    failed: tuple[QualityResult, ...]

    @classmethod
    def of(cls, frame: pd.DataFrame, results: Iterable[QualityResult]) -> Verdict:
        return cls(fingerprint(frame), tuple(r for r in results if r.blocking and not r.passed))

    @property
    def passed(self) -> bool:
        return not self.failed

    def covers(self, frame: pd.DataFrame) -> bool:
        """Whether this verdict was reached on exactly ``frame`` (same names, types and values)."""
        return fingerprint(frame) == self.fingerprint


def fingerprint(frame: pd.DataFrame) -> str:
    """sha256 over the column names, dtypes and a vectorized hash of every column's values."""
    dtypes = list(frame.dtypes)
    names = [[str(c), str(t)] for c, t in zip(frame.columns, dtypes, strict=True)]
    digest = hashlib.sha256(json.dumps(names).encode())
    digest.update(len(frame).to_bytes(8, "big"))
    # Plain numpy columns of one dtype are hashed as one block (fast for wide tables); others one by one.
    blocks: dict[np.dtype, list[int]] = {}
    for position, dtype in enumerate(dtypes):
        if isinstance(dtype, np.dtype) and dtype.kind in "biufcmM":
            blocks.setdefault(dtype, []).append(position)
        else:
            digest.update(_column_hash(frame.iloc[:, position]).tobytes())
    for dtype, positions in blocks.items():
        values = frame.iloc[:, positions].to_numpy(dtype=dtype).ravel(order="F")
        digest.update(pd.util.hash_array(values, categorize=False).tobytes())
    return digest.hexdigest()


def _column_hash(values: pd.Series) -> np.ndarray:
    try:
        return pd.util.hash_pandas_object(values, index=False, categorize=False).to_numpy()
    except (TypeError, ValueError):
        # Cells pandas cannot hash (lists or dicts from Parquet): hash their repr instead.
        return pd.util.hash_pandas_object(values.map(repr), index=False, categorize=False).to_numpy()
