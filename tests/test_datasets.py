"""datasets.py: reading sources (file, Parquet, s3://, synthetic), bad-input errors, split, CSV encoding."""

from __future__ import annotations

import gzip
import hashlib
import io
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers import boston_lines, write_lines

from mlops_dagster import quality
from mlops_dagster.datasets import (
    BOSTON_FEATURES,
    BOSTON_TARGET,
    DataSourceError,
    load_source,
    numeric_frame,
    parse_table,
    split_frame,
    synthetic_boston,
    to_csv_bytes,
)
from mlops_dagster.resources.object_store import LocalObjectStore

RULE = quality.QualityRule(features=tuple(BOSTON_FEATURES), target=BOSTON_TARGET)


@pytest.fixture
def store(mlops_home: Path) -> LocalObjectStore:
    return LocalObjectStore(root=str(mlops_home / "s3"))


# --- synthetic source -------------------------------------------------------------------------


def test_synthetic_has_boston_schema_and_is_clean():
    frame = synthetic_boston(1000)
    assert list(frame.columns) == [*BOSTON_FEATURES, BOSTON_TARGET]
    assert len(frame) == 1000
    assert all(pd.api.types.is_numeric_dtype(frame[c]) for c in frame.columns)
    assert not frame.isna().any().any()
    assert set(frame["chas"].unique()) <= {0, 1}
    assert frame[BOSTON_TARGET].between(5, 50).all()
    assert all(r.passed for r in quality.run_blocking(frame, RULE))


def test_synthetic_is_seeded():
    pd.testing.assert_frame_equal(synthetic_boston(200, seed=3), synthetic_boston(200, seed=3))
    assert not synthetic_boston(200, seed=3).equals(synthetic_boston(200, seed=4))


@pytest.mark.parametrize("rows", [1, 20, 1234])
def test_synthetic_rows_are_configurable(rows: int):
    assert len(synthetic_boston(rows)) == rows


@pytest.mark.parametrize("rows", [0, -5])
def test_synthetic_rejects_no_rows(rows: int):
    with pytest.raises(DataSourceError, match=f"rows >= 1, got {rows}"):
        synthetic_boston(rows)


def test_random_forest_learns_the_synthetic_data():
    from sklearn.ensemble import RandomForestRegressor
    from sklearn.metrics import r2_score

    frame = synthetic_boston(1000, seed=42)
    train, validation = split_frame(frame, 0.8, seed=42)
    model = RandomForestRegressor(n_estimators=50, random_state=0)
    model.fit(train[BOSTON_FEATURES], train[BOSTON_TARGET])
    r2 = r2_score(validation[BOSTON_TARGET], model.predict(validation[BOSTON_FEATURES]))
    assert r2 >= 0.7, f"R² {r2:.3f} on synthetic data"


@pytest.mark.parametrize("source", ["synthetic", "", "  synthetic  "])
def test_load_source_synthetic(store: LocalObjectStore, source: str):
    loaded = load_source(source, store, rows=77, seed=5)
    pd.testing.assert_frame_equal(loaded.frame, synthetic_boston(77, seed=5))
    assert loaded.description == "synthetic(rows=77, seed=5)"
    assert loaded.sha256 is None


# --- files --------------------------------------------------------------------------------------


def test_quoted_numbers_parse_as_numbers(tmp_path: Path, store: LocalObjectStore):
    lines = boston_lines(30)
    header = lines[0].split(",")
    chas = header.index("chas")
    quoted = [lines[0]] + [
        ",".join(f'"{v}"' if i == chas else v for i, v in enumerate(line.split(","))) for line in lines[1:]
    ]
    assert '"0"' in quoted[1] or '"1"' in quoted[1]
    frame = load_source(str(write_lines(tmp_path / "quoted.csv", quoted)), store).frame
    assert pd.api.types.is_numeric_dtype(frame["chas"])
    assert quality.numeric_columns(frame, RULE).passed
    all_quoted = [lines[0]] + [",".join(f'"{v}"' for v in line.split(",")) for line in lines[1:]]
    frame = load_source(str(write_lines(tmp_path / "all_quoted.csv", all_quoted)), store).frame
    assert all(pd.api.types.is_numeric_dtype(frame[c]) for c in frame.columns)


def test_shared_boston_csv_parses_as_numbers(boston_csv: Path, store: LocalObjectStore):
    loaded = load_source(str(boston_csv), store)
    frame = loaded.frame
    assert len(frame) == 506
    assert list(frame.columns) == [*BOSTON_FEATURES, BOSTON_TARGET]
    assert all(pd.api.types.is_numeric_dtype(frame[c]) for c in frame.columns)
    assert set(frame["chas"].unique()) == {0, 1}
    assert loaded.sha256 == hashlib.sha256(boston_csv.read_bytes()).hexdigest()
    assert loaded.description == str(boston_csv.resolve())
    failed = [r for r in quality.run_blocking(frame, RULE) if not r.passed]
    assert failed == []


