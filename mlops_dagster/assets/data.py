"""The recipe's step 3 as assets: ``raw_data`` (behind blocking quality checks) and ``s3_dataset``.

The checks run once, in ``raw_data``; their verdict travels with the table to ``s3_dataset``.
Every metadata entry is bounded (``MAX_TEXT`` characters, a few columns and rows), so an odd
input (one huge cell, a huge header name, thousands of columns) cannot blow up the event log.
"""

import hashlib
import json
import math
from dataclasses import asdict, dataclass
from typing import Any

import pandas as pd
from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    Config,
    DataVersion,
    Failure,
    MarkdownMetadataValue,
    MetadataValue,
    Output,
    TableColumn,
    TableRecord,
    TableSchema,
    TextMetadataValue,
    asset,
)
from pydantic import Field, ValidationInfo, field_validator, model_validator

from .. import quality
from ..datasets import BOSTON_FEATURES, BOSTON_TARGET, load_source, numeric_frame, split_frame, to_csv_bytes
from ..resources.object_store import ObjectStore
from ..settings import Settings

CHECKS = {
    "required_columns": "Every feature column and the target column are present.",
    "no_header_rows": "No row inside the data repeats the header line.",
    "numeric_columns": "Every feature and the target parse as numbers (names the column and row).",
    "target_finite": "The target has no NaN or infinite value.",
    "features_missing": "No feature misses more than the configured fraction of values.",
    "min_rows": "At least the configured minimum number of rows.",
    "target_range": "The target lies within the configured plausible range.",
}

MAX_TEXT = 4000  # characters of one text metadata entry (markdown, JSON, text)
MAX_SUMMARY_COLUMNS = 24  # columns described in a column_summary table
MAX_PREVIEW_COLUMNS = 16  # columns and ...
MAX_PREVIEW_CELL = 40  # ... characters per cell shown in the preview
MAX_SYNTHETIC_ROWS = 10_000_000  # about 1.1 GB as a table; more does not fit a laptop's memory
MAX_SEED = 2**63 - 1


@dataclass
class RawTable:
    """What ``raw_data`` hands downstream: the table as read, the rule, and the rule's verdict on it."""

    frame: pd.DataFrame
    source: str
    source_sha256: "str | None"
    rule: quality.QualityRule
    verdict: "quality.Verdict | None" = None  # None only in a table stored by an older version


def _check_range(name: str, value: float, low: float | None, high: float | None, open_: bool = False) -> None:
    """Raise a ValueError naming the field and its allowed range when ``value`` is outside it."""
    inside = math.isfinite(value) and (
        (low is None or (value > low if open_ else value >= low))
        and (high is None or (value < high if open_ else value <= high))
    )
    if inside:
        return
    if low is None and high is None:
        allowed = "a finite number"
    elif high is None:
        allowed = f"an integer >= {low:,}"
    elif open_:
        allowed = f"a number strictly between {low} and {high}"
    elif isinstance(value, int):
        allowed = f"an integer from {low:,} to {high:,}"
    else:
        allowed = f"a number from {low} to {high}"
    raise ValueError(f"{name} must be {allowed}; got {value!r}")


# field -> (low, high, bounds excluded); checked when the config is built, before any data is read.
RAW_RANGES: dict[str, tuple[float | None, float | None, bool]] = {
    "rows": (1, MAX_SYNTHETIC_ROWS, False),
    "seed": (0, MAX_SEED, False),
    "min_rows": (2, None, False),  # one train row and one validation row at least
    "max_missing_fraction": (0, 1, False),
    "target_min": (None, None, False),
    "target_max": (None, None, False),
    "max_row_drop_fraction": (0, 1, False),
}
S3_RANGES: dict[str, tuple[float | None, float | None, bool]] = {
    "train_fraction": (0, 1, True),
    "seed": (0, MAX_SEED, False),
}


