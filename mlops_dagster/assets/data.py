"""The recipe's step 3 as assets: ``raw_data`` (behind blocking quality checks) and ``s3_dataset``.

Both stream: ``raw_data`` reads its source ``chunk_rows`` rows at a time, runs every check, the
column summary and the preview chunk by chunk, and stages the checked columns as float64 rows in
a file under ``$MLOPS_HOME/staging/``; it hands ``s3_dataset`` that file and the checks' verdict
(bound to the file by its sha256), never the table. ``s3_dataset`` shuffles and writes the
train/validation files from the stage window by window and uploads them as files. Every metadata entry is bounded (``MAX_TEXT`` characters, a few columns and rows), so an odd
input (one huge cell, a huge header name, thousands of columns) cannot blow up the event log.
"""

import hashlib
import itertools
import json
import math
import os
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
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
from ..datasets import BOSTON_FEATURES, BOSTON_TARGET, CHUNK_ROWS, StageWriter, open_source, write_split
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
MAX_SYNTHETIC_ROWS = 10_000_000  # about 1.1 GB as a table (streamed: never held whole)
MAX_SEED = 2**63 - 1
MAX_CHUNK_ROWS = 10_000_000
MAX_TRAIN_PARTS = 10_000
TRAIN_PARTS_DIR = "train"  # the part files' folder under the dataset prefix (pipeline_builder reads it)


