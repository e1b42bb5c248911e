"""Training step: a random forest on train.csv (the recipe's train.py, with its defects fixed).

Same contract as the recipe's script: --model-dir (SM_MODEL_DIR) and --training
(SM_CHANNEL_TRAINING, which holds train.csv, or CSV part files with the same columns when the
preprocessing was sharded: read in name order as one table); model.joblib and evaluation.json are written
to the model directory, which SageMaker packs into model.tar.gz. Beyond the recipe:
- hyperparameters target, n_estimators, max_depth, min_samples_leaf, max_samples, random_state
  (SageMaker passes each one as a "--name value" string pair);
- a model whose size is bounded as the data grows: min_samples_leaf and max_samples default to
  "auto" (see bounded_forest_params); a value set explicitly is used exactly as given;
- all CPUs (SM_NUM_CPUS);
- metrics on the validation channel when there is one (else the recipe's 80/20 split);
- evaluation.json is strict JSON: R² is null below two evaluation rows, never NaN;
- features.json lists the feature names in training order, for inference;
- a failure writes its reason to $SM_OUTPUT_DIR/failure, SageMaker's FailureReason.

Runs in the SageMaker scikit-learn 1.2-1 container (Python 3.9, scikit-learn 1.2).
"""

import argparse
import json
import math
import os
import sys
import traceback

import joblib
import numpy as np
import pandas as pd
from sklearn.ensemble import RandomForestRegressor
from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score
from sklearn.model_selection import train_test_split

AUTO = "auto"
# The size bounds behind "auto" (chosen with bench/model_size.py; README "Training defaults"):
# each tree is grown on at most AUTO_TREE_ROWS bootstrap rows (bounds fit time and size), and its
# leaves hold at least 1/AUTO_LEAVES of them (bounds leaves per tree, hence model bytes).
AUTO_TREE_ROWS = 50_000
AUTO_LEAVES = 10_000


class TrainingError(Exception):
    """A failure with a message meant for the user (written to the failure file)."""


def write_failure(message):
    """SageMaker shows the content of /opt/ml/output/failure as the job's FailureReason."""
    output_dir = os.environ.get("SM_OUTPUT_DIR")
    if not output_dir:
        output_dir = "/opt/ml/output"
        if not os.path.isdir(output_dir):  # not in a container: do not litter the host's /opt
            return
    try:
        os.makedirs(output_dir, exist_ok=True)
        with open(os.path.join(output_dir, "failure"), "w") as f:
            f.write(message)
    except OSError as exc:
        print(f"could not write the failure file: {exc}", file=sys.stderr)


class ArgumentParser(argparse.ArgumentParser):
    def error(self, message):
        # A bad hyperparameter should be the job's FailureReason, not only a log line.
        write_failure(f"invalid hyperparameter or argument: {message}")
        super().error(message)


def optional_int(value):
    """max_depth=None reaches the script as the string "None" (or "null", or empty)."""
    if value.strip().lower() in ("", "none", "null"):
        return None
    return int(value)


def auto_or_int(value):
    """min_samples_leaf: "auto" (scaled to the data, see bounded_forest_params) or a whole number >= 1."""
    if value.strip().lower() == AUTO:
        return AUTO
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be 'auto' or a whole number >= 1, got {value!r}")
    return number


def max_samples_value(value):
    """max_samples: "auto", "None" (every row), a row count ("30") or a share of the rows ("0.5", "1.0": all)."""
    text = value.strip().lower()
    if text == AUTO:
        return AUTO
    if text in ("", "none", "null"):
        return None
    number = float(text)
    if number.is_integer() and number >= 1 and "." not in text:
        return int(number)
    if not 0.0 < number <= 1.0:
        raise argparse.ArgumentTypeError(
            f"must be 'auto', 'None', a row count >= 1 or a share of the rows above 0 and at most 1.0, got {value!r}"
        )
    return number


