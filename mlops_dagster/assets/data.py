"""The recipe's step 3 as assets: ``raw_data`` (behind blocking quality checks) and ``s3_dataset``."""


import hashlib
import json
from dataclasses import asdict, dataclass

import pandas as pd
from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    Config,
    DataVersion,
    Failure,
    MetadataValue,
    Output,
    TableColumn,
    TableRecord,
    TableSchema,
    asset,
)
from pydantic import Field

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


@dataclass
class RawTable:
    """What ``raw_data`` hands downstream: the table as read, and the rule it was checked with."""

    frame: pd.DataFrame
    source: str
    source_sha256: "str | None"
    rule: quality.QualityRule


class RawDataConfig(Config):
    source: str | None = Field(
        default=None,
        description="CSV/Parquet path, s3:// URI, or 'synthetic'; defaults to MLOPS_DATA_SOURCE",
    )
    rows: int = Field(default=1000, description="rows of the synthetic source")
    seed: int = Field(default=42, description="seed of the synthetic source")
    target: str = Field(default=BOSTON_TARGET, description="target column")
    features: list[str] | None = Field(
        default=None,
        description="feature columns; default: the Boston features when the target is medv, "
        "else every column but the target",
    )
    min_rows: int = 20
    max_missing_fraction: float = Field(default=0.05, ge=0, le=1)
    target_min: float = 0.0
    target_max: float = 100.0
    max_row_drop_fraction: float = Field(default=0.5, ge=0, le=1)


class S3DatasetConfig(Config):
    train_fraction: float = Field(default=0.8, gt=0, lt=1, description="share of rows in train.csv")
    seed: int = Field(default=42, description="seed of the train/validation shuffle")


def _column_summary(frame: pd.DataFrame) -> MetadataValue:
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
    for name in frame.columns:
        values = pd.to_numeric(frame[name], errors="coerce")
        stats = [float(v) if pd.notna(v) else None for v in (values.min(), values.mean(), values.max())]
        records.append(
            TableRecord(
                {
                    "column": str(name),
                    "dtype": str(frame[name].dtype),
                    "missing": int(frame[name].isna().sum()),
                    **({k: round(v, 4) for k, v in zip(("min", "mean", "max"), stats, strict=True) if v is not None}),
                }
            )
        )
    return MetadataValue.table(records=records, schema=schema)


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
    results = [*quality.run_blocking(frame, rule), quality.row_count_drop(len(frame), _previous_rows(context), rule)]
    context.log.info(f"read {len(frame)} rows x {frame.shape[1]} columns from {loaded.description}")
    yield Output(
        RawTable(frame, loaded.description, loaded.sha256, rule),
        metadata={
            "rows": len(frame),
            "columns": MetadataValue.json([str(c) for c in frame.columns]),
            "source": loaded.description,
            "source_sha256": loaded.sha256 or "",
            "target": config.target,
            "column_summary": _column_summary(frame),
            "preview": MetadataValue.md(frame.head(5).to_markdown(index=False) if len(frame) else "(no rows)"),
        },
    )
    for result in results:
        if not result.passed:
            context.log.error(f"quality check {result.name} failed: {result.message}")
        yield AssetCheckResult(
            check_name=result.name,
            passed=result.passed,
            severity=AssetCheckSeverity.ERROR if result.blocking else AssetCheckSeverity.WARN,
            description=result.message,
            metadata={"message": result.message, **{k: MetadataValue.json(v) if isinstance(v, (dict, list)) else v for k, v in result.metadata.items()}},
        )


@asset(
    group_name="data",
    kinds={"s3", "csv"},
    description="train.csv and validation.csv in the bucket under a content-addressed prefix (recipe step 3).",
)
def s3_dataset(
    context: AssetExecutionContext, config: S3DatasetConfig, raw_data: RawTable, settings: Settings, store: ObjectStore
) -> Output[dict]:
    failed = [r for r in quality.run_blocking(raw_data.frame, raw_data.rule) if not r.passed]
    if failed:
        # raw_data's blocking checks stop this asset in the same run; this covers a run of
        # s3_dataset alone on top of a raw_data that failed them.
        raise Failure(
            "raw_data failed its quality checks; nothing was written: "
            + "; ".join(f"{r.name}: {r.message}" for r in failed)
        )
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
        "columns": MetadataValue.json(list(table.columns)),
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
    return Output(value, metadata=metadata, data_version=DataVersion(dataset_sha))