@dataclass
class RawTable:
    """What ``raw_data`` hands downstream: where the checked table is staged, never the table itself.

    ``stage`` is a file of float64 rows (the features, then the target) under
    ``$MLOPS_HOME/staging/raw_data/``, written only when every blocking check passed; the verdict's
    fingerprint is that file's (see ``datasets.StageWriter``).
    """

    stage: str  # "" when the checks failed: nothing was staged
    columns: list[str]
    rows: int
    source: str
    source_sha256: "str | None"
    rule: quality.QualityRule
    verdict: "quality.Verdict | None" = None  # None only in a value stored by an older version


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
    "chunk_rows": (1, MAX_CHUNK_ROWS, False),
}
S3_RANGES: dict[str, tuple[float | None, float | None, bool]] = {
    "train_fraction": (0, 1, True),
    "seed": (0, MAX_SEED, False),
    "chunk_rows": (1, MAX_CHUNK_ROWS, False),
    "train_parts": (1, MAX_TRAIN_PARTS, False),
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
    chunk_rows: int = Field(
        default=CHUNK_ROWS,
        description=f"rows read, checked and staged at a time, 1 to {MAX_CHUNK_ROWS:,} (memory vs. speed; "
        "the result is the same)",
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
    chunk_rows: int = Field(
        default=CHUNK_ROWS,
        description=f"rows read and written at a time, 1 to {MAX_CHUNK_ROWS:,} (memory vs. speed; the files are the same)",
    )
    train_parts: int = Field(
        default=1,
        description=f"1: the train rows in train.csv (the recipe); 2 to {MAX_TRAIN_PARTS:,}: also as that many "
        "part files train/part-00000.csv … for a sharded Preprocess (a multiple of the pipeline's "
        "processing_instance_count, e.g. twice it)",
    )

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


class ColumnSummary:
    """dtype, missing count and min/mean/max of the first ``MAX_SUMMARY_COLUMNS`` columns of a
    table fed chunk by chunk (a column's dtype is the one pandas gives the chunks put together)."""

    def __init__(self) -> None:
        self.columns: list | None = None
        self._dtypes: pd.DataFrame | None = None  # one row whose dtypes are the chunks' common ones
        self._missing = self._count = np.zeros(0)
        self._sum = self._low = self._high = np.zeros(0)

    def update(self, chunk: pd.DataFrame) -> None:
        if self.columns is None:
            self.columns = list(chunk.columns)
            width = min(len(self.columns), MAX_SUMMARY_COLUMNS)
            self._missing, self._count = np.zeros(width, dtype=np.int64), np.zeros(width, dtype=np.int64)
            self._sum = np.zeros(width)
            self._low, self._high = np.full(width, np.inf), np.full(width, -np.inf)
        width = len(self._missing)
        self._merge_dtypes(chunk.iloc[:1, :width])
        for position in range(width):
            column = chunk.iloc[:, position]
            self._missing[position] += int(column.isna().sum())
            numbers = pd.to_numeric(column, errors="coerce").to_numpy(dtype="float64", na_value=np.nan)
            numbers = numbers[~np.isnan(numbers)]
            if numbers.size:
                self._count[position] += numbers.size
                self._sum[position] += numbers.sum()
                self._low[position] = min(self._low[position], numbers.min())
                self._high[position] = max(self._high[position], numbers.max())

    def update_values(self, values: np.ndarray, columns: list[str]) -> None:
        """A chunk of float64 rows (a staged table): the same sums as ``update``, in numpy."""
        if self.columns is None or not len(values):
            self.update(pd.DataFrame(values[:1], columns=columns))  # sets the columns and dtypes
            self._missing[:], self._count[:], self._sum[:] = 0, 0, 0.0
            self._low[:], self._high[:] = np.inf, -np.inf
        if not len(values):
            return
        values = values[:, : len(self._missing)]
        present = ~np.isnan(values)
        counts = present.sum(axis=0)
        self._missing += values.shape[0] - counts
        self._count += counts
        self._sum += np.where(present, values, 0.0).sum(axis=0)
        self._low = np.fmin(self._low, np.fmin.reduce(values, axis=0))  # fmin/fmax skip NaN
        self._high = np.fmax(self._high, np.fmax.reduce(values, axis=0))

    def _merge_dtypes(self, head: pd.DataFrame) -> None:
        if self._dtypes is None or (len(self._dtypes) == 0 and len(head)):
            self._dtypes = head
        elif len(head) and list(head.dtypes) != list(self._dtypes.dtypes):
            self._dtypes = pd.concat([self._dtypes, head], ignore_index=True).iloc[:1]

    def dtypes(self) -> list:
        return list(self._dtypes.dtypes) if self._dtypes is not None else []

    def metadata(self) -> MetadataValue:
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
        columns, records = self.columns or [], []
        for position, dtype in enumerate(self.dtypes()):
            count = int(self._count[position])
            stats = (self._low[position], self._sum[position] / count, self._high[position]) if count else (None,) * 3
            records.append(
                TableRecord(
                    {
                        "column": quality.shorten(str(columns[position]), MAX_PREVIEW_CELL),
                        "dtype": str(dtype),
                        "missing": int(self._missing[position]),
                        # Every record needs every field (Dagster's rule): None where a column has no numbers.
                        **dict(zip(("min", "mean", "max"), [_stat(v) for v in stats], strict=True)),
                    }
                )
            )
        if len(columns) > MAX_SUMMARY_COLUMNS:
            cut = f"… ({len(columns) - MAX_SUMMARY_COLUMNS:,} more columns cut)"
            empty = {"dtype": "", "missing": None, "min": None, "mean": None, "max": None}
            records.append(TableRecord({"column": cut, **empty}))
        return MetadataValue.table(records=records, schema=schema)


def _stat(value: float | None) -> float | None:
    return None if value is None or pd.isna(value) else round(float(value), 4)


def _column_summary(frame: pd.DataFrame) -> MetadataValue:
    summary = ColumnSummary()
    summary.update(frame)
    return summary.metadata()


class _Head:
    """The first 5 rows of a table fed chunk by chunk, for the preview."""

    def __init__(self) -> None:
        self.frame: pd.DataFrame | None = None

    def update(self, chunk: pd.DataFrame) -> None:
        if self.frame is None:
            self.frame = chunk.iloc[:5, :MAX_PREVIEW_COLUMNS].copy()
        elif len(self.frame) < 5 and len(chunk):
            self.frame = pd.concat([self.frame, chunk.iloc[: 5 - len(self.frame), :MAX_PREVIEW_COLUMNS]], ignore_index=True)

    def with_dtypes(self, dtypes: list) -> pd.DataFrame:
        """The rows with the dtypes of the whole table (an int column with a gap later is float)."""
        head = self.frame if self.frame is not None else pd.DataFrame()
        for position, dtype in enumerate(dtypes[: head.shape[1]]):
            if head.dtypes.iloc[position] != dtype:
                try:
                    head.isetitem(position, head.iloc[:, position].astype(dtype))
                except (TypeError, ValueError):
                    pass  # shown as read; the summary states the column's dtype
        return head


def _preview(head: pd.DataFrame, rows: int, width: int) -> MetadataValue:
    """The first 5 rows as markdown, with few columns and short cells (said when cut)."""
    if not rows:
        return MetadataValue.md("(no rows)")
    head = head.iloc[:5, :MAX_PREVIEW_COLUMNS].copy()
    head.columns = [quality.shorten(str(c), MAX_PREVIEW_CELL) for c in head.columns]
    head = head.map(lambda v: quality.shorten(v, MAX_PREVIEW_CELL) if isinstance(v, str) else v)
    text = head.to_markdown(index=False)
    if width > MAX_PREVIEW_COLUMNS:
        text += f"\n\n… ({width - MAX_PREVIEW_COLUMNS:,} more columns cut)"
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
    source = config.source or settings.data_source
    with open_source(source, store, rows=config.rows, seed=config.seed, chunk_rows=config.chunk_rows) as stream:
        read = _read_checked(stream.chunks, config, _stage_dir(settings))
    rows, columns, verdict = read.checks.rows, read.checks.columns or [], read.verdict
    results = [*read.results, quality.row_count_drop(rows, _previous_rows(context), read.rule)]
    context.log.info(f"read {rows} rows x {len(columns)} columns from {quality.clip(stream.description, MAX_TEXT)}")
    metadata = {
        "rows": rows,
        "columns": quality.bounded_names(columns),
        "source": stream.description,
        "source_sha256": stream.sha256 or "",
        "target": config.target,
        "column_summary": read.summary.metadata(),
        "checks_passed": verdict.passed,
    }
    if verdict.passed:  # no preview of data that failed its checks
        metadata["preview"] = _preview(read.head.with_dtypes(read.summary.dtypes()), rows, len(columns))
    table = RawTable(
        read.stage, list(read.rule.features) + [read.rule.target], rows, stream.description, stream.sha256,
        read.rule, verdict,
    )  # fmt: skip
    yield Output(table, metadata=bounded_metadata(metadata))
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


def _stage_dir(settings: Settings) -> Path:
    return Path(settings.home) / "staging" / "raw_data"


def _rule(config: RawDataConfig, columns: list) -> quality.QualityRule:
    features = config.features or (
        BOSTON_FEATURES if config.target == BOSTON_TARGET else [c for c in columns if c != config.target]
    )
    return quality.QualityRule(
        features=tuple(features),
        target=config.target,
        min_rows=config.min_rows,
        max_missing_fraction=config.max_missing_fraction,
        target_min=config.target_min,
        target_max=config.target_max,
        max_row_drop_fraction=config.max_row_drop_fraction,
    )


@dataclass
class _Read:
    rule: quality.QualityRule
    checks: quality.BlockingChecks
    summary: ColumnSummary
    head: _Head
    results: list[quality.QualityResult]
    verdict: quality.Verdict
    stage: str  # "" when nothing was staged


def _read_checked(chunks: Iterator[pd.DataFrame], config: RawDataConfig, stage_dir: Path) -> _Read:
    """One pass over the source: every blocking rule, the summary and the preview, chunk by chunk,
    while the checked columns are staged as float64 rows (kept only when every check passed)."""
    first = next(chunks)
    rule = _rule(config, list(first.columns))
    checks, summary, head = quality.BlockingChecks(rule), ColumnSummary(), _Head()
    staged = [*rule.features, rule.target]
    stage_dir.mkdir(parents=True, exist_ok=True)
    writer = None
    if all(c in first.columns for c in staged):
        fd, tmp = tempfile.mkstemp(prefix=".stage-", suffix=".part", dir=stage_dir)
        os.close(fd)
        writer = StageWriter(Path(tmp), staged)
    try:
        for chunk in itertools.chain([first], chunks):
            checks.update(chunk)
            summary.update(chunk)
            head.update(chunk)
            if writer is not None:
                writer.write(chunk)
        fingerprint = writer.close() if writer is not None else ""
        results = checks.results()
        verdict = quality.Verdict(fingerprint, tuple(r for r in results if r.blocking and not r.passed))
        stage = None
        if writer is not None and verdict.passed:
            stage = stage_dir / f"{fingerprint}.f64"
            os.replace(writer.path, stage)
        _drop_older_stages(stage_dir, keep=stage)  # this value replaces the one that used them
    finally:
        if writer is not None:
            writer.close()
            writer.path.unlink(missing_ok=True)
    return _Read(rule, checks, summary, head, results, verdict, str(stage) if stage else "")


def _drop_older_stages(stage_dir: Path, keep: Path | None) -> None:
    """Only the latest raw_data value is ever read (the IO manager keeps one), so older stages go."""
    for path in stage_dir.glob("*.f64"):
        if path != keep:
            path.unlink(missing_ok=True)


def _require_passed(raw_data: RawTable) -> Path:
    """The staged table, refused if its checks failed or it was stored by an older version."""
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
    if not getattr(raw_data, "stage", None):
        raise Failure(
            "raw_data's stored value has no staged table (it was stored by an older version); "
            "nothing was written: materialize raw_data again, then s3_dataset"
        )
    stage = Path(raw_data.stage)
    if not stage.is_file():
        raise Failure(
            f"raw_data's staged table {quality.clip(str(stage), MAX_TEXT // 2)} is gone; "
            "nothing was written: materialize raw_data again, then s3_dataset"
        )
    if stage.stat().st_size != raw_data.rows * len(raw_data.columns) * 8:
        raise _not_checked_table()
    return stage


def _not_checked_table() -> Failure:
    return Failure(
        "raw_data's stored table is not the table its quality checks ran on (fingerprints differ); "
        "nothing was written: materialize raw_data again, then s3_dataset"
    )


@asset(
    group_name="data",
    kinds={"s3", "csv"},
    description="train.csv and validation.csv in the bucket under a content-addressed prefix (recipe step 3); "
    "with train_parts > 1 also the train rows as part files train/part-*.csv, for a sharded Preprocess.",
)
def s3_dataset(
    context: AssetExecutionContext, config: S3DatasetConfig, raw_data: RawTable, settings: Settings, store: ObjectStore
) -> Output[dict]:
    stage = _require_passed(raw_data)
    rule, columns = raw_data.rule, raw_data.columns
    summary = ColumnSummary()
    work = Path(settings.home) / "staging" / "s3_dataset"
    work.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="split-", dir=work) as tmp:
        paths = {"train.csv": Path(tmp, "train.csv"), "validation.csv": Path(tmp, "validation.csv")}
        split = write_split(
            stage, columns, raw_data.rows, config.train_fraction, config.seed, paths["train.csv"],
            paths["validation.csv"], chunk_rows=config.chunk_rows,
            observe=lambda block: summary.update_values(block, columns),
        )  # fmt: skip
        if split.stage_fingerprint != raw_data.verdict.fingerprint:
            raise _not_checked_table()
        digests = {f"{name}.csv": split.sha256[name] for name in ("train", "validation")}
        if config.train_parts > 1:
            parts = _write_parts(paths["train.csv"], split.rows["train"], config.train_parts, Path(tmp, "parts"))
            paths.update({name: path for name, (path, _sha) in parts.items()})
            digests.update({name: sha for name, (_path, sha) in parts.items()})
        dataset_sha = hashlib.sha256(json.dumps(digests, sort_keys=True).encode()).hexdigest()
        prefix = settings.uri("data", dataset_sha[:16]) + "/"
        manifest_uri = prefix + "manifest.json"

        infos = {name: store.head(prefix + name) for name in paths}
        complete = store.exists(manifest_uri) and all(
            info is not None and info.sha256 == digests[name] for name, info in infos.items()
        )
        if complete:
            context.log.info(f"dataset {prefix} already in the store with identical content; nothing written")
        else:
            for name, path in paths.items():
                size = path.stat().st_size
                infos[name] = store.put_owned_file(prefix + name, path)  # a file: streamed (multipart on S3)
                context.log.info(f"wrote {prefix + name} ({size} bytes, sha256 {digests[name][:12]}…)")
            # The manifest goes last: a prefix without it is incomplete and is written again.
            manifest = {"files": digests, "rows": split.rows, "columns": columns, "source": raw_data.source,
                        "rule": asdict(rule)}  # fmt: skip
            if config.train_parts > 1:
                manifest["train_parts"] = config.train_parts
            store.put_bytes(manifest_uri, json.dumps(manifest, indent=2, sort_keys=True).encode())

    value = {
        "uri": prefix,
        "train_uri": prefix + "train.csv",
        "validation_uri": prefix + "validation.csv",
        "sha256": dataset_sha,
        "files_sha256": digests,
        "rows": split.rows,
        "features": list(rule.features),
        "target": rule.target,
        "version_ids": {name: info.version_id for name, info in infos.items() if info and info.version_id},
        "train_parts": config.train_parts,
    }
    if config.train_parts > 1:
        value["train_parts_uri"] = prefix + TRAIN_PARTS_DIR + "/"
    metadata = {
        "uri": prefix,
        "train_uri": value["train_uri"],
        "validation_uri": value["validation_uri"],
        "train_rows": split.rows["train"],
        "validation_rows": split.rows["validation"],
        "columns": quality.bounded_names(columns),
        "train_sha256": digests["train.csv"],
        "validation_sha256": digests["validation.csv"],
        "dataset_sha256": dataset_sha,
        "written": not complete,
        "train_link": store.link(value["train_uri"]),
        "validation_link": store.link(value["validation_uri"]),
        "column_summary": summary.metadata(),
    }
    if config.train_parts > 1:
        metadata["train_parts"] = config.train_parts
        metadata["train_parts_uri"] = value["train_parts_uri"]
    for name, version in value["version_ids"].items():
        if "/" not in name:  # a part file's version is in the value, not one entry per part
            metadata[f"{name.split('.')[0]}_version_id"] = version
    return Output(value, metadata=bounded_metadata(metadata), data_version=DataVersion(dataset_sha))


def _write_parts(train: Path, rows: int, parts: int, folder: Path) -> dict[str, tuple[Path, str]]:
    """train.csv's rows cut into ``parts`` files of consecutive rows (its rows are already shuffled),
    each with the header: {"train/part-00000.csv": (path, sha256), ...}. Streamed, line by line."""
    if parts > rows:
        raise Failure(
            f"s3_dataset config train_parts is {parts:,} but the train split has {rows:,} rows: every part needs "
            "at least one row; lower train_parts (a multiple of the pipeline's processing_instance_count)"
        )
    folder.mkdir(parents=True, exist_ok=True)
    written = {}
    with train.open("rb") as source:
        header = source.readline()
        for index in range(parts):
            count = (index + 1) * rows // parts - index * rows // parts
            name = f"part-{index:05d}.csv"
            digest = hashlib.sha256(header)
            with (folder / name).open("wb") as sink:
                sink.write(header)
                lines = itertools.islice(source, count)
                while block := b"".join(itertools.islice(lines, 65_536)):
                    sink.write(block)
                    digest.update(block)
            written[f"{TRAIN_PARTS_DIR}/{name}"] = (folder / name, digest.hexdigest())
        if source.readline():  # the split wrote one line per row: anything left is a bug, not data
            raise Failure(f"{train} has more lines than its {rows:,} rows; nothing was written")
    return written
