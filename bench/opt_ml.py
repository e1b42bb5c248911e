"""What a job's own /opt/ml costs: a trivial processing job in each mode, same run.

``namespace`` binds the work folder on /opt/ml (mlops_dagster/sagemaker/local/opt_ml.py: one more
interpreter start before the script's); ``remap`` rewrites the paths instead. Prints the median
wall time of the script process (``script_seconds``) and of the whole job, per mode, the
difference, and the one-off probe that ``auto`` makes per process.

    .venv/bin/python bench/opt_ml.py [--runs 15]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mlops_dagster.resources.object_store import LocalObjectStore  # noqa: E402
from mlops_dagster.sagemaker.local import opt_ml  # noqa: E402
from mlops_dagster.sagemaker.local.jobs import run_processing_job  # noqa: E402

CODE = "s3://bench/code/job.py"
REQUEST = {
    "ProcessingResources": {"ClusterConfig": {"InstanceType": "ml.m5.large", "InstanceCount": 1}},
    "AppSpecification": {"ContainerEntrypoint": ["python3", "/opt/ml/processing/input/code/job.py"]},
    "ProcessingInputs": [
        {"InputName": "code", "S3Input": {"S3Uri": CODE, "LocalPath": "/opt/ml/processing/input/code"}}
    ],
    "ProcessingOutputConfig": {
        "Outputs": [
            {"OutputName": "out", "S3Output": {"S3Uri": "s3://bench/out", "LocalPath": "/opt/ml/processing/out"}}
        ]
    },
}


def run(mode: str, home: Path, index: int) -> tuple[float, float]:
    os.environ[opt_ml.MODE_VARIABLE] = mode
    store = LocalObjectStore(root=str(home / "s3"))
    started = time.perf_counter()
    result = run_processing_job(f"job-{mode}-{index}", REQUEST, store, home / "work" / mode, home / f"{mode}.log")
    total = time.perf_counter() - started
    if result.status != "Completed":
        raise SystemExit(f"{mode} job failed: {result.failure_reason}")
    return result.script_seconds or 0.0, total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    runs = parser.parse_args().runs
    started = time.perf_counter()
    works, why_not = opt_ml.probe()
    print(f"probe (once per process): {time.perf_counter() - started:.3f} s, namespace available: {works} {why_not}")
    if not works:
        raise SystemExit("no namespace on this machine: nothing to compare")
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        LocalObjectStore(root=str(home / "s3")).put_bytes(CODE, b"print('ok')\n")
        figures: dict[str, list[tuple[float, float]]] = {"namespace": [], "remap": []}
        for index in range(runs):  # interleaved, so that the machine's load falls on both alike
            for mode in figures:
                figures[mode].append(run(mode, home, index))
    medians = {}
    for mode, values in figures.items():
        script = statistics.median(v[0] for v in values)
        total = statistics.median(v[1] for v in values)
        medians[mode] = (script, total)
        print(f"{mode:9}  script process median {script * 1000:7.1f} ms   whole job median {total * 1000:7.1f} ms")
    extra = medians["namespace"][0] - medians["remap"][0]
    print(f"namespace - remap (script process, median): {extra * 1000:+.1f} ms per job ({runs} runs each)")


if __name__ == "__main__":
    main()
