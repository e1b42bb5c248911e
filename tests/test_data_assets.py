"""raw_data's quality rules and blocking checks, and s3_dataset, end to end through `materialize`."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from dagster import AssetCheckSeverity, DagsterInstance
from helpers import (
    boston_lines,
    check_evaluations,
    failure_text,
    materialized,
    meta,
    run_data_assets,
    set_cell,
    started_steps,
    store_files,
    write_lines,
)

from mlops_dagster import quality
from mlops_dagster.datasets import BOSTON_FEATURES, BOSTON_TARGET, synthetic_boston, to_csv_bytes
from mlops_dagster.definitions import build_definitions
from mlops_dagster.settings import Settings, SettingsError

RULE = quality.QualityRule(features=tuple(BOSTON_FEATURES), target=BOSTON_TARGET)
BLOCKING = {"required_columns", "no_header_rows", "numeric_columns", "target_finite", "features_missing", "min_rows", "target_range"}  # fmt: skip


def frame_of(lines: list[str]) -> pd.DataFrame:
    return pd.read_csv(io.StringIO("\n".join(lines) + "\n"), skipinitialspace=True)


# --- the rules, as pure functions -------------------------------------------------------------------


def test_good_data_passes_every_rule():
    frame = frame_of(boston_lines(40))
    results = quality.run_blocking(frame, RULE)
    assert {r.name for r in results} == BLOCKING
    assert all(r.passed and r.blocking for r in results)


def test_missing_target_column_is_named():
    frame = frame_of(boston_lines(40)).drop(columns=["medv"])
    result = quality.required_columns(frame, RULE)
    assert not result.passed
    assert "missing required column(s) ['medv']" in result.message
    assert "'lstat'" in result.message  # the columns that were found are listed
    assert quality.target_finite(frame, RULE).message == "target column 'medv' is missing"
    assert quality.target_range(frame, RULE).message == "target column 'medv' is missing"


def test_missing_feature_column_is_named():
    result = quality.required_columns(frame_of(boston_lines(40)).drop(columns=["rm", "tax"]), RULE)
    assert not result.passed and "['rm', 'tax']" in result.message


def test_non_numeric_feature_names_row_and_column():
    frame = frame_of(set_cell(boston_lines(40), 7, "rm", "six"))
    result = quality.numeric_columns(frame, RULE)
    assert not result.passed
    assert result.message == "column 'rm' has non-numeric value 'six' at row 7"


def test_several_non_numeric_values_are_counted():
    lines = boston_lines(40)
    for row in (3, 9, 12):
        lines = set_cell(lines, row, "tax", "n/a?")
    result = quality.numeric_columns(frame_of(lines), RULE)
    assert not result.passed
    assert "column 'tax' has non-numeric value 'n/a?' at row 3 (3 rows in all: 3, 9, 12)" in result.message


def test_non_numeric_target_is_named():
    result = quality.numeric_columns(frame_of(set_cell(boston_lines(40), 2, "medv", "expensive")), RULE)
    assert not result.passed and "column 'medv' has non-numeric value 'expensive' at row 2" in result.message


@pytest.mark.parametrize("cell", ["", "NaN", "nan", "NA"])
def test_nan_target_names_the_row(cell: str):
    frame = frame_of(set_cell(boston_lines(40), 11, "medv", cell))
    result = quality.target_finite(frame, RULE)
    assert not result.passed
    assert result.message == "target 'medv' has NaN at row(s) 11"


@pytest.mark.parametrize("cell", ["inf", "-inf"])
def test_infinite_target_names_the_row(cell: str):
    result = quality.target_finite(frame_of(set_cell(boston_lines(40), 4, "medv", cell)), RULE)
    assert not result.passed and "infinite value at row(s) 4" in result.message


def test_many_bad_rows_are_listed_briefly():
    lines = boston_lines(40)
    for row in range(1, 9):
        lines = set_cell(lines, row, "medv", "")
    result = quality.target_finite(frame_of(lines), RULE)
    assert result.message == "target 'medv' has NaN at row(s) 1, 2, 3, 4, 5 and 3 more"


def test_feature_missing_fraction_is_configurable():
    lines = boston_lines(40)
    for row in (5, 6, 7, 8):  # 4 of 40 = 10% of 'crim' missing
        lines = set_cell(lines, row, "crim", "")
    frame = frame_of(lines)
    default = quality.features_missing(frame, RULE)
    assert not default.passed
    assert default.message == "feature(s) missing more than 5.0% of values: 'crim' 10.0%"
    relaxed = quality.QualityRule(features=RULE.features, target=RULE.target, max_missing_fraction=0.10)
    assert quality.features_missing(frame, relaxed).passed
    # A missing feature value is not a numeric-type problem.
    assert quality.numeric_columns(frame, RULE).passed


def test_min_rows_default_and_configurable():
    assert RULE.min_rows == 20
    assert quality.min_rows(frame_of(boston_lines(20)), RULE).passed
    result = quality.min_rows(frame_of(boston_lines(19)), RULE)
    assert not result.passed and result.message == "has 19 rows, needs at least 20"
    strict = quality.QualityRule(features=RULE.features, target=RULE.target, min_rows=100)
    assert quality.min_rows(frame_of(boston_lines(99)), strict).message == "has 99 rows, needs at least 100"


@pytest.mark.parametrize("header", ["same", "upper", "spaced"])
def test_duplicated_header_line_in_the_middle_is_named(header: str):
    lines = boston_lines(40)
    repeated = {"same": lines[0], "upper": lines[0].upper(), "spaced": lines[0].replace(",", ", ")}[header]
    lines.insert(15, repeated)  # becomes data row 15
    frame = frame_of(lines)
    result = quality.header_rows(frame, RULE)
    assert not result.passed
    assert result.message == "row(s) 15 repeat the header line inside the data"


def test_no_false_header_rows_on_real_data(boston_csv: Path):
    frame = pd.read_csv(boston_csv)
    assert quality.header_rows(frame, RULE).passed


def test_target_range_is_configurable():
    frame = frame_of(set_cell(boston_lines(40), 9, "medv", "5000"))
    result = quality.target_range(frame, RULE)
    assert not result.passed
    assert result.message == "target 'medv' outside [0.0, 100.0] at row(s) 9 (first value 5000.0)"
    negative = quality.target_range(frame_of(set_cell(boston_lines(40), 3, "medv", "-1")), RULE)
    assert not negative.passed and "row(s) 3" in negative.message
    wide = quality.QualityRule(features=RULE.features, target=RULE.target, target_max=10_000)
    assert quality.target_range(frame, wide).passed


def test_row_count_drop_warns_without_blocking():
    first = quality.row_count_drop(1000, None, RULE)
    assert first.passed and not first.blocking
    assert quality.row_count_drop(500, 1000, RULE).passed  # exactly half is allowed
    dropped = quality.row_count_drop(499, 1000, RULE)
    assert not dropped.passed and not dropped.blocking
    assert dropped.message == "row count fell from 1000 to 499 (50% drop, more than 50%)"
    assert quality.row_count_drop(2000, 1000, RULE).passed
    touchy = quality.QualityRule(features=RULE.features, target=RULE.target, max_row_drop_fraction=0.1)
    assert not quality.row_count_drop(800, 1000, touchy).passed


# --- end to end through Dagster ----------------------------------------------------------------------


def read_csv_object(home: Path, uri: str) -> pd.DataFrame:
    assert uri.startswith("s3://")
    return pd.read_csv(home / "s3" / uri[len("s3://") :])


def test_good_data_is_written_with_full_metadata(defs, mlops_home: Path):
    result = run_data_assets(defs, raw_config={"source": "synthetic"})
    assert result.success
    checks = check_evaluations(result)
    assert set(checks) == BLOCKING | {"row_count_drop"}
    assert all(c.passed for c in checks.values())
    assert {checks[n].severity for n in BLOCKING} == {AssetCheckSeverity.ERROR}
    assert checks["row_count_drop"].severity == AssetCheckSeverity.WARN

    (raw,) = materialized(result, "raw_data")
    assert meta(raw, "rows") == 1000
    assert meta(raw, "source") == "synthetic(rows=1000, seed=42)"
    (ds,) = materialized(result, "s3_dataset")
    sha = meta(ds, "dataset_sha256")
    prefix = f"s3://mlops-local/mlops/data/{sha[:16]}/"
    assert meta(ds, "uri") == prefix
    assert meta(ds, "train_uri") == prefix + "train.csv"
    assert meta(ds, "validation_uri") == prefix + "validation.csv"
    assert (meta(ds, "train_rows"), meta(ds, "validation_rows")) == (800, 200)
    assert meta(ds, "columns") == [*BOSTON_FEATURES, BOSTON_TARGET]
    assert meta(ds, "written") is True
    # Data version derived from the content hash.
    assert ds.tags["dagster/data_version"] == sha

    train_file = mlops_home / "s3" / "mlops-local" / "mlops" / "data" / sha[:16] / "train.csv"
    validation_file = train_file.with_name("validation.csv")
    assert meta(ds, "train_sha256") == hashlib.sha256(train_file.read_bytes()).hexdigest()
    assert meta(ds, "validation_sha256") == hashlib.sha256(validation_file.read_bytes()).hexdigest()
    objects = store_files(mlops_home)
    assert f"mlops-local/mlops/data/{sha[:16]}/train.csv" in objects
    assert f"mlops-local/mlops/data/{sha[:16]}/validation.csv" in objects
    assert not any(name.endswith(".part") for name in objects)

    # The two files are exactly the source rows, split, as numbers.
    train = read_csv_object(mlops_home, meta(ds, "train_uri"))
    validation = read_csv_object(mlops_home, meta(ds, "validation_uri"))
    assert list(train.columns) == [*BOSTON_FEATURES, BOSTON_TARGET]
    both = pd.concat([train, validation]).sort_values(list(train.columns)).reset_index(drop=True)
    source = synthetic_boston(1000).astype("float64").sort_values(list(train.columns)).reset_index(drop=True)
    np.testing.assert_allclose(both.to_numpy(), source.to_numpy())


def test_identical_data_again_writes_nothing(defs, mlops_home: Path):
    instance = DagsterInstance.ephemeral()
    first = run_data_assets(defs, instance, raw_config={"source": "synthetic"})
    assert first.success
    before = {p: (p.stat().st_mtime_ns, p.stat().st_ino) for p in (mlops_home / "s3").rglob("*") if p.is_file()}
    assert len(before) >= 2

    second = run_data_assets(defs, instance, raw_config={"source": "synthetic"})
    assert second.success
    (ds1,), (ds2,) = materialized(first, "s3_dataset"), materialized(second, "s3_dataset")
    assert meta(ds2, "written") is False
    assert meta(ds2, "train_uri") == meta(ds1, "train_uri")
    assert meta(ds2, "dataset_sha256") == meta(ds1, "dataset_sha256")
    assert ds2.tags["dagster/data_version"] == ds1.tags["dagster/data_version"]
    after = {p: (p.stat().st_mtime_ns, p.stat().st_ino) for p in (mlops_home / "s3").rglob("*") if p.is_file()}
    assert after == before  # same files, untouched


def test_different_data_gets_a_different_prefix(defs, mlops_home: Path):
    first = run_data_assets(defs, raw_config={"source": "synthetic", "rows": 100})
    second = run_data_assets(defs, raw_config={"source": "synthetic", "rows": 100, "seed": 7})
    assert first.success and second.success
    (a,), (b,) = materialized(first, "s3_dataset"), materialized(second, "s3_dataset")
    assert meta(a, "uri") != meta(b, "uri")
    assert meta(b, "written") is True
    assert len([f for f in store_files(mlops_home) if f.endswith("train.csv")]) == 2


def test_rows_and_split_ratio_are_configurable(defs):
    result = run_data_assets(defs, raw_config={"source": "synthetic", "rows": 50}, s3_config={"train_fraction": 0.7})
    assert result.success
    (raw,), (ds,) = materialized(result, "raw_data"), materialized(result, "s3_dataset")
    assert meta(raw, "rows") == 50
    assert (meta(ds, "train_rows"), meta(ds, "validation_rows")) == (35, 15)


def test_source_defaults_to_mlops_data_source(mlops_home: Path, tmp_path: Path):
    csv = write_lines(tmp_path / "mine.csv", boston_lines(60))
    defs = build_definitions(Settings.from_env({"MLOPS_HOME": str(mlops_home), "MLOPS_DATA_SOURCE": str(csv)}))
    result = run_data_assets(defs)  # no run config at all
    assert result.success
    (raw,) = materialized(result, "raw_data")
    assert meta(raw, "source") == str(csv.resolve())
    assert meta(raw, "rows") == 60
    assert meta(raw, "source_sha256") == hashlib.sha256(csv.read_bytes()).hexdigest()


def test_source_defaults_to_synthetic(defs):
    result = run_data_assets(defs)
    assert result.success
    (raw,) = materialized(result, "raw_data")
    assert meta(raw, "source") == "synthetic(rows=1000, seed=42)"


def test_shared_boston_csv_end_to_end(defs, boston_csv: Path, mlops_home: Path):
    result = run_data_assets(defs, raw_config={"source": str(boston_csv)})
    assert result.success, failure_text(result)
    (ds,) = materialized(result, "s3_dataset")
    assert (meta(ds, "train_rows"), meta(ds, "validation_rows")) == (405, 101)
    train = read_csv_object(mlops_home, meta(ds, "train_uri"))
    assert all(pd.api.types.is_numeric_dtype(train[c]) for c in train.columns)
    assert set(train["chas"].unique()) <= {0, 1}


def test_parquet_and_s3_sources_end_to_end(defs, mlops_home: Path, tmp_path: Path):
    store = defs.resources["store"]
    parquet = tmp_path / "boston.parquet"
    synthetic_boston(80, seed=3).to_parquet(parquet)
    store.put_file("s3://mlops-local/incoming/boston.parquet", parquet)
    result = run_data_assets(defs, raw_config={"source": "s3://mlops-local/incoming/boston.parquet"})
    assert result.success, failure_text(result)
    (raw,), (ds,) = materialized(result, "raw_data"), materialized(result, "s3_dataset")
    assert meta(raw, "source") == "s3://mlops-local/incoming/boston.parquet"
    assert meta(raw, "rows") == 80
    assert (meta(ds, "train_rows"), meta(ds, "validation_rows")) == (64, 16)


def test_target_column_is_configurable(defs, tmp_path: Path):
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"x1": rng.normal(size=60), "x2": rng.normal(size=60)})
    frame["price"] = (3 * frame["x1"] - frame["x2"]).abs() + 10
    csv = tmp_path / "custom.csv"
    csv.write_bytes(to_csv_bytes(frame))
    result = run_data_assets(defs, raw_config={"source": str(csv), "target": "price"})
    assert result.success, failure_text(result)
    (ds,) = materialized(result, "s3_dataset")
    assert meta(ds, "columns") == ["x1", "x2", "price"]
    # With the default target the same file lacks 'medv' and the Boston features.
    blocked = run_data_assets(defs, raw_config={"source": str(csv)})
    assert not blocked.success
    assert "missing required column(s)" in check_evaluations(blocked)["required_columns"].description


def test_thresholds_come_from_run_config(defs, mlops_home: Path):
    result = run_data_assets(
        defs,
        raw_config={"source": "synthetic", "rows": 30, "min_rows": 50, "target_max": 10.0},
    )
    assert not result.success
    checks = check_evaluations(result)
    assert checks["min_rows"].description == "has 30 rows, needs at least 50"
    assert "outside [0.0, 10.0]" in checks["target_range"].description
    assert "s3_dataset" not in started_steps(result)
    assert store_files(mlops_home) == []


def test_missing_feature_fraction_comes_from_run_config(defs, mlops_home: Path, tmp_path: Path):
    lines = boston_lines(40)
    for row in (2, 4, 6, 8):  # 10% of 'nox' missing
        lines = set_cell(lines, row, "nox", "")
    csv = write_lines(tmp_path / "gaps.csv", lines)
    strict = run_data_assets(defs, raw_config={"source": str(csv)})
    assert not strict.success
    assert check_evaluations(strict)["features_missing"].description == (
        "feature(s) missing more than 5.0% of values: 'nox' 10.0%"
    )
    assert store_files(mlops_home) == []
    relaxed = run_data_assets(defs, raw_config={"source": str(csv), "max_missing_fraction": 0.2})
    assert relaxed.success, failure_text(relaxed)
    assert meta(materialized(relaxed, "s3_dataset")[0], "written") is True


def test_nan_target_blocks_s3_dataset_and_writes_nothing(defs, mlops_home: Path, tmp_path: Path):
    csv = write_lines(tmp_path / "nan.csv", set_cell(boston_lines(40), 8, "medv", ""))
    result = run_data_assets(defs, raw_config={"source": str(csv)})
    assert not result.success
    checks = check_evaluations(result)
    assert checks["target_finite"].passed is False
    assert checks["target_finite"].severity == AssetCheckSeverity.ERROR
    assert checks["target_finite"].description == "target 'medv' has NaN at row(s) 8"
    assert "1 blocking asset check failed" in failure_text(result)
    assert "s3_dataset" not in started_steps(result)
    assert materialized(result, "s3_dataset") == []
    assert store_files(mlops_home) == []


def test_s3_dataset_alone_refuses_data_that_failed_checks(defs, mlops_home: Path, tmp_path: Path):
    """raw_data stored a table that failed its checks; materializing s3_dataset alone must not write it."""
    instance = DagsterInstance.ephemeral()
    csv = write_lines(tmp_path / "bad.csv", set_cell(boston_lines(40), 3, "rm", "lots"))
    assert not run_data_assets(defs, instance, raw_config={"source": str(csv)}).success
    alone = run_data_assets(defs, instance, selection=["s3_dataset"])
    assert started_steps(alone) == {"s3_dataset"}
    assert not alone.success
    text = failure_text(alone)
    assert "raw_data failed its quality checks; nothing was written" in text
    assert "column 'rm' has non-numeric value 'lots' at row 3" in text
    assert store_files(mlops_home) == []


def test_row_count_drop_warns_but_does_not_block(defs, mlops_home: Path):
    instance = DagsterInstance.ephemeral()
    assert run_data_assets(defs, instance, raw_config={"source": "synthetic", "rows": 1000}).success
    small = run_data_assets(defs, instance, raw_config={"source": "synthetic", "rows": 400})
    assert small.success  # a warning, not a blocking failure
    drop = check_evaluations(small)["row_count_drop"]
    assert drop.passed is False
    assert drop.severity == AssetCheckSeverity.WARN
    assert drop.description == "row count fell from 1000 to 400 (60% drop, more than 50%)"
    assert all(check_evaluations(small)[n].passed for n in BLOCKING)
    (ds,) = materialized(small, "s3_dataset")
    assert meta(ds, "written") is True and meta(ds, "train_rows") == 320
    # Compared with the previous materialization (400 rows), 300 rows is fine.
    again = run_data_assets(defs, instance, raw_config={"source": "synthetic", "rows": 300})
    assert check_evaluations(again)["row_count_drop"].passed is True


# --- bad input end to end: the error names the problem and the store stays empty ----------------------


def bad_input(tmp_path: Path, case: str) -> tuple[dict, str, str]:
    """(raw_data config, where the text shows: 'failure' or a check name, expected text)."""
    lines = boston_lines(40)
    path = tmp_path / f"{case}.csv"
    if case == "missing_file":
        return {"source": str(tmp_path / "absent.csv")}, "failure", "data source file not found"
    if case == "empty_file":
        path.write_bytes(b"")
        return {"source": str(path)}, "failure", f"data source {path} is empty"
    if case == "header_only":
        write_lines(path, lines[:1])
        return {"source": str(path)}, "min_rows", "has 0 rows, needs at least 20"
    if case == "not_csv_or_parquet":
        path = tmp_path / "photo.png"
        path.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)))
        return {"source": str(path)}, "failure", "is neither CSV nor Parquet"
    if case == "missing_target":
        write_lines(path, [",".join(line.split(",")[:-1]) for line in lines])
        return {"source": str(path)}, "required_columns", "missing required column(s) ['medv']"
    if case == "non_numeric_feature":
        write_lines(path, set_cell(lines, 17, "ptratio", "high"))
        return {"source": str(path)}, "numeric_columns", "column 'ptratio' has non-numeric value 'high' at row 17"
    if case == "nan_target":
        write_lines(path, set_cell(lines, 5, "medv", "NaN"))
        return {"source": str(path)}, "target_finite", "target 'medv' has NaN at row(s) 5"
    if case == "duplicated_header":
        lines.insert(21, lines[0])
        write_lines(path, lines)
        return {"source": str(path)}, "no_header_rows", "row(s) 21 repeat the header line inside the data"
    if case == "missing_s3_object":
        uri = "s3://mlops-local/incoming/absent.csv"
        return {"source": uri}, "failure", f"data source {uri} does not exist in the object store"
    raise AssertionError(case)


BAD_CASES = [
    "missing_file", "empty_file", "header_only", "not_csv_or_parquet", "missing_target",
    "non_numeric_feature", "nan_target", "duplicated_header", "missing_s3_object",
]  # fmt: skip


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_input_fails_with_its_message_and_leaves_the_store_empty(defs, mlops_home: Path, tmp_path: Path, case: str):
    config, where, expected = bad_input(tmp_path, case)
    result = run_data_assets(defs, raw_config=config)
    assert not result.success
    if where == "failure":
        assert expected in failure_text(result)
    else:
        check = check_evaluations(result)[where]
        assert check.passed is False and check.severity == AssetCheckSeverity.ERROR
        assert expected in check.description
    assert materialized(result, "s3_dataset") == []
    assert "s3_dataset" not in started_steps(result)
    assert store_files(mlops_home) == []


def test_unknown_backend_fails_before_anything_is_written(mlops_home: Path):
    with pytest.raises(
        SettingsError, match=r"MLOPS_BACKEND='s3-local' is not valid: allowed values are 'local', 'aws'"
    ):
        build_definitions(Settings.from_env({"MLOPS_HOME": str(mlops_home), "MLOPS_BACKEND": "s3-local"}))
    assert store_files(mlops_home) == []
    assert not (mlops_home / "s3").exists()
