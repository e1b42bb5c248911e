"""Issue 9 item 6 (data part): raw_data and s3_dataset config that would do harm is refused.

Each bad value fails when the config is built, before any data is read, with the field named and
its allowed range.
"""

from __future__ import annotations

import math

import pytest
import yaml
from dagster import DagsterInstance
from helpers import check_evaluations, failure_text, materialized, run_data_assets, started_steps, store_files
from pydantic import ValidationError

from mlops_dagster.assets.data import RawDataConfig, S3DatasetConfig

MAX_SYNTHETIC_ROWS = 10_000_000  # the documented bound

SEED_RANGE = "seed must be an integer from 0 to 9,223,372,036,854,775,807"
FRACTION = "must be a number from 0 to 1"

RAW_CASES = [
    ("rows", 0, "rows must be an integer from 1 to 10,000,000; got 0"),
    ("rows", -5, "rows must be an integer from 1 to 10,000,000; got -5"),
    ("rows", 10**12, "rows must be an integer from 1 to 10,000,000; got 1000000000000"),
    ("seed", -1, f"{SEED_RANGE}; got -1"),
    ("seed", 2**64, f"{SEED_RANGE}; got {2**64}"),
    ("min_rows", -1, "min_rows must be an integer >= 2; got -1"),
    ("min_rows", 1, "min_rows must be an integer >= 2; got 1"),
    ("max_missing_fraction", math.nan, f"max_missing_fraction {FRACTION}; got nan"),
    ("max_missing_fraction", math.inf, f"max_missing_fraction {FRACTION}; got inf"),
    ("max_missing_fraction", 1.5, f"max_missing_fraction {FRACTION}; got 1.5"),
    ("max_row_drop_fraction", math.nan, f"max_row_drop_fraction {FRACTION}; got nan"),
    ("max_row_drop_fraction", -0.1, f"max_row_drop_fraction {FRACTION}; got -0.1"),
    ("target_min", math.nan, "target_min must be a finite number; got nan"),
    ("target_min", -math.inf, "target_min must be a finite number; got -inf"),
    ("target_max", math.nan, "target_max must be a finite number; got nan"),
    ("target_max", math.inf, "target_max must be a finite number; got inf"),
]
S3_CASES = [
    ("train_fraction", math.nan, "train_fraction must be a number strictly between 0 and 1; got nan"),
    ("train_fraction", 0.0, "train_fraction must be a number strictly between 0 and 1; got 0.0"),
    ("train_fraction", 1.0, "train_fraction must be a number strictly between 0 and 1; got 1.0"),
    ("seed", -3, f"{SEED_RANGE}; got -3"),
]


def validation_text(config_cls, **values) -> str:
    with pytest.raises(ValidationError) as err:
        config_cls(**values)
    return str(err.value)


@pytest.mark.parametrize(("field", "value", "expected"), RAW_CASES, ids=[f"{f}={v}" for f, v, _ in RAW_CASES])
def test_raw_data_config_refuses_harmful_values(field: str, value, expected: str):
    text = validation_text(RawDataConfig, **{field: value})
    assert text.splitlines()[1] == field  # pydantic names the field on its own line
    assert expected in text


@pytest.mark.parametrize(("field", "value", "expected"), S3_CASES, ids=[f"{f}={v}" for f, v, _ in S3_CASES])
def test_s3_dataset_config_refuses_harmful_values(field: str, value, expected: str):
    text = validation_text(S3DatasetConfig, **{field: value})
    assert text.splitlines()[1] == field
    assert expected in text


def test_target_min_above_target_max_is_refused():
    text = validation_text(RawDataConfig, target_min=50.0, target_max=10.0)
    assert "target_min (50.0) must be <= target_max (10.0): no target value could pass" in text


def test_edge_values_are_allowed():
    config = RawDataConfig(
        rows=MAX_SYNTHETIC_ROWS, seed=0, min_rows=2, max_missing_fraction=0.0,
        max_row_drop_fraction=1.0, target_min=5.0, target_max=5.0,
    )  # fmt: skip
    assert (config.rows, config.min_rows, config.target_min) == (10_000_000, 2, 5.0)
    assert RawDataConfig(rows=1, max_missing_fraction=1.0, target_min=-1e9, target_max=1e9).rows == 1
    assert S3DatasetConfig(train_fraction=0.001, seed=2**63 - 1).train_fraction == 0.001


# --- through a run: refused before any data is read ---------------------------------------------------


def assert_refused_before_reading(result, step: str, expected: str, home) -> None:
    assert not result.success
    text = failure_text(result)
    assert expected in text, text
    assert [e.step_key for e in result.all_events if e.event_type_value == "STEP_FAILURE"] == [step]
    assert store_files(home) == []


def test_yaml_nan_target_min_fails_the_run_naming_the_field(defs, mlops_home):
    raw = yaml.safe_load("source: synthetic\ntarget_min: .nan\n")  # what a user types in the launchpad
    assert math.isnan(raw["target_min"])
    result = run_data_assets(defs, raw_config=raw)
    assert_refused_before_reading(result, "raw_data", "target_min must be a finite number; got nan", mlops_home)
    assert materialized(result, "raw_data") == []
    assert check_evaluations(result) == {}  # no data was read, so nothing was checked
    assert "s3_dataset" not in started_steps(result)


def test_negative_min_rows_fails_the_run_naming_the_field(defs, mlops_home):
    result = run_data_assets(defs, raw_config={"source": "synthetic", "min_rows": -1})
    assert_refused_before_reading(result, "raw_data", "min_rows must be an integer >= 2; got -1", mlops_home)
    assert materialized(result, "raw_data") == []


def test_nan_train_fraction_fails_s3_dataset_naming_the_field(defs, mlops_home):
    result = run_data_assets(
        defs, DagsterInstance.ephemeral(), raw_config={"source": "synthetic"}, s3_config={"train_fraction": math.nan}
    )
    assert_refused_before_reading(
        result, "s3_dataset", "train_fraction must be a number strictly between 0 and 1; got nan", mlops_home
    )
    assert materialized(result, "s3_dataset") == []