def test_csv_and_parquet_files_load_the_same_table(tmp_path: Path, store: LocalObjectStore):
    frame = synthetic_boston(50)
    csv = tmp_path / "data.csv"
    csv.write_bytes(to_csv_bytes(frame))
    parquet = tmp_path / "data.parquet"
    frame.to_parquet(parquet)
    from_csv = load_source(str(csv), store)
    from_parquet = load_source(str(parquet), store)
    pd.testing.assert_frame_equal(from_parquet.frame, frame)
    pd.testing.assert_frame_equal(numeric_frame(from_csv.frame, list(frame.columns)), frame.astype("float64"))
    assert from_parquet.sha256 == hashlib.sha256(parquet.read_bytes()).hexdigest()


def test_parquet_is_recognised_by_content_whatever_the_name(tmp_path: Path, store: LocalObjectStore):
    frame = synthetic_boston(20)
    misnamed = tmp_path / "really_parquet.csv"
    frame.to_parquet(misnamed)
    pd.testing.assert_frame_equal(load_source(str(misnamed), store).frame, frame)


def test_parquet_index_does_not_renumber_rows(tmp_path: Path, store: LocalObjectStore):
    """A Parquet file keeps its writer's index; rows in messages are still counted from 1 by position."""
    frame = synthetic_boston(40)
    filtered = frame[frame.index % 2 == 0].copy()  # index 0, 2, 4, ...
    filtered.loc[filtered.index[3], "medv"] = np.nan  # the 4th row
    filtered.to_parquet(tmp_path / "filtered.parquet")
    loaded = load_source(str(tmp_path / "filtered.parquet"), store).frame
    assert quality.target_finite(loaded, RULE).message == "target 'medv' has NaN at row(s) 4"

    labelled = frame.copy()
    labelled.index = [f"house-{i}" for i in range(40)]
    labelled.loc["house-5", "medv"] = np.nan
    labelled.to_parquet(tmp_path / "labelled.parquet")
    loaded = load_source(str(tmp_path / "labelled.parquet"), store).frame
    assert quality.target_finite(loaded, RULE).message == "target 'medv' has NaN at row(s) 6"

    frame.set_index("crim").to_parquet(tmp_path / "named.parquet")  # a named index is data
    loaded = load_source(str(tmp_path / "named.parquet"), store).frame
    assert quality.required_columns(loaded, RULE).passed
    np.testing.assert_array_equal(loaded["crim"].to_numpy(), frame["crim"].to_numpy())


@pytest.mark.parametrize("extra", [",", ",9"])
def test_rows_longer_than_the_header_are_not_shifted(tmp_path: Path, store: LocalObjectStore, extra: str):
    lines = boston_lines(30)
    path = write_lines(tmp_path / "trailing.csv", [lines[0]] + [line + extra for line in lines[1:]])
    with pytest.raises(DataSourceError) as err:
        load_source(str(path), store)
    assert "rows have more fields than the header's 14 names" in str(err.value)
    assert str(path) in str(err.value)


def test_s3_source_reads_through_the_store(store: LocalObjectStore, mlops_home: Path):
    data = to_csv_bytes(synthetic_boston(30))
    store.put_bytes("s3://mlops-local/incoming/boston.csv", data)
    loaded = load_source("s3://mlops-local/incoming/boston.csv", store)
    assert loaded.description == "s3://mlops-local/incoming/boston.csv"
    assert loaded.sha256 == hashlib.sha256(data).hexdigest()
    assert len(loaded.frame) == 30 and list(loaded.frame.columns) == [*BOSTON_FEATURES, BOSTON_TARGET]


def test_s3_parquet_source(store: LocalObjectStore):
    frame = synthetic_boston(25)
    path = Path(store.root).parent / "tmp.parquet"
    frame.to_parquet(path)
    store.put_file("s3://mlops-local/incoming/boston.parquet", path)
    path.unlink()
    pd.testing.assert_frame_equal(load_source("s3://mlops-local/incoming/boston.parquet", store).frame, frame)


# --- bad input: each error names what is wrong ---------------------------------------------------


def store_objects(store: LocalObjectStore) -> list[Path]:
    root = Path(store.root)
    return [p for p in root.rglob("*") if p.is_file()] if root.exists() else []


def test_missing_file(tmp_path: Path, store: LocalObjectStore):
    missing = tmp_path / "nope" / "boston.csv"
    with pytest.raises(DataSourceError) as err:
        load_source(str(missing), store)
    assert "data source file not found" in str(err.value)
    assert str(missing) in str(err.value)
    assert "MLOPS_DATA_SOURCE" in str(err.value)
    assert store_objects(store) == []


def test_directory_is_not_a_file(tmp_path: Path, store: LocalObjectStore):
    with pytest.raises(DataSourceError, match="is not a file"):
        load_source(str(tmp_path), store)


