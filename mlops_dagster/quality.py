"""Data-quality rules for ``raw_data``, over a DataFrame or a table read chunk by chunk.

The asset checks in ``assets/data.py`` report them. They run once per table, chunk by chunk
(``BlockingChecks``; the functions below are the same rules on a whole DataFrame): ``raw_data``
hands ``s3_dataset`` a ``Verdict`` bound to the checked (staged) table by a fingerprint, so
``s3_dataset`` refuses bad data (even when materialized on its own) without running the rules again.
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


class _Listed:
    """Rows (0-based positions) a rule found: the first ``MAX_LISTED`` and how many in all."""

    def __init__(self) -> None:
        self.first: list[int] = []
        self.count = 0

    def add(self, mask: pd.Series | np.ndarray, offset: int) -> None:
        positions = np.flatnonzero(np.asarray(mask, dtype=bool))
        room = MAX_LISTED - len(self.first)
        if room > 0:
            self.first.extend(int(p) + offset for p in positions[:room])
        self.count += len(positions)

    def text(self) -> str:
        numbers = [str(p + 1) for p in self.first]
        more = self.count - len(numbers)
        return ", ".join(numbers) + (f" and {more} more" if more > 0 else "")


class _Rule:
    """One blocking rule over a table read in chunks: ``update`` per chunk, then ``result``.

    A whole table is one chunk, and rows are numbered by position from the table's start, so a
    rule reaches the same verdict and message however the table was cut.
    """

    def __init__(self, rule: QualityRule) -> None:
        self.rule = rule

    def update(self, chunk: pd.DataFrame, offset: int) -> None:
        """Take in ``chunk``, whose first row is row ``offset`` (0-based) of the table."""

    def result(self, columns: list, rows: int) -> QualityResult:
        raise NotImplementedError

    @classmethod
    def on(cls, frame: pd.DataFrame, rule: QualityRule) -> QualityResult:
        check = cls(rule)
        check.update(frame, 0)
        return check.result(list(frame.columns), len(frame))


class _RequiredColumns(_Rule):
    def result(self, columns: list, rows: int) -> QualityResult:
        required = [*self.rule.features, self.rule.target]
        missing = [c for c in required if c not in columns]
        if missing:
            return QualityResult(
                "required_columns", False,
                f"missing required column(s) {show_names(missing)}; found columns {show_names(columns)}",
                metadata={"missing": bounded_names(missing)},
            )  # fmt: skip
        return QualityResult("required_columns", True, f"all {len(required)} required columns present")


class _HeaderRows(_Rule):
    """Rows that repeat the header (files concatenated with their headers)."""

    def __init__(self, rule: QualityRule) -> None:
        super().__init__(rule)
        self.bad = _Listed()

    def update(self, chunk: pd.DataFrame, offset: int) -> None:
        if chunk.empty or chunk.shape[1] == 0:
            return
        matches = np.zeros(len(chunk), dtype=np.int32)
        for position, (name, dtype) in enumerate(zip(chunk.columns, chunk.dtypes, strict=True)):
            name = str(name).strip().lower()
            if _could_hold(dtype, name):
                matches += _header_matches(chunk.iloc[:, position], name)
        self.bad.add(matches >= max(2, (chunk.shape[1] + 1) // 2), offset)

    def result(self, columns: list, rows: int) -> QualityResult:
        if rows == 0 or not columns:
            return QualityResult("no_header_rows", True, "no rows to check")
        if self.bad.count:
            return QualityResult(
                "no_header_rows", False,
                f"row(s) {self.bad.text()} repeat the header line inside the data",
                metadata={"rows": [p + 1 for p in self.bad.first]},
            )  # fmt: skip
        return QualityResult("no_header_rows", True, "no repeated header rows")


class _NumericColumns(_Rule):
    def __init__(self, rule: QualityRule) -> None:
        super().__init__(rule)
        self.bad: dict[str, _Listed] = {}
        self.first_value: dict[str, str] = {}

    def update(self, chunk: pd.DataFrame, offset: int) -> None:
        for column in [c for c in (*self.rule.features, self.rule.target) if c in chunk.columns]:
            values = chunk[column]
            coerced = pd.to_numeric(values, errors="coerce")
            bad = (coerced.isna() & values.notna()).to_numpy()
            if bad.any():
                if column not in self.bad:
                    self.bad[column] = _Listed()
                    self.first_value[column] = str(values.iloc[int(np.argmax(bad))])
                self.bad[column].add(bad, offset)

    def result(self, columns: list, rows: int) -> QualityResult:
        problems = []
        for column in [c for c in (*self.rule.features, self.rule.target) if c in self.bad]:
            bad = self.bad[column]
            problems.append(
                f"column {show(column)} has non-numeric value {show(self.first_value[column])} at row {bad.first[0] + 1}"
                + (f" ({bad.count} rows in all: {bad.text()})" if bad.count > 1 else "")
            )
        if problems:
            return QualityResult("numeric_columns", False, "; ".join(problems))
        return QualityResult("numeric_columns", True, "features and target are numeric")


def _target_values(chunk: pd.DataFrame, target: str) -> pd.Series:
    return pd.to_numeric(chunk[target], errors="coerce").astype("float64")


class _TargetFinite(_Rule):
    def __init__(self, rule: QualityRule) -> None:
        super().__init__(rule)
        self.nan, self.inf = _Listed(), _Listed()

    def update(self, chunk: pd.DataFrame, offset: int) -> None:
        if self.rule.target not in chunk.columns:
            return
        target = _target_values(chunk, self.rule.target)
        self.nan.add(target.isna() & chunk[self.rule.target].isna(), offset)
        self.inf.add(np.isinf(target.to_numpy()), offset)

    def result(self, columns: list, rows: int) -> QualityResult:
        target = self.rule.target
        if target not in columns:
            return QualityResult("target_finite", False, f"target column {show(target)} is missing")
        parts = []
        if self.nan.count:
            parts.append(f"NaN at row(s) {self.nan.text()}")
        if self.inf.count:
            parts.append(f"infinite value at row(s) {self.inf.text()}")
        if parts:
            return QualityResult("target_finite", False, f"target {show(target)} has " + " and ".join(parts))
        return QualityResult("target_finite", True, f"target {show(target)} has no NaN or infinite values")


class _FeaturesMissing(_Rule):
    # Only truly empty cells count here; non-numeric cells are numeric_columns' to report.
    def __init__(self, rule: QualityRule) -> None:
        super().__init__(rule)
        self.missing: dict[str, int] = {}

    def update(self, chunk: pd.DataFrame, offset: int) -> None:
        for column in self.rule.features:
            if column in chunk.columns:
                self.missing[column] = self.missing.get(column, 0) + int(chunk[column].isna().sum())

    def result(self, columns: list, rows: int) -> QualityResult:
        fractions = {c: self.missing.get(c, 0) / rows if rows else 0.0 for c in self.rule.features if c in columns}
        over = {c: f for c, f in fractions.items() if f > self.rule.max_missing_fraction}
        if over:
            listed = ", ".join(f"{show(c)} {f:.1%}" for c, f in sorted(over.items())[:MAX_NAMES])
            if len(over) > MAX_NAMES:
                listed += f", … {len(over) - MAX_NAMES:,} more"
            return QualityResult(
                "features_missing", False,
                f"feature(s) missing more than {self.rule.max_missing_fraction:.1%} of values: {listed}",
                metadata={"missing_fraction": bounded_mapping(dict(sorted(over.items())))},
            )  # fmt: skip
        worst = max(fractions.values(), default=0.0)
        return QualityResult("features_missing", True, f"at most {worst:.1%} missing in any feature")


class _MinRows(_Rule):
    def result(self, columns: list, rows: int) -> QualityResult:
        if rows < self.rule.min_rows:
            return QualityResult(
                "min_rows", False, f"has {rows} rows, needs at least {self.rule.min_rows}", metadata={"rows": rows}
            )
        return QualityResult("min_rows", True, f"{rows} rows (minimum {self.rule.min_rows})", metadata={"rows": rows})


class _TargetRange(_Rule):
    def __init__(self, rule: QualityRule) -> None:
        super().__init__(rule)
        self.outside = _Listed()
        self.first_value: float | None = None

    def update(self, chunk: pd.DataFrame, offset: int) -> None:
        if self.rule.target not in chunk.columns:
            return
        target = _target_values(chunk, self.rule.target).to_numpy()
        outside = (target < self.rule.target_min) | (target > self.rule.target_max)
        if self.first_value is None and outside.any():
            self.first_value = float(target[int(np.argmax(outside))])
        self.outside.add(outside, offset)

    def result(self, columns: list, rows: int) -> QualityResult:
        rule, target = self.rule, show(self.rule.target)
        if rule.target not in columns:
            return QualityResult("target_range", False, f"target column {target} is missing")
        if self.outside.count:
            return QualityResult(
                "target_range", False,
                f"target {target} outside [{rule.target_min}, {rule.target_max}] at row(s) "
                f"{self.outside.text()} (first value {self.first_value})",
            )  # fmt: skip
        return QualityResult("target_range", True, f"target {target} within [{rule.target_min}, {rule.target_max}]")


def required_columns(frame: pd.DataFrame, rule: QualityRule) -> QualityResult:
    return _RequiredColumns.on(frame, rule)


def header_rows(frame: pd.DataFrame, rule: QualityRule) -> QualityResult:
    """Rows that repeat the header (files concatenated with their headers)."""
    return _HeaderRows.on(frame, rule)


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
    return _NumericColumns.on(frame, rule)


def target_finite(frame: pd.DataFrame, rule: QualityRule) -> QualityResult:
    return _TargetFinite.on(frame, rule)


def features_missing(frame: pd.DataFrame, rule: QualityRule) -> QualityResult:
    return _FeaturesMissing.on(frame, rule)


def min_rows(frame: pd.DataFrame, rule: QualityRule) -> QualityResult:
    return _MinRows.on(frame, rule)


def target_range(frame: pd.DataFrame, rule: QualityRule) -> QualityResult:
    return _TargetRange.on(frame, rule)


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
_BLOCKING = (_RequiredColumns, _HeaderRows, _NumericColumns, _TargetFinite, _FeaturesMissing, _MinRows, _TargetRange)


class BlockingChecks:
    """Every blocking rule over a table fed chunk by chunk; ``results`` once the table is read.

    Fed the whole table as one chunk it is ``run_blocking``; fed any cut of the same table it
    gives the same results.
    """

    def __init__(self, rule: QualityRule) -> None:
        self.rule = rule
        self.rows = 0
        self.columns: list | None = None
        self._rules = [cls(rule) for cls in _BLOCKING]

    def update(self, chunk: pd.DataFrame) -> BlockingChecks:
        if self.columns is None:
            self.columns = list(chunk.columns)
        for check in self._rules:
            check.update(chunk, self.rows)
        self.rows += len(chunk)
        return self

    def results(self) -> list[QualityResult]:
        return [check.result(self.columns or [], self.rows) for check in self._rules]


def run_blocking(frame: pd.DataFrame, rule: QualityRule) -> list[QualityResult]:
    return BlockingChecks(rule).update(frame).results()


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
