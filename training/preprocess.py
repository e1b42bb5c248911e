"""Preprocess step (SageMaker Processing job).

Reads train.csv and validation.csv (header row; feature columns, then the target) from
--input-dir, cleans them and writes three splits under --output-dir:
train/train.csv, validation/validation.csv and test/test.csv (a seeded share of the
validation rows, held out for the Evaluate step). Either input may instead be a folder of CSV
part files with the same columns (train/part-00000.csv, ...), read in name order.

Cleaning: every value is coerced to a number (CSV writers quote some numbers, e.g. "0");
rows whose target is missing or not finite are dropped; missing feature values are
imputed with the medians of train.csv, so nothing learnt from validation or test data
leaks into training. Column order is kept.

Sharded preprocessing (the pipeline's processing_instance_count > 1) runs this script twice:
- --mode statistics (one instance, every train part): the train medians, computed exactly as
  above, written to <output-dir>/statistics/statistics.json;
- --mode transform (N instances, train parts ShardedByS3Key): each instance cleans the parts
  it was given with those global medians and writes each to train/<the part's name>, so no two
  instances write the same file into the step's shared output prefix; only the first host of
  --resource-config (SageMaker's /opt/ml/config/resourceconfig.json) cleans validation and
  splits off test, so they are written once.

Runs in the SageMaker scikit-learn 1.2-1 container (Python 3.9): standard library,
numpy and pandas only. Every path is an argument whose default is the container path,
so a local runner can point it elsewhere.
"""

import argparse
import json
import os
import sys

import numpy as np
import pandas as pd

