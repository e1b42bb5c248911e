"""The scripts that run inside SageMaker containers (training/), run as subprocesses.

Temporary directories stand in for the /opt/ml paths: training scripts get them through
SM_* variables, processing scripts through their path arguments, as in the pipeline.
"""

from __future__ import annotations

import ast
import importlib.util
import io
import json
import math
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import joblib
import numpy as np
import pandas as pd
import pytest
from script_runner import ScriptRunner

REPO = Path(__file__).resolve().parent.parent
TRAINING = REPO / "training"
RECIPE_TRAIN = REPO / "tests" / "fixtures" / "recipe_train.py"
SEED_RECIPE = REPO.parent / "shared" / "seed" / "end-to-end-mlops-sagemaker-pipelines.md"
SCRIPTS = ["preprocess.py", "train.py", "evaluate.py"]

# The recipe's sample data (step 3): five training rows, two validation rows.
RECIPE_HEADER = "crim,zn,indus,chas,nox,rm,age,dis,rad,tax,ptratio,b,lstat,medv\n"
RECIPE_TRAIN_ROWS = """\
0.00632,18.0,2.31,0,0.538,6.575,65.2,4.0900,1,296,15.3,396.90,4.98,24.0
0.02731,0.0,7.07,0,0.469,6.421,78.9,4.9671,2,242,17.8,396.90,9.14,21.6
0.02729,0.0,7.07,0,0.469,7.185,61.1,4.9671,2,242,17.8,392.83,4.03,34.7
0.03237,0.0,2.18,0,0.458,6.998,45.8,6.0622,3,222,18.7,394.63,2.94,33.4
0.06905,0.0,2.18,0,0.458,7.147,54.2,6.0622,3,222,18.7,396.90,5.33,36.2
"""


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("SM_")}


@pytest.fixture(scope="session", autouse=True)
def _runner():
    """The forked runner of this module's scripts (tests/script_runner.py), ended with the session:
    xdist hands this module's tests to a worker a few at a time, and a module-scoped runner would
    be rebuilt (its imports paid again) each time the worker came back to the module."""
    global RUNNER
    RUNNER = ScriptRunner(_clean_env())
    yield RUNNER
    RUNNER.close()
    RUNNER = None


RUNNER: ScriptRunner | None = None


def run(script: str | Path, *args: str, env: dict[str, str] | None = None, cwd: Path | None = None,
        fresh: bool = False) -> subprocess.CompletedProcess:  # fmt: skip
    """Run a script the way a container does, with only the SM_* given: as ``__main__`` of a process
    forked from one that imported pandas and scikit-learn once, or (``fresh``) a new interpreter."""
    clean = _clean_env()
    clean.update(env or {})
    path = script if isinstance(script, Path) else TRAINING / script
    if not fresh:
        return RUNNER.run(path, list(args), clean, cwd)
    return subprocess.run(
        [sys.executable, str(path), *args], env=clean, cwd=cwd, capture_output=True, text=True, timeout=600
    )


def strict_json(path: Path):
    """json.loads that refuses NaN and Infinity, which are not JSON."""

    def refuse(constant):
        raise ValueError(f"{path} contains {constant}")

    return json.loads(path.read_text(), parse_constant=refuse)