class RawDataConfig(Config):
    source: str | None = Field(
        default=None,
        description="CSV/Parquet path, s3:// URI, or 'synthetic'; defaults to MLOPS_DATA_SOURCE",
    )
    rows: int = Field(default=1000, description=f"rows of the synthetic source, 1 to {MAX_SYNTHETIC_ROWS:,}")
    seed: int = Field(default=42, description="seed of the synthetic source, 0 to 2^63-1")
    target: str = Field(default=BOSTON_TARGET, description="target column")
    features: list[str] | None = Field(
        default=None,
        description="feature columns; default: the Boston features when the target is medv, "
        "else every column but the target",
    )
    min_rows: int = Field(default=20, description="blocking: at least this many rows (>= 2)")
    max_missing_fraction: float = Field(
        default=0.05, description="blocking: largest share of missing values in a feature, 0 to 1"
    )
    target_min: float = Field(default=0.0, description="blocking: smallest plausible target (finite, <= target_max)")
    target_max: float = Field(default=100.0, description="blocking: largest plausible target (finite)")
    max_row_drop_fraction: float = Field(
        default=0.5, description="warning: largest share of rows lost since the last run, 0 to 1"
    )

    @field_validator(*RAW_RANGES)
    @classmethod
    def _in_range(cls, value: float, info: ValidationInfo) -> float:
        _check_range(info.field_name, value, *RAW_RANGES[info.field_name])
        return value

    @model_validator(mode="after")
    def _target_bounds_ordered(self) -> "RawDataConfig":
        if self.target_min > self.target_max:
            raise ValueError(
                f"target_min ({self.target_min}) must be <= target_max ({self.target_max}): "
                "no target value could pass the target_range check"
            )
        return self


class S3DatasetConfig(Config):
    train_fraction: float = Field(default=0.8, description="share of rows in train.csv, strictly between 0 and 1")
    seed: int = Field(default=42, description="seed of the train/validation shuffle, 0 to 2^63-1")

    @field_validator(*S3_RANGES)
    @classmethod
    def _in_range(cls, value: float, info: ValidationInfo) -> float:
        _check_range(info.field_name, value, *S3_RANGES[info.field_name])
        return value


def _bounded(value: Any) -> Any:
    """One metadata entry, cut to a few KB; the cut text says how much was dropped."""
    if isinstance(value, str):
        return quality.clip(value, MAX_TEXT)
    if isinstance(value, (dict, list)):
        text = json.dumps(value, default=str)
        return MetadataValue.json(value) if len(text) <= MAX_TEXT else MetadataValue.text(quality.clip(text, MAX_TEXT))
    if isinstance(value, MarkdownMetadataValue):
        return MetadataValue.md(quality.clip(value.value, MAX_TEXT))
    if isinstance(value, TextMetadataValue):
        return MetadataValue.text(quality.clip(value.value, MAX_TEXT))
    return value  # numbers, booleans, and tables built bounded


def bounded_metadata(metadata: dict[str, Any]) -> dict[str, Any]:
    return {key: _bounded(value) for key, value in metadata.items()}


def _column_summary(frame: pd.DataFrame) -> MetadataValue:
    """dtype, missing count and min/mean/max of the first ``MAX_SUMMARY_COLUMNS`` columns."""
    schema = TableSchema(
        columns=[
            TableColumn("column", "string"),
            TableColumn("dtype", "string"),
            TableColumn("missing", "int"),
            TableColumn("min", "float"),
            TableColumn("mean", "float"),
            TableColumn("max", "float"),
        ]
    )
    records = []
    for position in range(min(frame.shape[1], MAX_SUMMARY_COLUMNS)):
        column = frame.iloc[:, position]
        values = pd.to_numeric(column, errors="coerce")
        stats = [round(float(v), 4) if pd.notna(v) else None for v in (values.min(), values.mean(), values.max())]
        records.append(
            TableRecord(
                {
                    "column": quality.shorten(str(frame.columns[position]), MAX_PREVIEW_CELL),
                    "dtype": str(column.dtype),
                    "missing": int(column.isna().sum()),
                    # Every record needs every field (Dagster's rule): None where a column has no numbers.
                    **dict(zip(("min", "mean", "max"), stats, strict=True)),
                }
            )
        )
    if frame.shape[1] > MAX_SUMMARY_COLUMNS:
        cut = f"… ({frame.shape[1] - MAX_SUMMARY_COLUMNS:,} more columns cut)"
        empty = {"dtype": "", "missing": None, "min": None, "mean": None, "max": None}
        records.append(TableRecord({"column": cut, **empty}))
    return MetadataValue.table(records=records, schema=schema)


