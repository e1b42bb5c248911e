"""monitoring statistics core: Model Monitor baseline files, drift and schema checks, PSI, model quality."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mlops_dagster.datasets import BOSTON_FEATURES, BOSTON_TARGET, synthetic_boston
from mlops_dagster.monitoring import (
    BASELINE_DRIFT_CHECK,
    COMPLETENESS_CHECK,
    CONSTRAINTS_FILE,
    DATA_TYPE_CHECK,
    EXTRA_COLUMN_CHECK,
    MISSING_COLUMN_CHECK,
    SAMPLE_FILE,
    STATISTICS_FILE,
    VIOLATIONS_FILE,
    Baseline,
    BaselineError,
    DriftConfig,
    DriftInputError,
    ModelQualityError,
    WindowAccumulator,
    compare_quality,
    compare_window,
    compute_baseline,
    dataset_statistics,
    prediction_baseline,
    psi,
    regression_metrics,
)

SHIFTED = ["rm", "lstat"]


@pytest.fixture(scope="module")
def training() -> pd.DataFrame:
    return synthetic_boston(5000, seed=1)


@pytest.fixture(scope="module")
def baseline(training: pd.DataFrame) -> Baseline:
    return compute_baseline(training, BOSTON_FEATURES)


def window(rows: int = 1000, seed: int = 7) -> pd.DataFrame:
    return synthetic_boston(rows, seed=seed)[BOSTON_FEATURES]


def checks(report) -> set[tuple[str, str]]:
    return {(v.feature_name, v.constraint_check_type) for v in report.violations}


# --- baseline files ---------------------------------------------------------------------------


def test_baseline_files_have_model_monitor_fields_and_parse_back(training, baseline, tmp_path: Path):
    files = baseline.files()
    assert set(files) == {STATISTICS_FILE, CONSTRAINTS_FILE, SAMPLE_FILE}
    statistics, constraints = json.loads(files[STATISTICS_FILE]), json.loads(files[CONSTRAINTS_FILE])

    assert statistics["version"] == 0.0 and statistics["dataset"] == {"item_count": 5000}
    assert [f["name"] for f in statistics["features"]] == BOSTON_FEATURES
    for feature in statistics["features"]:
        column = training[feature["name"]]
        stats = feature["numerical_statistics"]
        assert stats["common"] == {"num_present": 5000, "num_missing": 0}
        assert stats["mean"] == pytest.approx(column.mean())
        assert stats["sum"] == pytest.approx(column.sum())
        assert stats["std_dev"] == pytest.approx(column.std(ddof=0))
        assert (stats["min"], stats["max"]) == (column.min(), column.max())
        kll = stats["distribution"]["kll"]
        assert len(kll["buckets"]) == 10
        assert set(kll["buckets"][0]) == {"lower_bound", "upper_bound", "count"}
        assert sum(b["count"] for b in kll["buckets"]) == statistics["dataset"]["item_count"]
        assert kll["buckets"][0]["lower_bound"] == column.min() and kll["buckets"][-1]["upper_bound"] == column.max()
        assert kll["sketch"]["parameters"] == {"c": 0.64, "k": 2048.0}
        assert 0 < len(kll["sketch"]["data"][0]) <= 2048

    assert constraints["version"] == 0.0
    for feature in constraints["features"]:
        assert feature["completeness"] == 1.0
        assert feature["num_constraints"] == {"is_non_negative": bool(training[feature["name"]].min() >= 0)}
    config = constraints["monitoring_config"]
    assert config["evaluate_constraints"] == "Enabled" and config["emit_metrics"] == "Enabled"
    assert config["datatype_check_threshold"] == 1.0 and config["domain_content_threshold"] == 1.0
    distribution = config["distribution_constraints"]
    assert distribution["perform_comparison"] == "Enabled"
    assert distribution["comparison_threshold"] == 0.1 and distribution["comparison_method"] == "Robust"

    for again in (Baseline.from_files(files), Baseline.load(baseline.save(tmp_path / "b")[0].parent)):
        assert again.statistics == statistics and again.constraints == constraints
        assert again.features == BOSTON_FEATURES
        np.testing.assert_array_equal(again.samples["rm"], np.sort(training["rm"].to_numpy()))
        assert again.counts["rm"] == 5000


def test_inferred_types_integral_fractional_string_unknown():
    frame = pd.DataFrame(
        {
            "count": [1, 2, 3, 4],
            "price": [1.5, 2.0, 3.25, 4.0],
            "whole_floats": [1.0, 2.0, 3.0, 4.0],
            "city": ["a", "b", "a", None],
            "numeric_text": ["1", "2", "3", "4"],
            "nothing": [None, None, None, None],
            "flag": [True, False, True, True],
        }
    )
    statistics, constraints = dataset_statistics(frame)
    types = {f["name"]: f["inferred_type"] for f in statistics["features"]}
    assert types == {
        "count": "Integral",
        "price": "Fractional",
        "whole_floats": "Fractional",  # a float column stays Fractional
        "city": "String",
        "numeric_text": "Integral",
        "nothing": "Unknown",
        "flag": "Integral",
    }
    city = next(f for f in statistics["features"] if f["name"] == "city")["string_statistics"]
    assert city["common"] == {"num_present": 3, "num_missing": 1} and city["distinct_count"] == 2
    assert next(c for c in constraints["features"] if c["name"] == "city")["completeness"] == 0.75


def test_real_boston_housing_types(boston_csv: Path):
    frame = pd.read_csv(boston_csv)  # chas is quoted in the file
    types = {f["name"]: f["inferred_type"] for f in compute_baseline(frame, BOSTON_FEATURES).statistics["features"]}
    assert {n for n, t in types.items() if t == "Integral"} == {"chas", "rad", "tax"}


def test_reference_sample_is_bounded_and_keeps_the_cdf():
    rng = np.random.default_rng(3)
    values = rng.normal(size=25_000)
    b = compute_baseline(pd.DataFrame({"x": values}))
    assert len(b.samples["x"]) == 10_000 and b.counts["x"] == 25_000
    sample_file = json.loads(b.files()[SAMPLE_FILE])
    assert sample_file["features"]["x"]["count"] == 25_000 and len(sample_file["features"]["x"]["values"]) == 10_000
    # Evenly spaced order statistics: the sample's CDF is within 1/10,000 of the data's.
    grid = np.linspace(-3, 3, 61)
    full = np.searchsorted(np.sort(values), grid) / 25_000
    kept = np.searchsorted(b.samples["x"], grid) / 10_000
    assert np.max(np.abs(full - kept)) <= 2e-4


def test_prediction_baseline_and_prediction_drift():
    rng = np.random.default_rng(5)
    b = prediction_baseline(rng.normal(22, 5, 800))
    assert b.features == ["prediction"]
    assert compare_window(b, pd.DataFrame({"prediction": rng.normal(22, 5, 500)})).status == "ok"
    drifted = compare_window(b, pd.DataFrame({"prediction": rng.normal(27, 5, 500)}))
    assert drifted.drifted_features == ["prediction"]


# --- drift ------------------------------------------------------------------------------------


def test_undrifted_window_passes(baseline):
    report = compare_window(baseline, window())
    assert report.status == "ok" and report.drifted_features == [] and report.violations == ()
    assert json.loads(report.files()[VIOLATIONS_FILE]) == {"violations": []}
    for feature in report.features:
        assert feature.status == "ok" and 0 <= feature.statistic < 0.1 and feature.p_value > report.corrected_alpha
        assert feature.psi < 0.1 and feature.window_count == 1000 and feature.baseline_count == 5000


def test_two_features_shifted_by_one_std_fail_naming_exactly_them(training, baseline):
    shifted = window()
    for name in SHIFTED:
        shifted[name] += training[name].std()
    report = compare_window(baseline, shifted)
    assert report.status == "drifted"
    assert report.drifted_features == SHIFTED
    assert checks(report) == {(name, BASELINE_DRIFT_CHECK) for name in SHIFTED}
    assert report.corrected_alpha == pytest.approx(0.01 / 13)
    for name in SHIFTED:
        feature = report.feature(name)
        assert feature.statistic >= 0.3 and feature.p_value < 1e-20 and feature.psi > 0.25
        assert feature.critical_statistic < feature.statistic
    written = json.loads(report.files()[VIOLATIONS_FILE])["violations"]
    assert [v["feature_name"] for v in written] == SHIFTED
    assert all(
        v["constraint_check_type"] == "baseline_drift_check" and "exceeds threshold" in v["description"]
        for v in written
    )
    assert "rm" in report.summary() and "lstat" in report.summary() and "| rm | drifted |" in report.markdown()


def test_min_statistic_keeps_a_tiny_shift_in_a_huge_window_from_alarming(training, baseline):
    big = synthetic_boston(50_000, seed=11)[BOSTON_FEATURES]
    big["rm"] += 0.05 * training["rm"].std()  # significant at this size, but a negligible change
    report = compare_window(baseline, big)
    rm = report.feature("rm")
    assert rm.p_value < report.corrected_alpha and rm.statistic < 0.1
    assert rm.status == "ok" and report.drifted_features == []
    strict = compare_window(baseline, big, DriftConfig(min_statistic=0.0))
    assert strict.drifted_features == ["rm"]


def test_tiny_window_is_insufficient_samples_never_drifted(training, baseline):
    tiny = window(rows=10)
    tiny["rm"] += 5 * training["rm"].std()
    report = compare_window(baseline, tiny)
    assert report.status == "insufficient samples" and report.insufficient
    assert report.drifted_features == [] and report.drift_violations == []
    assert {f.status for f in report.features} == {"insufficient samples"}
    assert "insufficient samples" in report.summary()
    assert compare_window(baseline, window(rows=10), DriftConfig(min_samples=5)).status == "ok"


def test_chunked_window_matches_one_shot(baseline):
    whole = window(rows=3000, seed=9)
    accumulator = WindowAccumulator(baseline)
    for start in range(0, 3000, 700):
        accumulator.add(whole.iloc[start : start + 700])
    accumulator.add_array(whole.iloc[:0].to_numpy(), BOSTON_FEATURES)  # an empty chunk changes nothing
    chunked, once = accumulator.report(), compare_window(baseline, whole)
    assert chunked.rows == 3000
    assert chunked.table() == once.table()
    assert chunked.statistics == once.statistics
    assert accumulator.report().table() == once.table()  # a second report gives the same answer


def test_window_statistics_json(baseline):
    report = compare_window(baseline, window())
    statistics = json.loads(report.files()[STATISTICS_FILE])
    assert statistics["version"] == 0.0 and statistics["dataset"] == {"item_count": 1000}
    chas = next(f for f in statistics["features"] if f["name"] == "chas")
    assert chas["inferred_type"] == "Integral"
    buckets = chas["numerical_statistics"]["distribution"]["kll"]["buckets"]
    assert sum(b["count"] for b in buckets) == 1000


def test_schema_violations_use_model_monitor_check_types(baseline):
    bad = window().drop(columns=["tax"]).assign(extra=1.0)
    bad["crim"] = bad["crim"].astype("float64")
    bad.loc[[3, 4], "crim"] = np.nan
    bad["rm"] = bad["rm"].astype(object)
    bad.loc[5, "rm"] = "n/a"
    bad["chas"] = bad["chas"].astype("float64")
    bad.loc[6, "chas"] = 0.5  # chas is Integral in the baseline
    report = compare_window(baseline, bad)
    assert checks(report) == {
        ("tax", MISSING_COLUMN_CHECK),
        ("extra", EXTRA_COLUMN_CHECK),
        ("crim", COMPLETENESS_CHECK),
        ("rm", DATA_TYPE_CHECK),
        ("chas", DATA_TYPE_CHECK),
    }
    assert report.schema_violations == list(report.violations) and report.drifted_features == []
    assert report.feature("tax").status == "missing column"
    by_check = {(v.feature_name, v.constraint_check_type): v.description for v in report.violations}
    assert "0.998" in by_check[("crim", COMPLETENESS_CHECK)]
    assert "Integral" in by_check[("chas", DATA_TYPE_CHECK)]
    written = json.loads(report.files()[VIOLATIONS_FILE])
    assert {v["constraint_check_type"] for v in written["violations"]} == {
        MISSING_COLUMN_CHECK,
        EXTRA_COLUMN_CHECK,
        COMPLETENESS_CHECK,
        DATA_TYPE_CHECK,
    }
    rm = next(f for f in report.statistics["features"] if f["name"] == "rm")
    assert rm["inferred_type"] == "String" and rm["numerical_statistics"]["common"]["num_present"] == 1000


def test_chunk_without_a_column_counts_as_missing_values(baseline):
    accumulator = WindowAccumulator(baseline)
    accumulator.add(window(rows=500, seed=1))
    accumulator.add(window(rows=500, seed=2).drop(columns=["age"]))
    report = accumulator.report()
    assert checks(report) == {("age", COMPLETENESS_CHECK)}
    assert report.feature("age").window_count == 500


def test_constraints_can_turn_checks_off(baseline):
    files = baseline.files()
    constraints = json.loads(files[CONSTRAINTS_FILE])
    constraints["monitoring_config"]["evaluate_constraints"] = "Disabled"
    constraints["monitoring_config"]["distribution_constraints"]["perform_comparison"] = "Disabled"
    quiet = Baseline.from_files({**files, CONSTRAINTS_FILE: json.dumps(constraints).encode()})
    shifted = window().drop(columns=["tax"])
    shifted["rm"] += 5
    report = compare_window(quiet, shifted)
    assert report.violations == () and report.drifted_features == []
    assert report.feature("rm").status == "not compared"


# --- PSI --------------------------------------------------------------------------------------


def test_psi_of_identical_distributions_is_about_zero():
    rng = np.random.default_rng(0)
    values = rng.normal(size=5000)
    assert psi(values, values) == pytest.approx(0.0, abs=1e-12)
    assert psi(values, rng.normal(size=5000)) < 0.02
    assert psi(values, rng.normal(1.0, 1.0, 5000)) > 0.5
    discrete = rng.choice([0, 1], 5000, p=[0.93, 0.07])  # repeated quantiles collapse into one edge
    assert psi(discrete, discrete) == pytest.approx(0.0, abs=1e-12)
    assert psi(discrete, np.ones(100)) > 1.0
    with pytest.raises(DriftInputError, match="PSI needs values on both sides"):
        psi(values, [])


# --- model quality ----------------------------------------------------------------------------


def test_model_quality_metrics_on_known_numbers():
    metrics = regression_metrics([1, 2, 3, 4], [1, 2, 3, 6])
    assert (metrics.n, metrics.mse, metrics.rmse, metrics.mae) == (4, 1.0, 1.0, 0.5)
    assert metrics.r2 == pytest.approx(0.2)  # 1 - 4 / 5
    assert metrics.standard_deviations["mse"] is None  # Model Monitor: only from 200 samples
    written = metrics.statistics()
    assert written["dataset"] == {"item_count": 4} and written["regression_metrics"]["mse"]["value"] == 1.0

    worse = compare_quality(metrics, {"mse": 0.5}, worse_ratio=1.5, min_samples=1)
    assert worse.status == "degraded" and not worse.passed and set(worse.failures) == {"mse"}
    assert "1.5x" in worse.summary()
    assert worse.constraint_violations()["violations"][0]["constraint_check_type"] == "GreaterThanThreshold"
    assert worse.constraints()["regression_constraints"]["mse"] == {
        "threshold": 0.75,
        "comparison_operator": "GreaterThanThreshold",
    }
    evaluation = {"regression_metrics": {"mse": {"value": 0.8}, "r2": {"value": None}}}  # evaluation.json
    fine = compare_quality(metrics, evaluation, worse_ratio=1.5, min_samples=1)
    assert fine.status == "ok" and fine.passed and fine.ratios()["mse"] == pytest.approx(1.25)
    few = compare_quality(metrics, {"mse": 0.1})  # 4 rows < min_samples 30
    assert few.status == "insufficient samples" and few.passed

    rng = np.random.default_rng(1)
    truth = rng.normal(20, 5, 400)
    many = regression_metrics(truth, truth + rng.normal(0, 2, 400))
    assert all(many.standard_deviations[m] is not None for m in ("mse", "rmse", "mae", "r2"))


# --- bad input --------------------------------------------------------------------------------


def test_bad_input_raises_with_a_clear_message(training):
    with pytest.raises(BaselineError, match=r"empty \(0 rows\)"):
        compute_baseline(training.iloc[:0], BOSTON_FEATURES)
    with pytest.raises(BaselineError, match="'city' is not numeric"):
        compute_baseline(training.assign(city="x"), [*BOSTON_FEATURES, "city"])
    with pytest.raises(BaselineError, match=r"\['nope'\] are not columns"):
        compute_baseline(training, ["rm", "nope"])
    with pytest.raises(BaselineError, match="list of features is empty"):
        compute_baseline(training, [])
    with pytest.raises(ModelQualityError, match="ground truth has 3 values but predictions have 2"):
        regression_metrics([1, 2, 3], [1, 2])
    with pytest.raises(ModelQualityError, match="predictions hold 1 missing"):
        regression_metrics([1, 2], [1, float("nan")])
    with pytest.raises(ModelQualityError, match=r"no \['mse'\]"):
        compare_quality(regression_metrics([1, 2], [1, 2]), {"mae": 1.0})
    with pytest.raises(ModelQualityError, match="worse_ratio must be a number >= 1"):
        compare_quality(regression_metrics([1, 2], [1, 2]), {"mse": 1.0}, worse_ratio=0.5)
    with pytest.raises(BaselineError, match=r"one value per row, got shape \(3, 2\)"):
        prediction_baseline(np.ones((3, 2)))
    with pytest.raises(ModelQualityError, match="'regression_metrics' must be an object"):
        compare_quality(regression_metrics([1, 2], [1, 2]), {"regression_metrics": [1.0]})
    with pytest.raises(DriftInputError, match="alpha must be between 0 and 1"):
        DriftConfig(alpha=0)
    with pytest.raises(DriftInputError, match="min_samples must be an integer >= 1"):
        DriftConfig(min_samples=0)
    b = compute_baseline(training, BOSTON_FEATURES)
    with pytest.raises(DriftInputError, match="columns named twice"):
        compare_window(b, pd.concat([window(), window()[["rm"]]], axis=1))
    files = b.files()
    with pytest.raises(BaselineError, match=f"where/{STATISTICS_FILE} is not JSON"):
        Baseline.from_files({**files, STATISTICS_FILE: b"{truncated"}, "where")
    with pytest.raises(BaselineError, match=f"missing {SAMPLE_FILE}"):
        Baseline.from_files({k: v for k, v in files.items() if k != SAMPLE_FILE})
    sample = json.loads(files[SAMPLE_FILE])
    del sample["features"]["rm"]
    with pytest.raises(BaselineError, match="no reference values for feature 'rm'"):
        Baseline.from_files({**files, SAMPLE_FILE: json.dumps(sample).encode()})


def test_target_is_not_a_feature_unless_asked(training):
    assert BOSTON_TARGET not in compute_baseline(training, BOSTON_FEATURES).features