def synthetic(n_rows: int, seed: int = 0) -> pd.DataFrame:
    """A Boston-schema-like table whose target is a noisy function of the features."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        {
            "crim": rng.exponential(3.0, n_rows),
            "rm": rng.normal(6.3, 0.7, n_rows),
            "chas": rng.integers(0, 2, n_rows),
            "lstat": rng.uniform(2.0, 35.0, n_rows),
        }
    )
    frame["medv"] = 5 * frame["rm"] - 0.6 * frame["lstat"] + 3 * frame["chas"] + rng.normal(0, 1.0, n_rows)
    return frame


@pytest.fixture
def opt_ml(tmp_path: Path) -> dict:
    """A per-test stand-in for /opt/ml and the SM_* variables the training toolkit sets."""
    root = tmp_path / "opt_ml"
    dirs = {
        "training": root / "input" / "data" / "training",
        "validation": root / "input" / "data" / "validation",
        "model": root / "model",
        "output": root / "output",
    }
    for name in ("training", "model", "output"):
        dirs[name].mkdir(parents=True)
    env = {
        "SM_MODEL_DIR": str(dirs["model"]),
        "SM_CHANNEL_TRAINING": str(dirs["training"]),
        "SM_OUTPUT_DIR": str(dirs["output"]),
        "SM_OUTPUT_DATA_DIR": str(root / "output" / "data"),
        "SM_NUM_CPUS": "2",
    }
    return {"root": root, "env": env, "cwd": tmp_path, **dirs}


def with_validation(opt_ml: dict, frame: pd.DataFrame) -> dict:
    opt_ml["validation"].mkdir(parents=True, exist_ok=True)
    frame.to_csv(opt_ml["validation"] / "validation.csv", index=False)
    return {**opt_ml["env"], "SM_CHANNEL_VALIDATION": str(opt_ml["validation"])}


def pack_model(model_dir: Path, destination: Path) -> Path:
    """What SageMaker does after training: the model directory's files at the archive root."""
    destination.mkdir(parents=True, exist_ok=True)
    with tarfile.open(destination / "model.tar.gz", "w:gz") as tar:
        for item in sorted(model_dir.iterdir()):
            tar.add(item, arcname=item.name)
    return destination


def load_script(name: str, monkeypatch: pytest.MonkeyPatch):
    # No training/__pycache__: the SDK tars training/ as sourcedir.tar.gz, and stray
    # bytecode would change the uploaded code and so the pipeline definition.
    monkeypatch.setattr(sys, "dont_write_bytecode", True)
    spec = importlib.util.spec_from_file_location(f"training_{name[:-3]}", TRAINING / name)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --- the container's Python --------------------------------------------------------------


@pytest.mark.parametrize("name", SCRIPTS)
def test_scripts_parse_as_python_39(name):
    """The scikit-learn 1.2-1 container runs Python 3.9: no match statements or newer syntax."""
    source = (TRAINING / name).read_text()
    ast.parse(source, filename=name, feature_version=(3, 9))


# --- preprocess.py -----------------------------------------------------------------------


