"""Evaluate step (SageMaker Processing job): score the trained model on the held-out test set.

Reads model.tar.gz (the training job's model directory, packed by SageMaker) from
--model-dir and test.csv from --test-dir; writes evaluation.json to --output-dir:
{"regression_metrics": {"mse"|"rmse"|"mae"|"r2": {"value": ...}},
 "feature_importances": {feature: importance}, "rows": n,
 "model_size_bytes": size of model.joblib, "model_load_seconds": time joblib.load took}.
The pipeline reads it through a PropertyFile for its quality condition (MSE against
MseThreshold, model_size_bytes against MaxModelBytes), so it is strict JSON: a metric that
is undefined (R² below two rows) is null, never NaN.

With --validation-dir (the pipeline gives it), also writes predictions.csv beside it: the
model's predictions on validation.csv, columns "prediction" and the target (header row,
validation order; the target column is "label" if the target is itself named "prediction"). The registered_model asset computes the model's prediction baseline
for drift monitoring from it.

Runs in the SageMaker scikit-learn 1.2-1 container (Python 3.9): standard library, numpy,
pandas, scikit-learn and joblib only. Every path is an argument whose default is the
container path, so a local runner can point it elsewhere.
"""

import argparse
import json
import math
import os
import sys
import tarfile
import tempfile
import time

import joblib
import numpy as np
import pandas as pd
from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score


class EvaluationError(Exception):
    """Missing or unusable input: reported on stderr, exit code 1."""


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="Score model.tar.gz on test.csv.")
    parser.add_argument("--model-dir", default="/opt/ml/processing/model")
    parser.add_argument("--test-dir", default="/opt/ml/processing/test")
    parser.add_argument("--output-dir", default="/opt/ml/processing/evaluation")
    parser.add_argument(
        "--validation-dir", default=None, help="folder with validation.csv; writes predictions.csv when given"
    )
    parser.add_argument("--target", default="medv")
    return parser.parse_args(argv)


def extract(archive, destination):
    """Extract a tar archive without letting a member escape `destination`."""
    try:
        with tarfile.open(archive, "r:*") as tar:
            if hasattr(tarfile, "data_filter"):
                tar.extractall(destination, filter="data")
                return
            # Python 3.9 before 3.9.17 has no extraction filters: accept only regular files
            # and directories whose paths stay inside the destination (no links, no devices).
            root = os.path.realpath(destination)
            for member in tar.getmembers():
                path = os.path.realpath(os.path.join(root, member.name))
                if not (member.isfile() or member.isdir()) or os.path.commonpath([root, path]) != root:
                    raise EvaluationError(f"{archive}: refusing unsafe member {member.name!r}")
            tar.extractall(destination)
    except tarfile.TarError as exc:
        raise EvaluationError(f"{archive}: cannot extract ({exc})") from exc


def load_model(model_dir, workdir):
    archive = os.path.join(model_dir, "model.tar.gz")
    if not os.path.isfile(archive):
        raise EvaluationError(f"{archive}: model archive not found")
    extract(archive, workdir)
    model_path = os.path.join(workdir, "model.joblib")
    if not os.path.isfile(model_path):
        raise EvaluationError(f"{archive} holds no model.joblib")
    size = os.path.getsize(model_path)  # what an endpoint holds in memory, per worker
    start = time.perf_counter()
    model = joblib.load(model_path)
    load_seconds = time.perf_counter() - start
    # Feature order: features.json from train.py, else what scikit-learn recorded at fit time.
    features_path = os.path.join(workdir, "features.json")
    if os.path.isfile(features_path):
        with open(features_path) as f:
            features = json.load(f)
    else:
        features = [str(c) for c in getattr(model, "feature_names_in_", [])]
    return model, features, {"model_size_bytes": int(size), "model_load_seconds": round(load_seconds, 6)}


def finite_numbers(column):
    return pd.api.types.is_numeric_dtype(column) and bool(np.isfinite(column.to_numpy(dtype=float)).all())


def load_test(test_dir, target, features):
    return load_split(os.path.join(test_dir, "test.csv"), "test", target, features)


def load_split(path, split, target, features, allow_empty=False):
    if not os.path.isfile(path):
        raise EvaluationError(f"{path}: {split} data not found")
    frame = pd.read_csv(path)
    if target not in frame.columns:
        raise EvaluationError(f"{path}: target column '{target}' is absent")
    features = features or [c for c in frame.columns if c != target]
    missing = [c for c in features if c not in frame.columns]
    if missing:
        raise EvaluationError(f"{path}: feature columns the model was trained on are missing: {missing}")
    if frame.empty:
        if not allow_empty:
            raise EvaluationError(f"{path}: no rows to evaluate on")
        return frame[features].astype(float), frame[target].astype(float)
    frame = frame[features + [target]]
    bad = [str(c) for c in frame.columns if not finite_numbers(frame[c])]
    if bad:
        raise EvaluationError(f"{path}: non-numeric or missing values in {bad}")
    return frame[features], frame[target]


def regression_metrics(y_true, y_pred):
    mse = float(mean_squared_error(y_true, y_pred))
    values = {
        "mse": mse,
        "rmse": math.sqrt(mse),
        "mae": float(mean_absolute_error(y_true, y_pred)),
        "r2": float(r2_score(y_true, y_pred)) if len(y_true) >= 2 else None,  # undefined below 2 rows
    }
    return {k: {"value": finite_or_none(v)} for k, v in values.items()}


def finite_or_none(value):
    """JSON has no NaN or Infinity: anything not finite is written as null."""
    return float(value) if value is not None and math.isfinite(value) else None


def write_predictions(model, X, y, target, path):
    """The model's predictions beside the truth, for the prediction baseline (see the module docstring)."""
    predicted = model.predict(X) if len(X) else np.empty(0)
    truth = target if target != "prediction" else "label"  # the two columns need two names
    frame = pd.DataFrame({"prediction": np.asarray(predicted, dtype=float).ravel(), truth: y.to_numpy()})
    frame.to_csv(path, index=False)
    if len(X):
        print(f"Wrote {len(X)} validation predictions to {path}")
    else:
        print(f"warning: validation.csv has no rows; {path} holds no predictions", file=sys.stderr)


def main(argv=None):
    args = parse_args(argv)
    with tempfile.TemporaryDirectory() as workdir:
        model, features, footprint = load_model(args.model_dir, workdir)
    X, y = load_test(args.test_dir, args.target, features)
    validation = None
    if args.validation_dir is not None:
        path = os.path.join(args.validation_dir, "validation.csv")
        validation = load_split(path, "validation", args.target, list(X.columns), allow_empty=True)

    report = {
        "regression_metrics": regression_metrics(y, model.predict(X)),
        "feature_importances": {
            str(name): finite_or_none(value)
            for name, value in zip(X.columns, getattr(model, "feature_importances_", []))
        },
        "rows": int(len(X)),
        **footprint,
    }
    os.makedirs(args.output_dir, exist_ok=True)
    with open(os.path.join(args.output_dir, "evaluation.json"), "w") as f:
        json.dump(report, f, indent=2, allow_nan=False)
    if validation is not None:
        write_predictions(model, *validation, args.target, os.path.join(args.output_dir, "predictions.csv"))

    print(f"Evaluated on {len(X)} test rows")
    print(f"Model size: {footprint['model_size_bytes']} bytes, loaded in {footprint['model_load_seconds']:.3f} s")
    for name, metric in report["regression_metrics"].items():
        print(f"Test {name.upper()}: {metric['value']}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except EvaluationError as exc:
        print(f"evaluate failed: {exc}", file=sys.stderr)
        sys.exit(1)
