"""Reading captured traffic at scale: 1,000,000 capture records parsed back into feature rows.

Writes ``--records`` single-row CSV capture records (SageMaker's format, as the local endpoint
writes them: JSON Lines, ``--per-file`` records per object, one hour folder) into a LocalObjectStore
in a temporary folder, then times ``iter_capture_files`` + ``read_capture`` over all of them in a
fresh process (so its peak RSS, ru_maxrss, is the reader's and not the generator's), and, with
``--drift``, feeds every chunk to the drift statistics (WindowAccumulator) and builds the report.
Goal (issue 10): <= 60 s and <= 1 GiB for 1,000,000 records on this 2-core machine.

    .venv/bin/python bench/capture.py [--records 1000000] [--per-file 1000] [--drift]
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
import uuid
from pathlib import Path

import numpy as np

from mlops_dagster.datasets import BOSTON_FEATURES, synthetic_boston

DESTINATION = "s3://bench/mlops/datacapture"
ENDPOINT = "bench-endpoint"


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def generate(root: Path, records: int, per_file: int) -> int:
    """Capture objects under ``root`` (the store's root); returns the bytes written."""
    folder = root / "bench" / "mlops" / "datacapture" / ENDPOINT / "AllTraffic" / "2026" / "01" / "02" / "03"
    folder.mkdir(parents=True)
    rows = synthetic_boston(min(records, 20_000), seed=5)[BOSTON_FEATURES].to_numpy()
    texts = [",".join(repr(round(v, 4)) for v in row) for row in rows.tolist()]
    rng = np.random.default_rng(1)
    total = 0
    for start in range(0, records, per_file):
        lines = []
        for i in range(start, min(start + per_file, records)):
            record = {
                "captureData": {
                    "endpointInput": {
                        "observedContentType": "text/csv", "mode": "INPUT", "data": texts[i % len(texts)],
                        "encoding": "CSV",
                    },
                    "endpointOutput": {
                        "observedContentType": "text/csv; charset=utf-8", "mode": "OUTPUT",
                        "data": f"{rng.normal(22, 9):.6f}\n", "encoding": "CSV",
                    },
                },
                "eventMetadata": {
                    "eventId": str(uuid.uuid4()), "inferenceId": f"req-{i}",
                    "inferenceTime": f"2026-01-02T03:{(i // 60_000) % 60:02d}:{(i // 1000) % 60:02d}Z",
                },
                "eventVersion": "0",
            }  # fmt: skip
            lines.append(json.dumps(record, separators=(",", ":")))
        data = ("\n".join(lines) + "\n").encode()
        (folder / f"{start // per_file:06d}-{uuid.uuid4()}.jsonl").write_bytes(data)
        total += len(data)
    return total


def read(root: str, drift: bool) -> None:
    """The measured part (run in its own process)."""
    started = time.perf_counter()
    from mlops_dagster.monitoring.capture import iter_capture_files, read_capture
    from mlops_dagster.resources.object_store import LocalObjectStore

    store = LocalObjectStore(root=root)
    imported = time.perf_counter() - started
    started = time.perf_counter()
    uris = iter_capture_files(store, DESTINATION, ENDPOINT)
    listed = time.perf_counter() - started
    accumulator = None
    if drift:
        from mlops_dagster.monitoring import WindowAccumulator, compute_baseline

        accumulator = WindowAccumulator(compute_baseline(synthetic_boston(5000, seed=1)[BOSTON_FEATURES]))
    started = time.perf_counter()
    reading = read_capture(store, uris, BOSTON_FEATURES)
    rows = 0
    for chunk in reading:
        rows += len(chunk)
        if accumulator is not None:
            accumulator.add(chunk.features)
    elapsed = time.perf_counter() - started
    summary = ""
    if accumulator is not None:
        report = accumulator.report()
        summary = f"; drift report: {report.summary()[:120]}"
    stats = reading.stats
    print(
        f"imports {imported:.1f} s, listing {len(uris)} files {listed:.2f} s, "
        f"reading {stats.records:,} records ({rows:,} rows, {stats.bad_records} bad){' + drift' if drift else ''} "
        f"{elapsed:.1f} s ({stats.records / elapsed:,.0f} records/s); peak RSS {peak_rss_mib():.0f} MiB{summary}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--per-file", type=int, default=1000, help="records per capture object (one flush)")
    parser.add_argument("--drift", action="store_true", help="also feed the drift statistics and build the report")
    parser.add_argument("--read", help=argparse.SUPPRESS)  # the child process: the store's root
    args = parser.parse_args()
    if args.read:
        read(args.read, args.drift)
        return
    with tempfile.TemporaryDirectory(prefix="mlops-bench-capture-", dir=os.environ.get("MLOPS_HOME")) as tmp:
        started = time.perf_counter()
        size = generate(Path(tmp), args.records, args.per_file)
        print(
            f"generated {args.records:,} records in {args.per_file}-record files ({size / 2**20:.0f} MiB) "
            f"in {time.perf_counter() - started:.1f} s; {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}",
            flush=True,
        )
        command = [sys.executable, __file__, "--read", tmp, *(["--drift"] if args.drift else [])]
        subprocess.run(command, check=True)


if __name__ == "__main__":
    main()