def _preview(frame: pd.DataFrame) -> MetadataValue:
    """The first 5 rows as markdown, with few columns and short cells (said when cut)."""
    if not len(frame):
        return MetadataValue.md("(no rows)")
    head = frame.iloc[:5, :MAX_PREVIEW_COLUMNS].copy()
    head.columns = [quality.shorten(str(c), MAX_PREVIEW_CELL) for c in head.columns]
    head = head.map(lambda v: quality.shorten(v, MAX_PREVIEW_CELL) if isinstance(v, str) else v)
    text = head.to_markdown(index=False)
    if frame.shape[1] > MAX_PREVIEW_COLUMNS:
        text += f"\n\n… ({frame.shape[1] - MAX_PREVIEW_COLUMNS:,} more columns cut)"
    return MetadataValue.md(quality.clip(text, MAX_TEXT))


def _previous_rows(context: AssetExecutionContext) -> int | None:
    event = context.instance.get_latest_materialization_event(context.asset_key)
    if event is None or event.asset_materialization is None:
        return None
    rows = event.asset_materialization.metadata.get("rows")
    return int(rows.value) if rows is not None else None


@asset(
    group_name="data",
    kinds={"python", "pandas"},
    description="The source table of the recipe (Boston Housing schema), validated by blocking checks.",
    check_specs=[AssetCheckSpec(name, asset="raw_data", blocking=True, description=d) for name, d in CHECKS.items()]
    + [
        AssetCheckSpec(
            "row_count_drop",
            asset="raw_data",
            description="Warns when the row count fell by more than the configured fraction.",
        )
    ],
)
def raw_data(context: AssetExecutionContext, config: RawDataConfig, settings: Settings, store: ObjectStore):
    loaded = load_source(config.source or settings.data_source, store, rows=config.rows, seed=config.seed)
    frame = loaded.frame
    features = config.features or (
        BOSTON_FEATURES if config.target == BOSTON_TARGET else [c for c in frame.columns if c != config.target]
    )
    rule = quality.QualityRule(
        features=tuple(features),
        target=config.target,
        min_rows=config.min_rows,
        max_missing_fraction=config.max_missing_fraction,
        target_min=config.target_min,
        target_max=config.target_max,
        max_row_drop_fraction=config.max_row_drop_fraction,
    )
    blocking = quality.run_blocking(frame, rule)  # the only run of the rules for this table
    verdict = quality.Verdict.of(frame, blocking)
    results = [*blocking, quality.row_count_drop(len(frame), _previous_rows(context), rule)]
    context.log.info(
        f"read {len(frame)} rows x {frame.shape[1]} columns from {quality.clip(loaded.description, MAX_TEXT)}"
    )
    metadata = {
        "rows": len(frame),
        "columns": quality.bounded_names(frame.columns),
        "source": loaded.description,
        "source_sha256": loaded.sha256 or "",
        "target": config.target,
        "column_summary": _column_summary(frame),
        "checks_passed": verdict.passed,
    }
    if verdict.passed:  # no preview of data that failed its checks
        metadata["preview"] = _preview(frame)
    yield Output(RawTable(frame, loaded.description, loaded.sha256, rule, verdict), metadata=bounded_metadata(metadata))
    for result in results:
        if not result.passed:
            context.log.error(f"quality check {result.name} failed: {result.message}")
        yield AssetCheckResult(
            check_name=result.name,
            passed=result.passed,
            severity=AssetCheckSeverity.ERROR if result.blocking else AssetCheckSeverity.WARN,
            description=result.message,
            metadata=bounded_metadata({"message": result.message, **result.metadata}),
        )


