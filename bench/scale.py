"""raw_data + s3_dataset at scale: rows/s, MB/s and peak RSS for 1 M and 10 M rows.

Each case runs the two assets (``materialize`` of the code location's own definitions, as
``dagster asset materialize --select raw_data,s3_dataset`` does) in a fresh subprocess with a
fresh ``MLOPS_HOME``, so the peak RSS printed is that case's alone (``ru_maxrss`` of that
process). Sources: ``synthetic`` (generated in chunks), and a CSV and a Parquet file written
beforehand (not timed). MB/s is of the source file (for synthetic: of the CSV it equals).

    python bench/scale.py            # 1 M and 10 M rows, synthetic / CSV / Parquet (takes minutes)
    python bench/scale.py --quick    # 100,000 rows, synthetic and CSV: a smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GIB = 1 << 30


def _child(home: str, source: str, rows: int, chunk_rows: int | None) -> None:
    """Runs in the subprocess: materialize raw_data and s3_dataset; prints JSON timings."""
    started = time.perf_counter()
    from dagster import DagsterInstance, materialize

    from mlops_dagster.definitions import build_definitions
    from mlops_dagster.settings import Settings

    defs = build_definitions(Settings.from_env({"MLOPS_HOME": home}))
    imported = time.perf_counter()
    raw = {"source": source, "rows": rows}
    s3: dict = {}
    if chunk_rows:
        raw["chunk_rows"] = s3["chunk_rows"] = chunk_rows
    result = materialize(
        [defs.get_assets_def("raw_data"), defs.get_assets_def("s3_dataset")],
        resources=defs.resources,
        run_config={"ops": {"raw_data": {"config": raw}, "s3_dataset": {"config": s3}}},
        instance=DagsterInstance.ephemeral(),
    )
    assert result.success
    done = time.perf_counter()
    steps = {
        e.step_key: e.event_specific_data.duration_ms / 1000
        for e in result.all_events
        if e.event_type_value == "STEP_SUCCESS"
    }
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # this fresh process's own peak
    print(json.dumps({"total": done - started, "imports": imported - started, "steps": steps, "peak_rss": peak}))


def _write_sources(directory: Path, rows: int, formats: list[str]) -> dict[str, Path]:
    """The synthetic table as CSV and/or Parquet files, written chunk by chunk (not timed)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from mlops_dagster.datasets import csv_header, iter_synthetic, to_csv_bytes

    paths = {name: directory / f"boston-{rows}.{name}" for name in formats}
    writers = {}
    if "csv" in paths:
        writers["csv"] = paths["csv"].open("wb")
    parquet = None
    for index, chunk in enumerate(iter_synthetic(rows, 42, 500_000)):
        if "csv" in writers:
            if index == 0:
                writers["csv"].write(csv_header(list(chunk.columns)))
            writers["csv"].write(to_csv_bytes(chunk).split(b"\n", 1)[1])
        if "parquet" in paths:
            table = pa.Table.from_pandas(chunk, preserve_index=False)
            parquet = parquet or pq.ParquetWriter(paths["parquet"], table.schema)
            parquet.write_table(table)
    for handle in writers.values():
        handle.close()
    if parquet is not None:
        parquet.close()
    return paths


def _run_case(source: str, rows: int, chunk_rows: int | None) -> dict:
    with tempfile.TemporaryDirectory(prefix="mlops-scale-") as home:
        started = time.perf_counter()
        here = str(Path(__file__).parent)
        code = f"import sys; sys.path.insert(0, {here!r}); from scale import _child; _child({home!r}, {source!r}, {rows}, {chunk_rows!r})"
        out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=False)
        wall = time.perf_counter() - started
        if out.returncode:
            raise SystemExit(f"case {source} x {rows} failed:\n{out.stderr[-4000:]}")
        figures = json.loads(out.stdout.strip().splitlines()[-1])
    figures["wall"] = wall
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="100,000 rows, synthetic and CSV only")
    parser.add_argument("--rows", type=int, nargs="*", help="row counts (default 1,000,000 and 10,000,000)")
    parser.add_argument("--sources", nargs="*", default=None, help="synthetic, csv, parquet (default all)")
    parser.add_argument("--chunk-rows", type=int, default=None, help="raw_data/s3_dataset chunk_rows")
    args = parser.parse_args()
    sizes = args.rows or ([100_000] if args.quick else [1_000_000, 10_000_000])
    sources = args.sources or (["synthetic", "csv"] if args.quick else ["synthetic", "csv", "parquet"])
    print(f"raw_data + s3_dataset, {os.cpu_count()} cores; load average {os.getloadavg()[0]:.1f}")
    print(f"{'source':<10} {'rows':>11} {'wall s':>8} {'steps s':>8} {'rows/s':>11} {'MB/s':>7} {'peak RSS':>10}")
    with tempfile.TemporaryDirectory(prefix="mlops-scale-src-") as tmp:
        for rows in sizes:
            files = _write_sources(Path(tmp), rows, [s for s in sources if s != "synthetic"])
            csv_mb = (files["csv"].stat().st_size if "csv" in files else rows * 75) / 1e6
            for name in sources:
                source = "synthetic" if name == "synthetic" else str(files[name])
                figures = _run_case(source, rows, args.chunk_rows)
                size_mb = csv_mb if name == "synthetic" else files[name].stat().st_size / 1e6
                peak = f"{figures['peak_rss'] / GIB:.2f} GiB"
                steps = sum(figures["steps"].values())
                print(
                    f"{name:<10} {rows:>11,} {figures['wall']:>8.1f} {steps:>8.1f} {rows / figures['wall']:>11,.0f} "
                    f"{size_mb / figures['wall']:>7.1f} {peak:>10}   "
                    + " ".join(f"{k}={v:.1f}s" for k, v in figures["steps"].items())
                )
            for path in files.values():
                path.unlink()
    print("wall: the whole subprocess (imports included); MB/s: source bytes (synthetic: its CSV) per wall second;")
    print("peak RSS: ru_maxrss of the case's own fresh process (imports included)")


if __name__ == "__main__":
    main()