@pytest.mark.parametrize("content", [b"", b"\n", b"  \n\n \t\n"])
def test_empty_file(tmp_path: Path, store: LocalObjectStore, content: bytes):
    path = tmp_path / "empty.csv"
    path.write_bytes(content)
    with pytest.raises(DataSourceError) as err:
        load_source(str(path), store)
    assert f"data source {path} is empty" in str(err.value)
    assert "needs a header and rows" in str(err.value)
    assert store_objects(store) == []


def test_header_only_file_has_no_rows(tmp_path: Path, store: LocalObjectStore):
    path = write_lines(tmp_path / "header.csv", boston_lines()[:1])
    frame = load_source(str(path), store).frame
    assert len(frame) == 0 and list(frame.columns) == [*BOSTON_FEATURES, BOSTON_TARGET]
    result = quality.min_rows(frame, RULE)
    assert not result.passed
    assert result.message == "has 0 rows, needs at least 20"


@pytest.mark.parametrize(
    ("name", "content", "expected"),
    [
        ("image.png", b"\x89PNG\r\n\x1a\n" + bytes(range(256)), "is neither CSV nor Parquet: byte 0 is not UTF-8 text"),
        ("data.csv.gz", gzip.compress(b"crim,medv\n1,2\n", mtime=0), "is neither CSV nor Parquet"),
        ("nul.csv", b"crim,medv\x00\x00\n1,2\n", "is neither CSV nor Parquet: it contains NUL bytes"),
        ("notes.txt", b"These are my notes\nabout housing prices.\n", "is not a CSV table: found 1 column"),
        ("fake.parquet", b"crim,medv\n1,2\n", "is not a readable Parquet file"),
        ("broken.parquet", b"PAR1 but then garbage", "is not a readable Parquet file"),
    ],
)
def test_file_that_is_not_csv_or_parquet(
    tmp_path: Path, store: LocalObjectStore, name: str, content: bytes, expected: str
):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(DataSourceError) as err:
        load_source(str(path), store)
    assert expected in str(err.value)
    assert str(path) in str(err.value)
    assert store_objects(store) == []


def test_ragged_csv_is_reported(store: LocalObjectStore, tmp_path: Path):
    lines = boston_lines(30)
    lines[5] = lines[5] + ",1,2,3"
    path = write_lines(tmp_path / "ragged.csv", lines)
    with pytest.raises(DataSourceError, match=r"is not valid CSV: .*line 6"):
        load_source(str(path), store)


def test_missing_s3_object(store: LocalObjectStore, mlops_home: Path):
    with pytest.raises(DataSourceError) as err:
        load_source("s3://mlops-local/incoming/missing.csv", store)
    message = str(err.value)
    assert "data source s3://mlops-local/incoming/missing.csv does not exist in the object store" in message
    assert store_objects(store) == []
    assert not any(p.name.endswith(".part") for p in mlops_home.rglob("*"))


def test_parse_table_names_the_source():
    with pytest.raises(DataSourceError, match="data source s3://b/k.csv is empty"):
        parse_table(b"", "s3://b/k.csv")


# --- split and encoding ---------------------------------------------------------------------------


def test_split_is_seeded_disjoint_and_complete():
    frame = synthetic_boston(100).reset_index(names="row_id")
    train, validation = split_frame(frame, 0.8, seed=42)
    assert (len(train), len(validation)) == (80, 20)
    assert set(train["row_id"]).isdisjoint(validation["row_id"])
    assert set(train["row_id"]) | set(validation["row_id"]) == set(range(100))
    again_train, again_validation = split_frame(frame, 0.8, seed=42)
    pd.testing.assert_frame_equal(train, again_train)
    pd.testing.assert_frame_equal(validation, again_validation)
    other_train, _ = split_frame(frame, 0.8, seed=43)
    assert list(other_train["row_id"]) != list(train["row_id"])
    assert list(train["row_id"]) != list(range(80))  # shuffled, not the head of the file


@pytest.mark.parametrize(
    ("fraction", "expected"), [(0.7, (70, 30)), (0.5, (50, 50)), (0.99, (99, 1)), (0.001, (1, 99))]
)
def test_split_ratio_is_configurable(fraction: float, expected: tuple[int, int]):
    train, validation = split_frame(synthetic_boston(100), fraction, seed=1)
    assert (len(train), len(validation)) == expected


@pytest.mark.parametrize("fraction", [0, 1, -0.2, 1.5])
def test_split_rejects_impossible_fractions(fraction: float):
    with pytest.raises(ValueError, match="train_fraction must be between 0 and 1"):
        split_frame(synthetic_boston(10), fraction, seed=1)


def test_csv_encoding_is_stable_and_round_trips():
    frame = numeric_frame(synthetic_boston(60), [*BOSTON_FEATURES, BOSTON_TARGET])
    data = to_csv_bytes(frame)
    assert data == to_csv_bytes(frame.copy())
    assert b"\r" not in data and data.startswith(b"crim,zn,")
    back = pd.read_csv(io.BytesIO(data))
    np.testing.assert_array_equal(back.to_numpy(), frame.to_numpy())