def _require_passed(raw_data: RawTable) -> None:
    """Refuse a table whose checks failed, or that is not the table the verdict was reached on."""
    verdict = getattr(raw_data, "verdict", None)
    if verdict is None:
        raise Failure(
            "raw_data's stored table carries no quality verdict (it was stored by an older version); "
            "materialize raw_data again, then s3_dataset"
        )
    if not verdict.passed:
        # raw_data's blocking checks stop this asset in the same run; this covers a run of
        # s3_dataset alone on top of a raw_data that failed them.
        raise Failure(
            quality.clip(
                "raw_data failed its quality checks; nothing was written: "
                + "; ".join(f"{r.name}: {r.message}" for r in verdict.failed),
                MAX_TEXT,
            )
        )
    if not verdict.covers(raw_data.frame):
        raise Failure(
            "raw_data's stored table is not the table its quality checks ran on (fingerprints differ); "
            "nothing was written: materialize raw_data again, then s3_dataset"
        )


@asset(
    group_name="data",
    kinds={"s3", "csv"},
    description="train.csv and validation.csv in the bucket under a content-addressed prefix (recipe step 3).",
)
def s3_dataset(
    context: AssetExecutionContext, config: S3DatasetConfig, raw_data: RawTable, settings: Settings, store: ObjectStore
) -> Output[dict]:
    _require_passed(raw_data)
    rule = raw_data.rule
    table = numeric_frame(raw_data.frame, [*rule.features, rule.target])
    train, validation = split_frame(table, config.train_fraction, config.seed)
    files = {"train.csv": to_csv_bytes(train), "validation.csv": to_csv_bytes(validation)}
    digests = {name: hashlib.sha256(data).hexdigest() for name, data in files.items()}
    dataset_sha = hashlib.sha256(json.dumps(digests, sort_keys=True).encode()).hexdigest()
    prefix = settings.uri("data", dataset_sha[:16]) + "/"
    manifest_uri = prefix + "manifest.json"

    infos = {name: store.head(prefix + name) for name in files}
    complete = store.exists(manifest_uri) and all(
        info is not None and info.sha256 == digests[name] for name, info in infos.items()
    )
    if complete:
        context.log.info(f"dataset {prefix} already in the store with identical content; nothing written")
    else:
        for name, data in files.items():
            infos[name] = store.put_bytes(prefix + name, data)
            context.log.info(f"wrote {prefix + name} ({len(data)} bytes, sha256 {digests[name][:12]}…)")
        # The manifest goes last: a prefix without it is incomplete and is written again.
        manifest = {"files": digests, "rows": {"train": len(train), "validation": len(validation)},
                    "columns": list(table.columns), "source": raw_data.source, "rule": asdict(rule)}  # fmt: skip
        store.put_bytes(manifest_uri, json.dumps(manifest, indent=2, sort_keys=True).encode())

    value = {
        "uri": prefix,
        "train_uri": prefix + "train.csv",
        "validation_uri": prefix + "validation.csv",
        "sha256": dataset_sha,
        "files_sha256": digests,
        "rows": {"train": len(train), "validation": len(validation)},
        "features": list(rule.features),
        "target": rule.target,
        "version_ids": {name: info.version_id for name, info in infos.items() if info and info.version_id},
    }
    metadata = {
        "uri": prefix,
        "train_uri": value["train_uri"],
        "validation_uri": value["validation_uri"],
        "train_rows": len(train),
        "validation_rows": len(validation),
        "columns": quality.bounded_names(table.columns),
        "train_sha256": digests["train.csv"],
        "validation_sha256": digests["validation.csv"],
        "dataset_sha256": dataset_sha,
        "written": not complete,
        "train_link": store.link(value["train_uri"]),
        "validation_link": store.link(value["validation_uri"]),
        "column_summary": _column_summary(table),
    }
    for name, version in value["version_ids"].items():
        metadata[f"{name.split('.')[0]}_version_id"] = version
    return Output(value, metadata=bounded_metadata(metadata), data_version=DataVersion(dataset_sha))
