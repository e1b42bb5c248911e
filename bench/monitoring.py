"""Figures of the drift statistics (mlops_dagster.monitoring): false alarms, detection, scale.

- Baseline: the synthetic Boston generator (mlops_dagster.datasets), 5,000 rows, seed 1.
- False alarms: windows drawn fresh from the same generator (other seeds), 100 and 1,000 rows;
  the share of windows in which any feature is flagged as drifted (goal <= 5%). For comparison,
  the share Model Monitor's own rule would flag (any feature with CDF distance > 0.1).
- Detection: 1,000-row windows with one feature shifted by 0.5 of its baseline standard
  deviation, each window shifting the next feature in turn; the share of windows whose shifted
  feature is flagged (goal >= 80%), overall and per feature.
- Scale: a drift report over 1,000,000 rows x 13 features fed in chunks of 100,000 rows (the
  statistics core only: the rows are generated, not read from capture files), its time (goal
  <= 60 s) and the process's peak RSS (ru_maxrss; goal <= 1 GiB), which includes the imports.
  It runs first, so the peak is not inherited from another phase.

Rates come with a 95% Wilson interval. Default run: about two minutes on a 2-core machine.

    .venv/bin/python bench/monitoring.py [--windows 200] [--baseline-rows 5000] [--scale-rows 1000000]
"""

from __future__ import annotations

import argparse
import resource
import sys
import time

from scipy.stats import binomtest

from mlops_dagster.datasets import BOSTON_FEATURES, synthetic_boston
from mlops_dagster.monitoring import Baseline, DriftConfig, WindowAccumulator, compare_window, compute_baseline

MODEL_MONITOR_THRESHOLD = 0.1  # Model Monitor's default comparison_threshold (CDF L-infinity distance)


def peak_rss_mib() -> float:
    # ru_maxrss is in KiB on Linux, bytes on macOS.
    scale = 1 if sys.platform == "darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20


def rate(hits: int, total: int) -> str:
    interval = binomtest(hits, total).proportion_ci(confidence_level=0.95, method="wilson")
    return f"{hits / total:6.1%} ({hits}/{total}; 95% CI {interval.low:.1%}-{interval.high:.1%})"


def windows(rows: int, count: int, first_seed: int):
    for seed in range(first_seed, first_seed + count):
        yield synthetic_boston(rows, seed)[BOSTON_FEATURES]


def false_alarms(baseline: Baseline, config: DriftConfig, rows: int, count: int, first_seed: int) -> None:
    ours = simple = 0
    started = time.perf_counter()
    for window in windows(rows, count, first_seed):
        report = compare_window(baseline, window, config)
        ours += bool(report.drifted_features)
        simple += any((f.statistic or 0) > MODEL_MONITOR_THRESHOLD for f in report.features)
    took = time.perf_counter() - started
    print(f"false alarms, {count} windows of {rows:,} rows from the training distribution ({took:.1f} s)")
    print(f"  KS + Bonferroni + min effect: {rate(ours, count)}   goal <= 5%")
    print(f"  Model Monitor's rule (distance > {MODEL_MONITOR_THRESHOLD}):  {rate(simple, count)}")


def detection(baseline: Baseline, config: DriftConfig, rows: int, count: int, first_seed: int, shift: float) -> None:
    stds = {f: baseline.feature_statistics(f)["numerical_statistics"]["std_dev"] for f in BOSTON_FEATURES}
    caught = {f: [0, 0] for f in BOSTON_FEATURES}  # feature -> [caught, windows]
    started = time.perf_counter()
    for i, window in enumerate(windows(rows, count, first_seed)):
        feature = BOSTON_FEATURES[i % len(BOSTON_FEATURES)]
        window[feature] = window[feature] + shift * stds[feature]
        report = compare_window(baseline, window, config)
        caught[feature][0] += feature in report.drifted_features
        caught[feature][1] += 1
    took = time.perf_counter() - started
    hits = sum(c for c, _ in caught.values())
    print(f"detection, {count} windows of {rows:,} rows, one feature (in turn) shifted by {shift} std ({took:.1f} s)")
    print(f"  caught: {rate(hits, count)}   goal >= 80%")
    print("  per feature: " + ", ".join(f"{f} {c}/{n}" for f, (c, n) in caught.items()))


def scale(baseline: Baseline, config: DriftConfig, rows: int, chunk: int) -> None:
    before = peak_rss_mib()
    accumulator = WindowAccumulator(baseline)
    generating = adding = 0.0
    for start in range(0, rows, chunk):
        t0 = time.perf_counter()
        frame = synthetic_boston(min(chunk, rows - start), 10_000 + start // chunk)[BOSTON_FEATURES]
        t1 = time.perf_counter()
        accumulator.add(frame)
        adding += time.perf_counter() - t1
        generating += t1 - t0
        del frame
    t2 = time.perf_counter()
    report = accumulator.report(config)
    reporting = time.perf_counter() - t2
    files = report.files()
    print(
        f"scale: drift report over {accumulator.rows:,} rows x {len(baseline.features)} features, chunks of {chunk:,}"
    )
    print(f"  time: {adding + reporting:.1f} s (accumulate {adding:.1f} s + report {reporting:.1f} s)   goal <= 60 s")
    print(f"  peak RSS: {peak_rss_mib():.0f} MiB (after imports and baseline: {before:.0f} MiB)   goal <= 1024 MiB")
    print(f"  (generating the rows took {generating:.1f} s, not counted; status: {report.status}; files: "
          + ", ".join(f"{k} {len(v):,} B" for k, v in files.items()) + ")")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--windows", type=int, default=200, help="windows per false-alarm size (>= 200)")
    parser.add_argument("--detection-windows", type=int, default=260, help="shifted windows (20 per feature)")
    parser.add_argument("--baseline-rows", type=int, default=5000)
    parser.add_argument("--scale-rows", type=int, default=1_000_000)
    parser.add_argument("--chunk", type=int, default=100_000)
    parser.add_argument("--shift", type=float, default=0.5, help="shift in baseline standard deviations")
    args = parser.parse_args()

    config = DriftConfig()
    baseline = compute_baseline(synthetic_boston(args.baseline_rows, seed=1), BOSTON_FEATURES)
    print(
        f"baseline: {args.baseline_rows:,} synthetic rows (seed 1); rule: KS p < alpha {config.alpha} / "
        f"{len(BOSTON_FEATURES)} features and KS statistic >= {config.min_statistic}; min_samples {config.min_samples}"
    )
    scale(baseline, config, args.scale_rows, args.chunk)
    false_alarms(baseline, config, 100, args.windows, first_seed=100_000)
    false_alarms(baseline, config, 1000, args.windows, first_seed=200_000)
    detection(baseline, config, 1000, args.detection_windows, first_seed=300_000, shift=args.shift)


if __name__ == "__main__":
    main()