def test_preprocess_cleans_and_splits(tmp_path):
    inputs = tmp_path / "input"
    inputs.mkdir()
    # Quoted numbers, a missing feature, a missing target, an infinite target and text.
    (inputs / "train.csv").write_text(
        '"a","chas","b","medv"\n1,"0",10,20\n2,"1",,21\n3,"0",30,\n4,"0",40,inf\n5,"1",50,24\nx,"0",60,25\n'
    )
    # Validation medians differ from train's; its missing values must get train's.
    (inputs / "validation.csv").write_text(
        "a,chas,b,medv\n" + "".join(f"{100 + i},{i % 2},{1000 + i},{30 + i}\n" for i in range(9)) + ",0,,39\n"
    )
    result = run("preprocess.py", "--input-dir", str(inputs), "--output-dir", str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr
    assert "dropped 2 row(s)" in result.stdout

    train = pd.read_csv(tmp_path / "out" / "train" / "train.csv")
    validation = pd.read_csv(tmp_path / "out" / "validation" / "validation.csv")
    test = pd.read_csv(tmp_path / "out" / "test" / "test.csv")
    assert list(train.columns) == ["a", "chas", "b", "medv"]
    assert list(validation.columns) == list(test.columns) == list(train.columns)
    assert train["medv"].tolist() == [20, 21, 24, 25]  # NaN and inf targets dropped
    assert all(pd.api.types.is_numeric_dtype(train[c]) for c in train.columns)
    assert train["chas"].tolist() == [0, 1, 1, 0]  # quoted "0"/"1" are numbers
    # Train medians after dropping the bad-target rows: a over [1, 2, 5] = 2, b over [10, 50, 60] = 50.
    assert train["b"].tolist() == [10, 50, 50, 60]
    assert train["a"].tolist() == [1, 2, 5, 2]  # the text value "x" is imputed too
    # 10 validation rows, half become test; the imputed row got train's medians (2, 50).
    assert len(validation) == 5 and len(test) == 5
    both = pd.concat([validation, test])
    assert sorted(both["medv"]) == list(range(30, 40))
    imputed = both[both["medv"] == 39].iloc[0]
    assert (imputed["a"], imputed["b"]) == (2, 50)
    assert "train: 4 rows" in result.stdout and "test: 5 rows" in result.stdout


def test_preprocess_split_is_seeded(tmp_path):
    inputs = tmp_path / "input"
    inputs.mkdir()
    synthetic(50, seed=1).to_csv(inputs / "train.csv", index=False)
    synthetic(21, seed=2).to_csv(inputs / "validation.csv", index=False)
    outputs = []
    for name, seed in (("one", "7"), ("two", "7"), ("three", "8")):
        args = ["--input-dir", str(inputs), "--output-dir", str(tmp_path / name), "--seed", seed]
        result = run("preprocess.py", *args, "--test-fraction", "0.3")
        assert result.returncode == 0, result.stderr
        outputs.append((tmp_path / name / "test" / "test.csv").read_bytes())
    assert outputs[0] == outputs[1] != outputs[2]
    assert len(pd.read_csv(tmp_path / "one" / "test" / "test.csv")) == 6  # round(21 * 0.3)
    assert len(pd.read_csv(tmp_path / "one" / "validation" / "validation.csv")) == 15


def test_preprocess_reports_missing_input(tmp_path):
    inputs = tmp_path / "input"
    inputs.mkdir()
    synthetic(10).to_csv(inputs / "train.csv", index=False)
    result = run("preprocess.py", "--input-dir", str(inputs), "--output-dir", str(tmp_path / "out"))
    assert result.returncode == 1
    assert str(inputs / "validation.csv") in result.stderr and "not found" in result.stderr
    assert not (tmp_path / "out").exists()


def test_preprocess_reports_missing_target(tmp_path):
    inputs = tmp_path / "input"
    inputs.mkdir()
    synthetic(10).to_csv(inputs / "train.csv", index=False)
    synthetic(10).to_csv(inputs / "validation.csv", index=False)
    result = run(
        "preprocess.py", "--input-dir", str(inputs), "--output-dir", str(tmp_path / "out"), "--target", "price"
    )
    assert result.returncode == 1
    assert "'price'" in result.stderr and str(inputs / "train.csv") in result.stderr


# --- train.py ----------------------------------------------------------------------------


def test_train_uses_validation_channel(opt_ml):
    synthetic(200, seed=1).to_csv(opt_ml["training"] / "train.csv", index=False)
    env = with_validation(opt_ml, synthetic(40, seed=2))
    result = run("train.py", "--n_estimators", "20", "--max_depth", "None", env=env, cwd=opt_ml["cwd"])
    assert result.returncode == 0, result.stderr
    assert "Model MSE:" in result.stdout and "Model R2:" in result.stdout

    evaluation = strict_json(opt_ml["model"] / "evaluation.json")
    assert evaluation["evaluated_on"] == "validation"
    assert evaluation["rows"] == {"train": 200, "evaluation": 40}
    metrics = {k: v["value"] for k, v in evaluation["regression_metrics"].items()}
    assert set(metrics) == {"mse", "rmse", "mae", "r2"}
    assert metrics["rmse"] == pytest.approx(math.sqrt(metrics["mse"]))
    assert metrics["r2"] > 0.6 and 0 < metrics["mae"] <= metrics["rmse"]

    assert json.loads((opt_ml["model"] / "features.json").read_text()) == ["crim", "rm", "chas", "lstat"]
    model = joblib.load(opt_ml["model"] / "model.joblib")
    assert (model.n_estimators, model.max_depth, model.n_jobs) == (20, None, 2)
    # "auto" on 200 rows is scikit-learn's unbounded forest: small data trains as before.
    assert (model.min_samples_leaf, model.max_samples) == (1, None)
    assert not (opt_ml["output"] / "failure").exists()


def test_train_hyperparameters_as_strings(opt_ml):
    synthetic(60).to_csv(opt_ml["training"] / "train.csv", index=False)
    env = {k: v for k, v in opt_ml["env"].items() if k != "SM_NUM_CPUS"}
    args = ["--n_estimators", "7", "--max_depth", "3", "--min_samples_leaf", "2", "--random_state", "5"]
    result = run("train.py", *args, env=env, cwd=opt_ml["cwd"])
    assert result.returncode == 0, result.stderr
    model = joblib.load(opt_ml["model"] / "model.joblib")
    assert (model.n_estimators, model.max_depth, model.min_samples_leaf, model.random_state) == (7, 3, 2, 5)
    assert model.n_jobs == -1  # no SM_NUM_CPUS: every core


@pytest.mark.parametrize(("value", "expected"), [("30", 30), ("0.5", 0.5), ("None", None)])
def test_train_max_samples_is_used_exactly(opt_ml, value, expected):
    synthetic(60).to_csv(opt_ml["training"] / "train.csv", index=False)
    result = run("train.py", "--n_estimators", "3", "--max_samples", value, env=opt_ml["env"], cwd=opt_ml["cwd"])
    assert result.returncode == 0, result.stderr
    model = joblib.load(opt_ml["model"] / "model.joblib")
    assert (model.max_samples, model.min_samples_leaf) == (expected, 1)


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["--min_samples_leaf", "0"], "--min_samples_leaf"),
        (["--min_samples_leaf", "many"], "--min_samples_leaf"),
        (["--max_samples", "1.5"], "--max_samples"),
        (["--max_samples", "0"], "--max_samples"),
        (["--max_samples", "-3"], "--max_samples"),
    ],
)
def test_train_refuses_bad_size_hyperparameters(opt_ml, args, named):
    synthetic(30).to_csv(opt_ml["training"] / "train.csv", index=False)
    result = run("train.py", *args, env=opt_ml["env"], cwd=opt_ml["cwd"])
    assert result.returncode != 0
    failure = (opt_ml["output"] / "failure").read_text()
    assert named in failure and args[1] in failure
    assert not (opt_ml["model"] / "model.joblib").exists()


