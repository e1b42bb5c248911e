"""Preprocess step (SageMaker Processing job).

Reads train.csv and validation.csv (header row; feature columns, then the target) from
--input-dir, cleans them and writes three splits under --output-dir:
train/train.csv, validation/validation.csv and test/test.csv (a seeded share of the
validation rows, held out for the Evaluate step).

Cleaning: every value is coerced to a number (CSV writers quote some numbers, e.g. "0");
rows whose target is missing or not finite are dropped; missing feature values are
imputed with the medians of train.csv, so nothing learnt from validation or test data
leaks into training. Column order is kept.

Runs in the SageMaker scikit-learn 1.2-1 container (Python 3.9): standard library,
numpy and pandas only. Every path is an argument whose default is the container path,
so a local runner can point it elsewhere.
"""

import argparse
import os
import sys

import numpy as np
import pandas as pd


class InputError(Exception):
    """Bad or missing input: reported on stderr, exit code 1."""


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="Clean the dataset and split off a test set.")
    parser.add_argument("--input-dir", default="/opt/ml/processing/input")
    parser.add_argument("--output-dir", default="/opt/ml/processing")
    parser.add_argument("--target", default="medv")
    parser.add_argument(
        "--test-fraction", type=float, default=0.5, help="share of validation.csv rows that become test.csv"
    )
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args(argv)
    if not 0.0 <= args.test_fraction <= 1.0:
        parser.error("--test-fraction must be between 0 and 1")
    return args


def read_table(path, target):
    if not os.path.isfile(path):
        raise InputError(f"{path}: file not found")
    try:
        frame = pd.read_csv(path)
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: not a readable CSV file ({exc})") from exc
    if target not in frame.columns:
        raise InputError(f"{path}: target column '{target}' is absent (columns: {', '.join(map(str, frame.columns))})")
    return frame


def to_numbers(frame, name, target):
    """Coerce every column to numbers; text and +-inf become NaN (scikit-learn accepts neither)."""
    numeric = frame.apply(pd.to_numeric, errors="coerce").replace([np.inf, -np.inf], np.nan)
    for column, count in (numeric.isna() & frame.notna()).sum().items():
        if count:
            print(f"{name}: {count} value(s) in '{column}' are not finite numbers, treated as missing")
    bad_target = numeric[target].isna()
    if bad_target.any():
        print(
            f"{name}: dropped {int(bad_target.sum())} row(s) whose target '{target}' is missing or not a finite number"
        )
    return numeric.loc[~bad_target]


def split_test(frame, fraction, seed):
    """Move a seeded random share of the rows to the test split; both keep their row order."""
    n_rows = len(frame)
    n_test = int(np.floor(n_rows * fraction + 0.5))
    if n_rows >= 2 and 0.0 < fraction < 1.0:
        n_test = min(max(n_test, 1), n_rows - 1)  # keep at least one row on each side
    is_test = np.zeros(n_rows, dtype=bool)
    is_test[np.random.RandomState(seed).permutation(n_rows)[:n_test]] = True
    return frame.loc[~is_test], frame.loc[is_test]


def write(frame, output_dir, split):
    directory = os.path.join(output_dir, split)
    os.makedirs(directory, exist_ok=True)
    frame.to_csv(os.path.join(directory, f"{split}.csv"), index=False)


def main(argv=None):
    args = parse_args(argv)
    train_path = os.path.join(args.input_dir, "train.csv")
    validation_path = os.path.join(args.input_dir, "validation.csv")
    train = read_table(train_path, args.target)
    validation = read_table(validation_path, args.target)

    columns = list(train.columns)
    missing = [c for c in columns if c not in validation.columns]
    extra = [c for c in validation.columns if c not in columns]
    if missing or extra:
        raise InputError(f"{validation_path}: columns differ from train.csv (missing: {missing}, unexpected: {extra})")
    validation = validation[columns]  # train.csv's column order

    train = to_numbers(train, "train.csv", args.target)
    validation = to_numbers(validation, "validation.csv", args.target)
    if train.empty:
        raise InputError(f"{train_path}: no rows left after dropping rows without a valid target")

    # Medians come from train.csv only: imputing with validation statistics would leak them.
    medians = train.drop(columns=[args.target]).median()
    unusable = [c for c, value in medians.items() if pd.isna(value)]
    if unusable:
        raise InputError(f"{train_path}: columns without any numeric value, cannot impute: {unusable}")
    for name, frame in (("train.csv", train), ("validation.csv", validation)):
        imputed = int(frame.isna().sum().sum())
        if imputed:
            print(f"{name}: imputed {imputed} missing feature value(s) with train medians")
    train = train.fillna(medians)
    validation = validation.fillna(medians)

    validation, test = split_test(validation, args.test_fraction, args.seed)
    for split, frame in (("train", train), ("validation", validation), ("test", test)):
        write(frame, args.output_dir, split)
        print(f"{split}: {len(frame)} rows, {len(columns) - 1} features -> {os.path.join(args.output_dir, split)}")
        if frame.empty:
            print(f"warning: the {split} split is empty", file=sys.stderr)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except InputError as exc:
        print(f"preprocess failed: {exc}", file=sys.stderr)
        sys.exit(1)