def parse_args(argv=None):
    parser = ArgumentParser(allow_abbrev=False)  # no prefix matching: a typo must fail
    parser.add_argument("--model-dir", default=os.environ.get("SM_MODEL_DIR"))
    parser.add_argument("--training", default=os.environ.get("SM_CHANNEL_TRAINING"))
    parser.add_argument("--validation", default=os.environ.get("SM_CHANNEL_VALIDATION"))
    parser.add_argument("--target", default="medv")
    parser.add_argument("--n_estimators", type=int, default=100)
    parser.add_argument("--max_depth", type=optional_int, default=None)
    parser.add_argument("--min_samples_leaf", type=auto_or_int, default=AUTO)
    parser.add_argument("--max_samples", type=max_samples_value, default=AUTO)
    parser.add_argument("--random_state", type=int, default=42)
    args = parser.parse_args(argv)
    if not args.model_dir:
        raise TrainingError("no model directory: pass --model-dir or set SM_MODEL_DIR")
    if not args.training:
        raise TrainingError("no training data: pass --training or set SM_CHANNEL_TRAINING")
    return args


def finite_numbers(column):
    return pd.api.types.is_numeric_dtype(column) and bool(np.isfinite(column.to_numpy(dtype=float)).all())


def channel_files(directory):
    """train.csv when the channel holds it (the recipe's layout), else every CSV under it in name order."""
    single = os.path.join(directory, "train.csv")
    if os.path.isfile(single) or not os.path.isdir(directory):
        return [single]
    found = [
        os.path.join(root, name) for root, _dirs, files in os.walk(directory) for name in files if name.endswith(".csv")
    ]
    return sorted(found, key=lambda path: os.path.relpath(path, directory)) or [single]


def read_csvs(paths):
    """The CSV files as one table, in the first file's column order; other columns are an error."""
    for path in paths:
        if not os.path.isfile(path):
            raise TrainingError(f"{path} not found")
    frames = [pd.read_csv(paths[0])]
    for path in paths[1:]:
        frame = pd.read_csv(path)
        if sorted(map(str, frame.columns)) != sorted(map(str, frames[0].columns)):
            raise TrainingError(
                f"{path}: columns {list(frame.columns)} differ from {paths[0]}'s {list(frames[0].columns)}; "
                "every CSV of the training channel needs the same columns"
            )
        frames.append(frame[list(frames[0].columns)])
    return frames[0] if len(frames) == 1 else pd.concat(frames, ignore_index=True)


def load_xy(path, target, features=None):
    """Read a CSV (or the CSV parts of a channel, `path` a list) and split it into features (in
    `features` order if given) and target."""
    paths = path if isinstance(path, list) else [path]
    path = paths[0] if len(paths) == 1 else f"{os.path.dirname(paths[0])} ({len(paths)} CSV files)"
    frame = read_csvs(paths)
    if target not in frame.columns:
        raise TrainingError(
            f"target column '{target}' not found in {path} (columns: {', '.join(map(str, frame.columns))}); "
            "set the 'target' hyperparameter"
        )
    X = frame.drop(columns=[target])
    if features is not None:
        missing = [c for c in features if c not in X.columns]
        if missing:
            raise TrainingError(f"{path} lacks feature columns of train.csv: {missing}")
        X = X[features]
    # scikit-learn 1.2 rejects text and NaN with a bare numpy error; name the columns instead.
    bad = [str(c) for c in list(X.columns) + [target] if not finite_numbers(frame[c])]
    if bad:
        raise TrainingError(f"{path}: non-numeric or missing values in {bad} (clean the data with preprocess.py)")
    return X, frame[target]


def regression_metrics(y_true, y_pred):
    mse = float(mean_squared_error(y_true, y_pred))
    values = {
        "mse": mse,
        "rmse": math.sqrt(mse),
        "mae": float(mean_absolute_error(y_true, y_pred)),
        # R² is undefined below two rows (scikit-learn warns and returns NaN).
        "r2": float(r2_score(y_true, y_pred)) if len(y_true) >= 2 else None,
    }
    # JSON has no NaN or Infinity: anything not finite is written as null.
    return {k: {"value": v if v is not None and math.isfinite(v) else None} for k, v in values.items()}