def test_bounded_forest_params_scale_with_the_data(monkeypatch):
    train = load_script("train.py", monkeypatch)
    bounded = train.bounded_forest_params
    # Up to AUTO_LEAVES rows (the Boston data: 405): scikit-learn's defaults, the forest of before.
    assert bounded(405) == bounded(train.AUTO_LEAVES) == {"min_samples_leaf": 1, "max_samples": None}
    assert bounded(train.AUTO_LEAVES + 1) == {"min_samples_leaf": 2, "max_samples": None}
    # Large data: each tree sees AUTO_TREE_ROWS rows, in at most ~AUTO_LEAVES leaves.
    big = bounded(800_000)
    assert big == {"min_samples_leaf": train.AUTO_TREE_ROWS // train.AUTO_LEAVES, "max_samples": train.AUTO_TREE_ROWS}
    assert bounded(10_000_000) == big  # the bound does not grow with the data
    # A value set explicitly is used as given; the other one, left "auto", follows it.
    assert bounded(800_000, min_samples_leaf=1) == {"min_samples_leaf": 1, "max_samples": train.AUTO_TREE_ROWS}
    assert bounded(800_000, max_samples=None) == {"min_samples_leaf": 80, "max_samples": None}
    assert bounded(800_000, max_samples=0.5) == {"min_samples_leaf": 40, "max_samples": 0.5}
    assert bounded(800_000, 3, 1000) == {"min_samples_leaf": 3, "max_samples": 1000}


def test_train_falls_back_to_recipe_split(opt_ml):
    synthetic(100).to_csv(opt_ml["training"] / "train.csv", index=False)
    # A validation channel that does not exist is the same as none.
    env = {**opt_ml["env"], "SM_CHANNEL_VALIDATION": str(opt_ml["root"] / "absent")}
    result = run("train.py", env=env, cwd=opt_ml["cwd"])
    assert result.returncode == 0, result.stderr
    evaluation = strict_json(opt_ml["model"] / "evaluation.json")
    assert evaluation["evaluated_on"] == "train-split"
    assert evaluation["rows"] == {"train": 80, "evaluation": 20}
    assert evaluation["regression_metrics"]["r2"]["value"] > 0.6


def test_train_one_evaluation_row_writes_null_r2(opt_ml):
    """The recipe's own sample data: five rows, so its 80/20 split evaluates on one row."""
    (opt_ml["training"] / "train.csv").write_text(RECIPE_HEADER + RECIPE_TRAIN_ROWS)
    result = run("train.py", env=opt_ml["env"], cwd=opt_ml["cwd"])
    assert result.returncode == 0, result.stderr
    evaluation = strict_json(opt_ml["model"] / "evaluation.json")  # raises on NaN
    assert evaluation["rows"] == {"train": 4, "evaluation": 1}
    metrics = evaluation["regression_metrics"]
    assert metrics["r2"]["value"] is None
    assert metrics["mse"]["value"] >= 0 and metrics["rmse"]["value"] == pytest.approx(
        math.sqrt(metrics["mse"]["value"])
    )

    # The same with a one-row validation channel.
    env = with_validation(opt_ml, pd.read_csv(io.StringIO(RECIPE_HEADER + RECIPE_TRAIN_ROWS)).head(1))
    result = run("train.py", env=env, cwd=opt_ml["cwd"])
    assert result.returncode == 0, result.stderr
    evaluation = strict_json(opt_ml["model"] / "evaluation.json")
    assert evaluation["evaluated_on"] == "validation" and evaluation["rows"]["evaluation"] == 1
    assert evaluation["regression_metrics"]["r2"]["value"] is None


def test_train_missing_target_writes_failure_file(opt_ml):
    synthetic(30).rename(columns={"medv": "price"}).to_csv(opt_ml["training"] / "train.csv", index=False)
    result = run("train.py", env=opt_ml["env"], cwd=opt_ml["cwd"])
    assert result.returncode == 1
    failure = (opt_ml["output"] / "failure").read_text()
    assert "'medv'" in failure and "train.csv" in failure
    assert "'medv'" in result.stderr
    assert not (opt_ml["model"] / "model.joblib").exists()

    # With the right hyperparameter the same data trains.
    result = run("train.py", "--target", "price", env=opt_ml["env"], cwd=opt_ml["cwd"])
    assert result.returncode == 0, result.stderr


def test_train_unknown_hyperparameter_fails_visibly(opt_ml):
    synthetic(30).to_csv(opt_ml["training"] / "train.csv", index=False)
    result = run("train.py", "--n_estimator", "5", env=opt_ml["env"], cwd=opt_ml["cwd"])
    assert result.returncode != 0
    assert "--n_estimator" in (opt_ml["output"] / "failure").read_text()


def test_train_rejects_unclean_features(opt_ml):
    frame = synthetic(30)
    frame.loc[3, "rm"] = np.nan
    frame.to_csv(opt_ml["training"] / "train.csv", index=False)
    result = run("train.py", env=opt_ml["env"], cwd=opt_ml["cwd"])
    assert result.returncode == 1
    assert "'rm'" in (opt_ml["output"] / "failure").read_text()


# --- evaluate.py -------------------------------------------------------------------------


@pytest.fixture(scope="session")  # per worker, like _runner
def model_dir(tmp_path_factory) -> Path:
    """A processing input directory holding a model.tar.gz that train.py produced (read-only)."""
    root = tmp_path_factory.mktemp("trained")
    (root / "training").mkdir()
    (root / "model").mkdir()
    synthetic(120, seed=3).to_csv(root / "training" / "train.csv", index=False)
    env = {
        "SM_MODEL_DIR": str(root / "model"),
        "SM_CHANNEL_TRAINING": str(root / "training"),
        "SM_OUTPUT_DIR": str(root / "output"),
    }
    result = run("train.py", "--n_estimators", "25", env=env, cwd=root)
    assert result.returncode == 0, result.stderr
    return pack_model(root / "model", root / "processing" / "model")


def test_evaluate_scores_test_set(model_dir, tmp_path):
    test_dir = tmp_path / "processing" / "test"
    test_dir.mkdir(parents=True)
    # Columns in another order: evaluate must use the training order.
    synthetic(30, seed=4)[["medv", "lstat", "chas", "rm", "crim"]].to_csv(test_dir / "test.csv", index=False)
    output_dir = tmp_path / "processing" / "evaluation"
    args = ["--model-dir", str(model_dir), "--test-dir", str(test_dir), "--output-dir", str(output_dir)]
    result = run("evaluate.py", *args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr

    report = strict_json(output_dir / "evaluation.json")
    assert set(report) == {"regression_metrics", "feature_importances", "rows", "model_size_bytes", "model_load_seconds"}
    with tarfile.open(model_dir / "model.tar.gz") as archive:
        assert report["model_size_bytes"] == archive.getmember("model.joblib").size > 0
    assert isinstance(report["model_load_seconds"], float) and report["model_load_seconds"] > 0
    assert f"Model size: {report['model_size_bytes']} bytes" in result.stdout
    metrics = {k: v["value"] for k, v in report["regression_metrics"].items()}
    assert set(metrics) == {"mse", "rmse", "mae", "r2"}
    assert metrics["rmse"] == pytest.approx(math.sqrt(metrics["mse"]))
    assert metrics["r2"] > 0.6
    assert report["rows"] == 30
    importances = report["feature_importances"]
    assert list(importances) == ["crim", "rm", "chas", "lstat"]
    assert sum(importances.values()) == pytest.approx(1.0)
    assert max(importances, key=importances.get) in {"rm", "lstat"}


def test_evaluate_one_row_writes_null_r2(model_dir, tmp_path):
    synthetic(1, seed=5).to_csv(tmp_path / "test.csv", index=False)
    args = ["--model-dir", str(model_dir), "--test-dir", str(tmp_path), "--output-dir", str(tmp_path / "out")]
    result = run("evaluate.py", *args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    report = strict_json(tmp_path / "out" / "evaluation.json")
    assert report["rows"] == 1 and report["regression_metrics"]["r2"]["value"] is None


def test_evaluate_missing_model(tmp_path):
    synthetic(5).to_csv(tmp_path / "test.csv", index=False)
    args = ["--model-dir", str(tmp_path / "model"), "--test-dir", str(tmp_path), "--output-dir", str(tmp_path / "out")]
    result = run("evaluate.py", *args, cwd=tmp_path)
    assert result.returncode == 1
    assert str(tmp_path / "model" / "model.tar.gz") in result.stderr
    assert not (tmp_path / "out").exists()


def test_evaluate_missing_test_file(model_dir, tmp_path):
    args = ["--model-dir", str(model_dir), "--test-dir", str(tmp_path / "test"), "--output-dir", str(tmp_path / "out")]
    result = run("evaluate.py", *args, cwd=tmp_path)
    assert result.returncode == 1
    assert str(tmp_path / "test" / "test.csv") in result.stderr


def _evaluate_with_validation(model_dir: Path, root: Path, validation: pd.DataFrame | None):
    """evaluate.py on 30 test rows with a --validation-dir holding ``validation`` (no file if None)."""
    (root / "test").mkdir(parents=True)
    (root / "validation").mkdir()
    synthetic(30, seed=4).to_csv(root / "test" / "test.csv", index=False)
    if validation is not None:
        validation.to_csv(root / "validation" / "validation.csv", index=False)
    args = ["--model-dir", str(model_dir), "--test-dir", str(root / "test"),
            "--validation-dir", str(root / "validation"), "--output-dir", str(root / "evaluation")]  # fmt: skip
    return run("evaluate.py", *args, cwd=root)


def test_evaluate_writes_the_validation_predictions_beside_the_report(model_dir, tmp_path):
    validation = synthetic(17, seed=6)[["medv", "lstat", "chas", "rm", "crim"]]  # another column order
    result = _evaluate_with_validation(model_dir, tmp_path, validation)
    assert result.returncode == 0, result.stderr
    predictions = pd.read_csv(tmp_path / "evaluation" / "predictions.csv")
    assert list(predictions.columns) == ["prediction", "medv"]
    assert predictions["medv"].tolist() == pytest.approx(validation["medv"].tolist())
    with tarfile.open(model_dir / "model.tar.gz") as archive:
        archive.extractall(tmp_path / "model", filter="data")
    features = json.loads((tmp_path / "model" / "features.json").read_text())
    expected = joblib.load(tmp_path / "model" / "model.joblib").predict(validation[features])
    assert predictions["prediction"].tolist() == pytest.approx(expected.tolist())  # the model's, in row order
    assert strict_json(tmp_path / "evaluation" / "evaluation.json")["rows"] == 30  # still scored on test.csv
    assert f"Wrote 17 validation predictions to {tmp_path / 'evaluation' / 'predictions.csv'}" in result.stdout


def test_evaluate_without_validation_dir_writes_no_predictions(model_dir, tmp_path):
    synthetic(10, seed=4).to_csv(tmp_path / "test.csv", index=False)
    args = ["--model-dir", str(model_dir), "--test-dir", str(tmp_path), "--output-dir", str(tmp_path / "out")]
    assert run("evaluate.py", *args, cwd=tmp_path).returncode == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["evaluation.json"]


def test_evaluate_empty_or_missing_validation(model_dir, tmp_path):
    empty = _evaluate_with_validation(model_dir, tmp_path / "empty", synthetic(3).iloc[:0])
    assert empty.returncode == 0, empty.stderr
    assert "warning: validation.csv has no rows" in empty.stderr
    assert pd.read_csv(tmp_path / "empty" / "evaluation" / "predictions.csv").empty

    missing = _evaluate_with_validation(model_dir, tmp_path / "missing", None)
    assert missing.returncode == 1
    assert f"{tmp_path / 'missing' / 'validation' / 'validation.csv'}: validation data not found" in missing.stderr


def malicious_archive(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    with tarfile.open(directory / "model.tar.gz", "w:gz") as tar:
        data = b"not a model"
        member = tarfile.TarInfo("../escaped.txt")
        member.size = len(data)
        tar.addfile(member, io.BytesIO(data))
    return directory


def test_evaluate_refuses_unsafe_archive(tmp_path):
    model_dir = malicious_archive(tmp_path / "deep" / "model")
    synthetic(5).to_csv(tmp_path / "test.csv", index=False)
    args = ["--model-dir", str(model_dir), "--test-dir", str(tmp_path), "--output-dir", str(tmp_path / "out")]
    result = run("evaluate.py", *args, cwd=tmp_path)
    assert result.returncode == 1
    assert "model.tar.gz" in result.stderr
    assert not list(tmp_path.rglob("escaped.txt"))


@pytest.mark.parametrize("member", ["../escaped.txt", "/tmp/absolute.txt", "link"])
def test_extract_without_data_filter(tmp_path, monkeypatch, member):
    """The fallback for Pythons without tarfile's data filter (3.9 before 3.9.17)."""
    evaluate = load_script("evaluate.py", monkeypatch)
    archive = tmp_path / "model.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        info = tarfile.TarInfo(member)
        if member == "link":
            info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
            tar.addfile(info)
        else:
            info.size = 1
            tar.addfile(info, io.BytesIO(b"x"))
    monkeypatch.delattr(tarfile, "data_filter", raising=False)
    destination = tmp_path / "extract"
    destination.mkdir()
    with pytest.raises(evaluate.EvaluationError, match="unsafe member"):
        evaluate.extract(str(archive), str(destination))
    assert not list(destination.iterdir())

    # A SageMaker-shaped archive extracts fine through the same fallback.
    good = tmp_path / "good"
    (good / "src").mkdir(parents=True)
    (good / "src" / "model.joblib").write_bytes(b"m")
    (good / "src" / "code").mkdir()
    (good / "src" / "code" / "inference.py").write_text("pass\n")
    with tarfile.open(good / "model.tar.gz", "w:gz") as tar:
        tar.add(good / "src", arcname=".")
    evaluate.extract(str(good / "model.tar.gz"), str(good / "out"))
    assert (good / "out" / "model.joblib").read_bytes() == b"m"
    assert (good / "out" / "code" / "inference.py").exists()


# --- the whole chain on the real Boston data ---------------------------------------------


def test_boston_preprocess_train_evaluate(boston_csv, opt_ml, tmp_path):
    boston = pd.read_csv(boston_csv).sample(frac=1.0, random_state=0)
    raw = tmp_path / "processing" / "input"
    raw.mkdir(parents=True)
    boston.iloc[:400].to_csv(raw / "train.csv", index=False)
    boston.iloc[400:].to_csv(raw / "validation.csv", index=False)

    processed = tmp_path / "processing"
    # A fresh interpreter for each script here (the other tests fork a runner that imported pandas).
    result = run("preprocess.py", "--input-dir", str(raw), "--output-dir", str(processed), cwd=tmp_path, fresh=True)
    assert result.returncode == 0, result.stderr
    train = pd.read_csv(processed / "train" / "train.csv")
    assert len(train) == 400 and train["chas"].dtype.kind in "if"  # the quoted "0"/"1" became numbers
    assert list(train.columns) == list(boston.columns)

    env = {
        **opt_ml["env"],
        "SM_CHANNEL_TRAINING": str(processed / "train"),
        "SM_CHANNEL_VALIDATION": str(processed / "validation"),
    }
    result = run("train.py", env=env, cwd=tmp_path, fresh=True)
    assert result.returncode == 0, result.stderr
    evaluation = strict_json(opt_ml["model"] / "evaluation.json")
    assert evaluation["evaluated_on"] == "validation"
    assert evaluation["rows"] == {"train": 400, "evaluation": 53}
    metrics = {k: v["value"] for k, v in evaluation["regression_metrics"].items()}
    assert metrics["r2"] > 0.6
    assert metrics["rmse"] == pytest.approx(math.sqrt(metrics["mse"]))

    model_dir = pack_model(opt_ml["model"], tmp_path / "processing" / "model")
    output_dir = tmp_path / "processing" / "evaluation"
    args = ["--model-dir", str(model_dir), "--test-dir", str(processed / "test"), "--output-dir", str(output_dir)]
    result = run("evaluate.py", *args, cwd=tmp_path, fresh=True)
    assert result.returncode == 0, result.stderr
    report = strict_json(output_dir / "evaluation.json")
    assert report["rows"] == 53
    assert report["regression_metrics"]["r2"]["value"] > 0.6
    assert set(report["feature_importances"]) == set(boston.columns) - {"medv"}
    # The two best-known predictors of Boston house prices lead.
    top_two = sorted(report["feature_importances"], key=report["feature_importances"].get)[-2:]
    assert set(top_two) == {"rm", "lstat"}


# --- the recipe's own train.py -----------------------------------------------------------


def extract_recipe_train(markdown: str) -> str:
    """Step 4's heredoc, without the numbered list's three-space indentation."""
    lines = markdown.split("\n")
    start = lines.index("   cat > train.py << 'EOF'") + 1
    end = lines.index("   EOF", start)
    body = []
    for line in lines[start:end]:
        assert line.startswith("   "), f"unexpected indentation in the recipe: {line!r}"
        body.append(line[3:])
    return "\n".join(body) + "\n"


def test_recipe_train_fixture_is_byte_for_byte():
    if not SEED_RECIPE.exists():
        pytest.skip(f"{SEED_RECIPE} is not present")
    expected = extract_recipe_train(SEED_RECIPE.read_text(encoding="utf-8"))
    assert RECIPE_TRAIN.read_bytes() == expected.encode("utf-8")


def test_recipe_train_runs_under_the_container_contract(opt_ml):
    synthetic(100).to_csv(opt_ml["training"] / "train.csv", index=False)
    result = run(RECIPE_TRAIN, env=opt_ml["env"], cwd=opt_ml["cwd"], fresh=True)
    assert result.returncode == 0, result.stderr
    assert "Model MSE:" in result.stdout
    assert (opt_ml["model"] / "model.joblib").is_file()
    evaluation = json.loads((opt_ml["model"] / "evaluation.json").read_text())
    assert set(evaluation["regression_metrics"]) == {"mse", "r2"}
    assert evaluation["regression_metrics"]["r2"]["value"] > 0.6
