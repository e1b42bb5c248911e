"""Sharded preprocessing on the local service: the Preprocess stage on 1 instance vs N.

Writes a synthetic dataset (Boston schema, a few missing feature values) into a fresh local
store twice: the recipe's layout (train.csv, validation.csv) and the sharded one (train parts as
s3_dataset's `train_parts` writes them). For each count it builds the project's pipeline
definition with `processing_instance_count`, keeps the steps up to Preprocess (Statistics and
Preprocess; Train is not what is measured), runs the execution in this process with the local
service, and prints the wall time of the stage and each step's own time. Each run is a new home.

    .venv/bin/python bench/sharded.py [--rows 1000000] [--instances 2] [--parts 4] [--runs 3]

On one machine the N instances share its cores, and the Statistics step reads every part once
more: the figure says what the local service costs, not what N SageMaker instances gain.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("SAGEMAKER_SUPPRESS_V2_WARNING", "1")

import numpy as np  # noqa: E402

from mlops_dagster.assets.data import _write_parts  # noqa: E402
from mlops_dagster.datasets import synthetic_boston  # noqa: E402
from mlops_dagster.resources.object_store import LocalObjectStore  # noqa: E402

ROLE = "arn:aws:iam::000000000000:role/mlops-local-execution-role"
BUCKET = "mlops-local"


def write_dataset(store: LocalObjectStore, work: Path, rows: int, parts: int) -> dict[str, str]:
    """{"single": uri, "sharded": uri}: the same train/validation rows in both layouts."""
    frame = synthetic_boston(rows, 7)
    rng = np.random.default_rng(7)
    for column in ("crim", "rm", "lstat"):  # 2% missing: the medians matter
        frame.loc[rng.random(rows) < 0.02, column] = np.nan
    cut = int(rows * 0.8)
    train, validation = work / "train.csv", work / "validation.csv"
    frame.iloc[:cut].to_csv(train, index=False)
    frame.iloc[cut:].to_csv(validation, index=False)
    single, sharded = f"s3://{BUCKET}/mlops/data/single/", f"s3://{BUCKET}/mlops/data/sharded/"
    for prefix in (single, sharded):
        store.put_file(prefix + "train.csv", train)
        store.put_file(prefix + "validation.csv", validation)
    for name, (path, _sha) in _write_parts(train, cut, parts, work / "parts").items():
        store.put_file(sharded + name, path)
    return {"single": single, "sharded": sharded}


def preprocess_definition(store: LocalObjectStore, instances: int) -> str:
    from mlops_dagster.sagemaker.offline import local_boto_session
    from mlops_dagster.sagemaker.pipeline_builder import PipelineSpec, build_pipeline

    spec = PipelineSpec(name=f"sharded-{instances}", bucket=BUCKET, prefix="mlops", region="us-east-1",
                        role_arn=ROLE, processing_instance_count=instances)  # fmt: skip
    doc = json.loads(build_pipeline(spec, local_boto_session(store, BUCKET, "us-east-1")).definition())
    doc["Steps"] = [s for s in doc["Steps"] if s["Name"] in ("Statistics", "Preprocess")]
    return json.dumps(doc)


def one_run(rows: int, instances: int, parts: int) -> tuple[float, dict[str, float]]:
    from mlops_dagster.sagemaker.local import LocalSageMakerService, worker

    with tempfile.TemporaryDirectory(prefix="bench-sharded-") as tmp:
        home = Path(tmp) / "home"
        home.mkdir()
        os.environ["MLOPS_DEFINITION_CACHE_DIR"] = str(Path(tmp) / "cache")
        store = LocalObjectStore(root=str(home / "s3"))
        uris = write_dataset(store, Path(tmp), rows, parts)
        service = LocalSageMakerService(home, store)
        name = f"sharded-{instances}"
        service.create_pipeline(PipelineName=name, PipelineDefinition=preprocess_definition(store, instances), RoleArn=ROLE)
        data = uris["single" if instances == 1 else "sharded"]
        service.backend.launcher = lambda arn: type("P", (), {"pid": os.getpid()})()
        started = time.perf_counter()
        arn = service.start_pipeline_execution(
            PipelineName=name, PipelineParameters=[{"Name": "InputData", "Value": data}]
        )["PipelineExecutionArn"]
        status = worker.run_execution(home, store, arn)
        wall = time.perf_counter() - started
        if status != "Succeeded":
            raise SystemExit(f"{name}: execution {status}: {service.describe_pipeline_execution(PipelineExecutionArn=arn)}")
        steps = service.list_pipeline_execution_steps(PipelineExecutionArn=arn)["PipelineExecutionSteps"]
        return wall, {s["StepName"]: (s["EndTime"] - s["StartTime"]).total_seconds() for s in steps}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--instances", type=int, default=2)
    parser.add_argument("--parts", type=int, default=4)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    logging.getLogger("mlops_dagster").setLevel(logging.WARNING)  # the worker's step lines
    logging.getLogger("sagemaker").setLevel(logging.ERROR)  # "instance_type is a PipelineVariable"
    results: dict[int, list] = {1: [], args.instances: []}
    for run in range(args.runs):
        for count in results:  # alternated, so a change in the machine's load hits both
            wall, steps = one_run(args.rows, count, args.parts)
            results[count].append((wall, steps))
            print(f"run {run + 1}, {count} instance(s): {wall:.1f} s " + ", ".join(f"{k} {v:.1f} s" for k, v in steps.items()))
    print(f"\n{args.rows:,} rows ({int(args.rows * 0.8):,} train), {args.parts} parts, medians of {args.runs} runs:")
    for count, runs in results.items():
        wall = statistics.median(w for w, _ in runs)
        names = runs[0][1]
        detail = ", ".join(f"{n} {statistics.median(r[1][n] for r in runs):.1f} s" for n in names)
        print(f"  {count} instance(s): {wall:.1f} s wall ({detail})")
    one, many = (statistics.median(w for w, _ in results[c]) for c in results)
    print(f"  {args.instances} instances / 1 instance: {many / one:.2f}x wall time")


if __name__ == "__main__":
    main()