def bounded_forest_params(rows, min_samples_leaf=AUTO, max_samples=AUTO, tree_rows=AUTO_TREE_ROWS, leaves=AUTO_LEAVES):
    """min_samples_leaf and max_samples for a forest on `rows` rows; "auto" keeps the model bounded.

    A fully grown tree has about one leaf per distinct bootstrap row, so a forest's size grows
    linearly with the data (6.9 GB at 800,000 rows). "auto" grows each tree on at most
    AUTO_TREE_ROWS rows and asks each leaf to hold 1/AUTO_LEAVES of them: up to AUTO_LEAVES rows
    (the Boston data) both are scikit-learn's defaults and the forest is exactly the unbounded one.
    tree_rows and leaves are the two bounds (bench/model_size.py compares other values).
    """
    if max_samples == AUTO:
        max_samples = tree_rows if rows > tree_rows else None
    if min_samples_leaf == AUTO:
        if max_samples is None:
            drawn = rows
        elif isinstance(max_samples, int):
            drawn = max_samples
        else:
            drawn = max(1, round(max_samples * rows))
        min_samples_leaf = max(1, math.ceil(drawn / leaves))
    return {"min_samples_leaf": min_samples_leaf, "max_samples": max_samples}


def cpu_count():
    try:
        return int(os.environ.get("SM_NUM_CPUS", ""))
    except ValueError:
        return -1  # every core of the machine


def main(argv=None):
    args = parse_args(argv)
    train_files = channel_files(args.training)
    X, y = load_xy(train_files, args.target)
    if len(X) == 0:
        raise TrainingError(f"{train_files[0] if len(train_files) == 1 else args.training} has no rows")

    X_eval = None
    if args.validation and os.path.isdir(args.validation):
        X_eval, y_eval = load_xy(os.path.join(args.validation, "validation.csv"), args.target, list(X.columns))
        if len(X_eval) == 0:
            print("The validation channel has no rows: falling back to an 80/20 split of train.csv")
            X_eval = None
    if X_eval is not None:
        X_train, y_train, evaluated_on = X, y, "validation"
    else:
        if len(X) < 2:
            raise TrainingError("train.csv needs at least 2 rows to hold out an evaluation split")
        # The recipe's split, kept so that results stay comparable with it.
        X_train, X_eval, y_train, y_eval = train_test_split(X, y, test_size=0.2, random_state=42)
        evaluated_on = "train-split"

    params = bounded_forest_params(len(X_train), args.min_samples_leaf, args.max_samples)
    print(
        f"Forest on {len(X_train)} rows: min_samples_leaf={params['min_samples_leaf']}, max_samples={params['max_samples']}"
    )
    model = RandomForestRegressor(
        n_estimators=args.n_estimators,
        max_depth=args.max_depth,
        random_state=args.random_state,
        n_jobs=cpu_count(),
        **params,
    )
    model.fit(X_train, y_train)
    metrics = regression_metrics(y_eval, model.predict(X_eval))

    print(f"Evaluated on {evaluated_on}: {len(X_train)} training rows, {len(X_eval)} evaluation rows")
    for name in ("mse", "rmse", "mae", "r2"):
        print(f"Model {name.upper()}: {metrics[name]['value']}")

    os.makedirs(args.model_dir, exist_ok=True)
    joblib.dump(model, os.path.join(args.model_dir, "model.joblib"))
    with open(os.path.join(args.model_dir, "features.json"), "w") as f:
        json.dump([str(c) for c in X.columns], f)
    evaluation = {
        "regression_metrics": metrics,
        "rows": {"train": int(len(X_train)), "evaluation": int(len(X_eval))},
        "evaluated_on": evaluated_on,
    }
    with open(os.path.join(args.model_dir, "evaluation.json"), "w") as f:
        json.dump(evaluation, f, indent=2, allow_nan=False)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except TrainingError as exc:
        write_failure(str(exc))
        print(f"Training failed: {exc}", file=sys.stderr)
        sys.exit(1)
    except Exception as exc:
        write_failure(f"{type(exc).__name__}: {exc}")
        traceback.print_exc()
        sys.exit(1)