MODES = ("all", "statistics", "transform")
STATISTICS_FILE = "statistics.json"


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
    parser.add_argument(
        "--mode", choices=MODES, default="all",
        help="all: the whole step on one instance; statistics/transform: the two passes of sharded preprocessing",
    )  # fmt: skip
    parser.add_argument("--statistics", default=None, help=f"transform: the {STATISTICS_FILE} of the statistics pass")
    parser.add_argument(
        "--resource-config", default="/opt/ml/config/resourceconfig.json",
        help="transform: SageMaker's host list; only its first host writes validation and test (absent: one host)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    if not 0.0 <= args.test_fraction <= 1.0:
        parser.error("--test-fraction must be between 0 and 1")
    if args.mode == "transform" and not args.statistics:
        parser.error(f"--mode transform needs --statistics (the {STATISTICS_FILE} of --mode statistics)")
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


def part_files(directory):
    """The CSV files under a folder (an S3 prefix as SageMaker copies it), in name order."""
    found = []
    for root, _dirs, files in os.walk(directory):
        found.extend(os.path.join(root, name) for name in files if name.endswith(".csv"))
    return sorted(found, key=lambda path: os.path.relpath(path, directory))


def split_files(input_dir, split):
    """<split>.csv in input_dir, else every CSV part under <split>/; a missing split names the file."""
    single = os.path.join(input_dir, f"{split}.csv")
    folder = os.path.join(input_dir, split)
    if os.path.isfile(single) or not os.path.isdir(folder):
        return [single]
    parts = part_files(folder)
    if not parts:
        raise InputError(f"{folder}: no CSV part files (and no {single})")
    return parts


def same_columns(frame, columns, path, reference):
    """The frame in `columns` order; different columns are an error naming both files."""
    missing = [c for c in columns if c not in frame.columns]
    extra = [c for c in frame.columns if c not in columns]
    if missing or extra:
        raise InputError(f"{path}: columns differ from {reference} (missing: {missing}, unexpected: {extra})")
    return frame[columns]


def read_split(paths, target):
    """The CSV files of one split as one frame (columns of the first file, rows in file order)."""
    frames = [read_table(paths[0], target)]
    columns = list(frames[0].columns)
    for path in paths[1:]:
        frames.append(same_columns(read_table(path, target), columns, path, paths[0]))
    return frames[0] if len(frames) == 1 else pd.concat(frames, ignore_index=True)


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


def train_medians(train, target, where):
    """The feature medians of the cleaned train rows (never validation's: that would leak it)."""
    if train.empty:
        raise InputError(f"{where}: no rows left after dropping rows without a valid target")
    medians = train.drop(columns=[target]).median()
    unusable = [c for c, value in medians.items() if pd.isna(value)]
    if unusable:
        raise InputError(f"{where}: columns without any numeric value, cannot impute: {unusable}")
    return medians


def impute(frame, name, medians):
    imputed = int(frame.isna().sum().sum())
    if imputed:
        print(f"{name}: imputed {imputed} missing feature value(s) with train medians")
    return frame.fillna(medians)


def split_test(frame, fraction, seed):
    """Move a seeded random share of the rows to the test split; both keep their row order."""
    n_rows = len(frame)
    n_test = int(np.floor(n_rows * fraction + 0.5))
    if n_rows >= 2 and 0.0 < fraction < 1.0:
        n_test = min(max(n_test, 1), n_rows - 1)  # keep at least one row on each side
    is_test = np.zeros(n_rows, dtype=bool)
    is_test[np.random.RandomState(seed).permutation(n_rows)[:n_test]] = True
    return frame.loc[~is_test], frame.loc[is_test]


def write(frame, output_dir, split, name=None):
    directory = os.path.join(output_dir, split)
    path = os.path.join(directory, name or f"{split}.csv")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    frame.to_csv(path, index=False)
    return path


def report(frame, split, columns, where):
    print(f"{split}: {len(frame)} rows, {len(columns) - 1} features -> {where}")
    if frame.empty:
        print(f"warning: the {split} split is empty", file=sys.stderr)


def read_validation(args, columns, reference):
    """validation.csv (or its parts) in the train columns' order; other columns are an error."""
    paths = split_files(args.input_dir, "validation")
    return same_columns(read_split(paths, args.target), columns, paths[0], reference)


def write_validation_and_test(args, validation, columns):
    """The cleaned validation rows, split once into validation and test."""
    validation, test = split_test(validation, args.test_fraction, args.seed)
    for split, frame in (("validation", validation), ("test", test)):
        write(frame, args.output_dir, split)
        report(frame, split, columns, os.path.join(args.output_dir, split))


def run_all(args):
    """The whole step on one instance (the recipe's Preprocess): both inputs are read and checked
    before anything is written."""
    train_paths = split_files(args.input_dir, "train")
    train = read_split(train_paths, args.target)
    columns = list(train.columns)
    where = train_paths[0] if len(train_paths) == 1 else os.path.join(args.input_dir, "train")
    validation = read_validation(args, columns, "train.csv")

    train = to_numbers(train, "train.csv", args.target)
    validation = to_numbers(validation, "validation.csv", args.target)
    medians = train_medians(train, args.target, where)
    train = impute(train, "train.csv", medians)
    validation = impute(validation, "validation.csv", medians)

    write(train, args.output_dir, "train")
    report(train, "train", columns, os.path.join(args.output_dir, "train"))
    write_validation_and_test(args, validation, columns)


def run_statistics(args):
    """Pass 1 of sharded preprocessing: the exact medians of every train part, as run_all computes them."""
    train_paths = split_files(args.input_dir, "train")
    train = to_numbers(read_split(train_paths, args.target), "train", args.target)
    medians = train_medians(train, args.target, os.path.join(args.input_dir, "train"))
    statistics = {
        "target": args.target,
        "columns": [str(c) for c in train.columns],
        "medians": {str(c): float(v) for c, v in medians.items()},
        "rows": int(len(train)),
        "parts": [os.path.relpath(p, args.input_dir) for p in train_paths],
    }
    path = os.path.join(args.output_dir, "statistics", STATISTICS_FILE)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(statistics, f, indent=2, allow_nan=False)
    print(f"statistics: medians of {len(train)} train rows in {len(train_paths)} file(s) -> {path}")


def read_statistics(path, target):
    try:
        with open(path) as f:
            statistics = json.load(f)
    except FileNotFoundError:
        raise InputError(f"{path}: file not found (the Statistics step's output)") from None
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: not a readable statistics file ({exc})") from exc
    if not isinstance(statistics, dict) or not {"target", "columns", "medians"} <= set(statistics):
        raise InputError(f"{path}: not a statistics file of preprocess.py --mode statistics")
    if statistics["target"] != target:
        raise InputError(f"{path}: computed for target '{statistics['target']}', not '{target}'")
    return statistics


def host_of(path):
    """(current host, hosts) from SageMaker's resourceconfig.json; one host when it is absent."""
    if not os.path.isfile(path):
        print(f"{path} not found: running as the only host")
        return "algo-1", ["algo-1"]
    try:
        with open(path) as f:
            config = json.load(f)
        return str(config["current_host"]), [str(h) for h in config["hosts"]]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InputError(f"{path}: no current_host and hosts ({exc})") from exc


def run_transform(args):
    """Pass 2 of sharded preprocessing: this instance's train parts, cleaned with the global medians."""
    statistics = read_statistics(args.statistics, args.target)
    columns, medians = statistics["columns"], pd.Series(statistics["medians"], dtype="float64")
    host, hosts = host_of(args.resource_config)
    folder = os.path.join(args.input_dir, "train")
    parts = part_files(folder) if os.path.isdir(folder) else []
    if not parts:
        raise InputError(
            f"{folder}: host {host} of {len(hosts)} received no train part; give the dataset at least as many "
            "train parts as the step has instances (s3_dataset config train_parts)"
        )
    print(f"host {host} of {len(hosts)}: {len(parts)} train part(s): {[os.path.relpath(p, folder) for p in parts]}")
    for path in parts:
        name = os.path.relpath(path, folder)
        frame = same_columns(read_table(path, args.target), columns, path, f"{args.statistics} (the train columns)")
        frame = impute(to_numbers(frame, name, args.target), name, medians)
        written = write(frame, args.output_dir, "train", name)
        report(frame, f"train part {name}", columns, written)
    if host == hosts[0]:  # validation and test are split once, by the first host
        validation = read_validation(args, columns, f"{args.statistics} (the train columns)")
        validation = impute(to_numbers(validation, "validation.csv", args.target), "validation.csv", medians)
        write_validation_and_test(args, validation, columns)
    else:
        print(f"host {host}: validation and test are written by {hosts[0]}")


def main(argv=None):
    args = parse_args(argv)
    {"all": run_all, "statistics": run_statistics, "transform": run_transform}[args.mode](args)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except InputError as exc:
        print(f"preprocess failed: {exc}", file=sys.stderr)
        sys.exit(1)
