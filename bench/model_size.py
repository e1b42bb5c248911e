"""Accuracy vs. size of the training step's random forest: the evidence behind train.py's defaults.

For the Boston CSV and synthetic data (mlops_dagster.datasets.synthetic_boston, split 80/20 with
split_frame as s3_dataset does), fits the forest of training/train.py under a few size settings
and prints, per setting: training rows, fit seconds, model bytes (the joblib file train.py
writes), load seconds (joblib.load, what the endpoint and Evaluate do), validation MSE and R².
The settings go through train.py's own bounded_forest_params, so "auto" here is what the
pipeline trains.

    .venv/bin/python bench/model_size.py --quick   # Boston + 20,000 synthetic rows: every setting, minutes
    .venv/bin/python bench/model_size.py           # Boston + 1,000,000 synthetic rows: 4 settings, an hour under load

The unbounded forest (scikit-learn's defaults, train.py's defaults before) grows linearly with the
data (6.9 GB at 800,000 training rows); it is fitted on at most --unbounded-rows training rows
so that the run stays short, and its bytes per training row are printed for extrapolation.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import joblib
import pandas as pd
from sklearn.ensemble import RandomForestRegressor
from sklearn.metrics import mean_squared_error, r2_score

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from mlops_dagster.datasets import split_frame, synthetic_boston  # noqa: E402

BOSTON = Path("/work/shared/data/BostonHousing.csv")
TARGET = "medv"


def load_train_module():
    """training/train.py as a module (it is a script run by the SageMaker container, not a package)."""
    sys.dont_write_bytecode = True  # no training/__pycache__: the SDK uploads that folder
    spec = importlib.util.spec_from_file_location("train", ROOT / "training" / "train.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def candidates(train, large: bool) -> list[tuple[str, dict]]:
    """(label, keyword arguments of train.bounded_forest_params) per setting compared; on large data
    only the settings whose fit stays short (every tree on all rows takes tens of minutes here)."""
    settings = [
        ("unbounded (before: msl=1, all rows)", {"min_samples_leaf": 1, "max_samples": None}, True),
        ("max_samples=200k rows only", {"min_samples_leaf": 1, "tree_rows": 200_000}, False),
        ("leaves<=10k only (all rows)", {"max_samples": None, "leaves": 10_000}, False),
        ("auto: 200k rows/tree, 10k leaves", {"tree_rows": 200_000, "leaves": 10_000}, True),
        ("auto: 200k rows/tree, 3k leaves", {"tree_rows": 200_000, "leaves": 3_000}, True),
        ("auto: 200k rows/tree, 30k leaves", {"tree_rows": 200_000, "leaves": 30_000}, False),
    ]
    default = (f"DEFAULT auto: {train.AUTO_TREE_ROWS // 1000}k rows/tree, {train.AUTO_LEAVES // 1000}k leaves", {})
    return [(label, kwargs) for label, kwargs, on_large in settings if on_large or not large] + [default]


def measure(train, frame_train: pd.DataFrame, frame_valid: pd.DataFrame, kwargs: dict, workdir: str) -> dict:
    X, y = frame_train.drop(columns=[TARGET]), frame_train[TARGET]
    params = train.bounded_forest_params(len(X), **kwargs)
    model = RandomForestRegressor(n_estimators=100, random_state=42, n_jobs=-1, **params)
    start = time.perf_counter()
    model.fit(X, y)
    fit = time.perf_counter() - start
    path = os.path.join(workdir, "model.joblib")
    joblib.dump(model, path)  # as train.py writes it: uncompressed
    size = os.path.getsize(path)
    del model
    loads = []
    for _ in range(3 if size < 200e6 else 1):
        start = time.perf_counter()
        model = joblib.load(path)
        loads.append(time.perf_counter() - start)
    predicted = model.predict(frame_valid.drop(columns=[TARGET]))
    os.remove(path)
    return {
        "rows": len(X), "msl": params["min_samples_leaf"], "max_samples": params["max_samples"],
        "fit_s": fit, "bytes": size, "load_s": statistics.median(loads),
        "mse": mean_squared_error(frame_valid[TARGET], predicted), "r2": r2_score(frame_valid[TARGET], predicted),
    }  # fmt: skip


def report(name: str, train, frame: pd.DataFrame, unbounded_rows: int, only_default: bool, large: bool) -> None:
    frame_train, frame_valid = split_frame(frame, 0.8, 42)
    print(f"\n## {name}: {len(frame_train):,} training rows, {len(frame_valid):,} validation rows (100 trees)\n")
    print("| setting | rows | min_samples_leaf | max_samples | fit s | model MB | load s | val MSE | val R² |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    chosen = candidates(train, large)[-1:] if only_default else candidates(train, large)
    with tempfile.TemporaryDirectory(prefix="model-size-") as workdir:
        for label, kwargs in chosen:
            data = frame_train
            if (
                kwargs.get("min_samples_leaf") == 1
                and kwargs.get("max_samples", "x") is None
                and len(data) > unbounded_rows
            ):
                data = frame_train.iloc[:unbounded_rows]  # keep the run short; size is linear in rows
                label += f" on {unbounded_rows:,} rows"
            r = measure(train, data, frame_valid, kwargs, workdir)
            print(
                f"| {label} | {r['rows']:,} | {r['msl']} | {r['max_samples']} | {r['fit_s']:.1f} | "
                f"{r['bytes'] / 1e6:.1f} | {r['load_s']:.2f} | {r['mse']:.3f} | {r['r2']:.4f} |",
                flush=True,
            )
            if data is not frame_train:
                print(f"|  ↳ {r['bytes'] / r['rows']:.0f} bytes per training row: about "
                      f"{r['bytes'] / r['rows'] * len(frame_train) / 1e9:.1f} GB at {len(frame_train):,} rows | | | | | | | | |")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="20,000 synthetic rows instead of 1,000,000")
    parser.add_argument("--rows", type=int, help="synthetic rows (default 1,000,000; 20,000 with --quick)")
    parser.add_argument("--unbounded-rows", type=int, default=40_000, help="training rows for the unbounded forest")
    parser.add_argument("--default-only", action="store_true", help="only the chosen default on the synthetic data")
    parser.add_argument("--boston", type=Path, default=BOSTON, help="the Boston Housing CSV (skipped if absent)")
    args = parser.parse_args(argv)
    rows = args.rows or (20_000 if args.quick else 1_000_000)
    train = load_train_module()
    print(f"train.py defaults: AUTO_TREE_ROWS={train.AUTO_TREE_ROWS:,}, AUTO_LEAVES={train.AUTO_LEAVES:,}; "
          f"{os.cpu_count()} CPUs (n_jobs=-1); figures taken on a shared machine are pessimistic")  # fmt: skip
    if args.boston.is_file():
        report(
            f"Boston ({args.boston})", train, pd.read_csv(args.boston).astype(float), args.unbounded_rows, False, False
        )
    else:
        print(f"\n{args.boston} not found: Boston skipped")
    report(
        f"synthetic_boston({rows:,})",
        train,
        synthetic_boston(rows, 42),
        args.unbounded_rows,
        args.default_only,
        rows > 100_000,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
