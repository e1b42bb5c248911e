"""Wall time of a local materialization, and where it goes.

Each run materializes assets with the Dagster CLI (as `make run` does) and then reads the
records the run left behind to split the wall time:

- the Dagster run's events: CLI start and code-location import (process start to the first
  event), each asset's step (STEP_START to STEP_SUCCESS), CLI exit after the run ended;
- pipeline_definition's metadata: whether the definition came from the cache, and build seconds;
- the local SageMaker state: worker start (execution created to its first step), each job's
  step time vs. the time its script process ran (process start, imports and the script), the
  gaps between steps, and the poll lag (execution ended to trained_model noticing it);
- dev_endpoint's step (server start, model load, smoke test).

Modes:
    fresh   the selection on an empty $MLOPS_HOME (default)
    rerun   the selection once untimed, then timed again in the same home (a new execution)

The pipeline definition cache is the user's (it outlives a home): `--definition-cache cold` (default)
gives each run an empty one, `warm` one that an untimed build filled first.

    .venv/bin/python bench/e2e.py [--runs 3] [--mode fresh|rerun] [--select '*'] [--source synthetic|PATH]
                                  [--definition-cache cold|warm]
    .venv/bin/python bench/e2e.py --select '*trained_model' --source /work/shared/data/BostonHousing.csv
    .venv/bin/python bench/e2e.py --sqlite both    # same-run comparison of the instance's SQLite tuning

    .venv/bin/python bench/e2e.py --mode rerun --step-cache both    # rerun with and without step caching
    .venv/bin/python bench/e2e.py --spares both    # with and without job processes started ahead

`--step-cache off` runs pipeline_definition with `step_cache_expire_after: ""` (every execution runs
every step; with the default, a rerun on unchanged data and code reuses the earlier jobs).
`--sqlite durable` runs with MLOPS_DAGSTER_SQLITE_DURABLE=1 (SQLite's defaults for the Dagster
instance, see mlops_dagster/instance_storage.py); `both` alternates tuned and durable runs.

The floor printed at the end is what the container contract and the CLI cost here in imports, each
in a fresh process as in a run: the CLI importing Dagster, each job's script process importing
pandas and scikit-learn (three jobs, one after another: each needs the previous one's output) and
the endpoint server importing its handlers and scikit-learn. Spare job processes and the standby
endpoint server (the defaults) move all but the CLI's and Preprocess's imports off the critical
path, onto the second core: a run can then beat this sequential floor.
(`--runs 0` prints only the floor.)
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCRIPT_LINE = re.compile(r"=== (?:training|processing) job (?P<job>\S+): script ran (?P<s>[\d.]+) s ===")
NOTICED = re.compile(r"^(execution \S+ ended|step \S+: (Succeeded|Failed|Stopped)$)")


DEFINITION_CACHE = "MLOPS_DEFINITION_CACHE_DIR"
DURABLE_SQLITE = "MLOPS_DAGSTER_SQLITE_DURABLE"
STEP_CACHE = "MLOPS_BENCH_STEP_CACHE"  # this script's own switch, read by _materialize
SPARES = "MLOPS_LOCAL_SPARES"  # the local service's setting (mlops_dagster/sagemaker/local/spares.py)


def _env(home: str, source: str) -> dict:
    env = {**os.environ, "MLOPS_HOME": home, "DAGSTER_HOME": f"{home}/dagster", "MLOPS_DATA_SOURCE": source}
    env.setdefault(DEFINITION_CACHE, f"{home}/definition-cache")  # cold unless main() set a warm one
    return env


def _materialize(home: str, source: str, select: str) -> tuple[float, float]:
    """(wall-clock start, seconds) of one `dagster asset materialize`."""
    dagster = Path(sys.executable).with_name("dagster")
    config = []
    if os.environ.get(STEP_CACHE) == "off":  # pipeline_definition's config: every step runs every time
        config = ["--config-json", json.dumps({"ops": {"pipeline_definition": {"config": {"step_cache_expire_after": ""}}}})]
    started_at, started = time.time(), time.perf_counter()
    done = subprocess.run(
        [str(dagster), "asset", "materialize", "-m", "mlops_dagster", "--select", select, *config],
        cwd=REPO, env=_env(home, source), capture_output=True, text=True,
    )  # fmt: skip
    wall = time.perf_counter() - started
    if done.returncode != 0:
        _stop_endpoints(home, source)
        sys.exit(f"materialization failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    return started_at, wall


def _stop_endpoints(home: str, source: str) -> None:
    """The graph leaves the dev endpoint serving: stop it before the home is deleted."""
    dagster = Path(sys.executable).with_name("dagster")
    subprocess.run([str(dagster), "job", "execute", "-m", "mlops_dagster", "-j", "stop_endpoints"],
                   cwd=REPO, env=_env(home, source), capture_output=True, check=True)  # fmt: skip


def _ts(value: datetime) -> float:
    return value.timestamp()


def breakdown(home: str, started_at: float, wall: float) -> dict[str, float]:
    """Named parts of one run, in seconds (read from the records the run left)."""
    os.environ["DAGSTER_HOME"] = f"{home}/dagster"
    from dagster import DagsterEventType, DagsterInstance

    parts: dict[str, float] = {"wall": wall}
    noticed = float("nan")
    with DagsterInstance.get() as instance:
        run = instance.get_runs(limit=1)[0]
        events = instance.all_logs(run.run_id)
        first, last = events[0].timestamp, events[-1].timestamp
        parts["dagster: CLI start + code location import"] = first - started_at
        parts["dagster: CLI exit after the run"] = started_at + wall - last
        starts: dict[str, float] = {}
        for event in events:
            kind = event.dagster_event.event_type if event.dagster_event else None
            if kind == DagsterEventType.STEP_START:
                starts[event.step_key] = event.timestamp
            elif kind == DagsterEventType.STEP_SUCCESS and event.step_key in starts:
                parts[f"asset {event.step_key}"] = event.timestamp - starts[event.step_key]
            elif kind == DagsterEventType.ASSET_MATERIALIZATION and event.step_key == "pipeline_definition":
                metadata = event.dagster_event.event_specific_data.materialization.metadata
                if "build_seconds" in metadata:
                    parts["  pipeline_definition: SDK build"] = float(metadata["build_seconds"].value)
            elif event.step_key == "trained_model" and event.user_message and NOTICED.search(event.user_message):
                noticed = event.timestamp  # the last one: when the wait saw the execution end
        asset_total = sum(v for k, v in parts.items() if k.startswith("asset "))
        parts["dagster: between assets (run setup, IO, events)"] = last - first - asset_total
        parts["dagster: events written by the run (count)"] = float(len(events))
    if "asset trained_model" in parts:
        parts.update(_execution_parts(home, noticed))
    return parts


def _execution_parts(home: str, noticed: float) -> dict[str, float]:
    from mlops_dagster.resources.object_store import LocalObjectStore
    from mlops_dagster.sagemaker.local import LocalSageMakerService

    service = LocalSageMakerService(Path(home), LocalObjectStore(root=f"{home}/s3"))
    pipeline = service.list_pipelines()["PipelineSummaries"][0]["PipelineName"]
    arn = service.list_pipeline_executions(PipelineName=pipeline)["PipelineExecutionSummaries"][0][
        "PipelineExecutionArn"
    ]
    execution = service.describe_pipeline_execution(PipelineExecutionArn=arn)
    steps = service.list_pipeline_execution_steps(PipelineExecutionArn=arn, SortOrder="Ascending")[
        "PipelineExecutionSteps"
    ]
    created, ended = _ts(execution["CreationTime"]), _ts(execution["LastModifiedTime"])
    scripts = {}
    for log in Path(home, "sagemaker", "logs").glob("*.log"):
        for match in SCRIPT_LINE.finditer(log.read_text(errors="replace")):
            scripts[match["job"]] = float(match["s"])
    parts = {
        "  execution: created to first step (worker start)": _ts(steps[0]["StartTime"]) - created,
        "  execution: total": ended - created,
    }
    busy = 0.0
    intervals = []
    for step in steps:
        start, end = _ts(step["StartTime"]), _ts(step.get("EndTime") or step["StartTime"])
        intervals.append((start, end))
        job = next((m["Arn"].rsplit("/", 1)[-1] for m in step.get("Metadata", {}).values() if "Arn" in m), None)
        parts[f"    step {step['StepName']}"] = end - start
        if step.get("CacheHitResult"):  # the job is an earlier execution's: nothing ran here
            parts["    steps reused from the step cache (count)"] = parts.get("    steps reused from the step cache (count)", 0) + 1
        elif job in scripts:
            parts[f"      {step['StepName']}: script process (start, imports, script)"] = scripts[job]
            busy += scripts[job]
    covered = _union(intervals)
    parts["    worker: gaps between steps, and after the last"] = ended - _ts(steps[0]["StartTime"]) - covered
    parts["  scripts total"] = busy
    parts["  poll lag: execution ended to trained_model noticing"] = noticed - ended
    return parts


def _union(intervals: list[tuple[float, float]]) -> float:
    total, current_end = 0.0, float("-inf")
    for start, end in sorted(intervals):
        start = max(start, current_end)
        if end > start:
            total += end - start
            current_end = end
    return total


def _new_home(home: str) -> None:
    Path(home, "dagster").mkdir()
    (Path(home, "dagster") / "dagster.yaml").write_text((REPO / "config" / "dagster.yaml").read_text())


def warm_definition_cache(cache: str, source: str) -> None:
    """Fill ``cache`` with the default pipeline's definition (an untimed build in a throwaway home)."""
    os.environ[DEFINITION_CACHE] = cache
    with tempfile.TemporaryDirectory(prefix="mlops-bench-warm-") as home:
        _new_home(home)
        _materialize(home, source, "pipeline_definition")


def one_run(mode: str, select: str, source: str) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="mlops-bench-") as home:
        _new_home(home)
        try:
            if mode == "rerun":
                _materialize(home, source, select)
            started_at, wall = _materialize(home, source, select)
            return breakdown(home, started_at, wall)
        finally:
            if select == "*" or "endpoint" in select:
                _stop_endpoints(home, source)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--mode", choices=("fresh", "rerun"), default="fresh")
    parser.add_argument("--select", default="*", help="Dagster asset selection, e.g. '*trained_model'")
    parser.add_argument("--source", default="synthetic")
    parser.add_argument("--definition-cache", choices=("cold", "warm"), default="cold")
    parser.add_argument("--sqlite", choices=("tuned", "durable", "both"), default="tuned")
    parser.add_argument("--step-cache", choices=("on", "off", "both"), default="on",
                        help="pipeline_definition's step caching (on: its default); both alternates, with tuned sqlite")
    parser.add_argument("--spares", choices=("on", "off", "both"), default="on",
                        help="job processes started ahead (MLOPS_LOCAL_SPARES; on: the default); both alternates")
    args = parser.parse_args()
    warm = tempfile.TemporaryDirectory(prefix="mlops-bench-cache-")
    if args.definition_cache == "warm":
        warm_definition_cache(warm.name, args.source)
    if args.step_cache != "on" and args.sqlite != "tuned":
        parser.error("--step-cache off|both compares with tuned sqlite only")
    if args.spares != "on" and (args.sqlite != "tuned" or args.step_cache != "on"):
        parser.error("--spares off|both compares with tuned sqlite and step caching on only")
    if args.spares == "both":
        modes: tuple[str, ...] = ("spares", "cold")
    elif args.spares == "off":
        modes = ("cold",)
    elif args.step_cache == "both":
        modes: tuple[str, ...] = ("cache on", "cache off")
    elif args.step_cache == "off":
        modes = ("cache off",)
    else:
        modes = ("tuned", "durable") if args.sqlite == "both" else (args.sqlite,)
    runs: dict[str, list[dict[str, float]]] = {mode: [] for mode in modes}
    for i in range(args.runs):
        for mode in modes:  # alternated, so that a change in the machine's load hits both alike
            _set_mode(mode)
            parts = one_run(args.mode, args.select, args.source)
            runs[mode].append(parts)
            print(f"run {i + 1} ({mode}): wall {parts['wall']:6.2f} s", flush=True)
    warm.cleanup()
    print(f"\nmode {args.mode}, select {args.select!r}, source {args.source}, "
          f"definition cache {args.definition_cache}, runs {args.runs} (medians, s)")
    names = list(dict.fromkeys(k for mode in modes for parts in runs[mode] for k in parts))
    print(f"  {'':<62} " + " ".join(f"{mode:>8}" for mode in modes))
    for name in names:
        cells = []
        for mode in modes:
            values = [parts[name] for parts in runs[mode] if name in parts]
            cells.append(f"{statistics.median(values):8.2f}" if values else f"{'-':>8}")
        print(f"  {name:<62} " + " ".join(cells))
    print_floor()


def _set_mode(mode: str) -> None:
    """tuned | durable (the instance's SQLite), cache on | cache off (step caching, tuned SQLite), or
    spares | cold (job processes started ahead or not)."""
    if mode == "durable":
        os.environ[DURABLE_SQLITE] = "1"
    else:
        os.environ.pop(DURABLE_SQLITE, None)
    os.environ[STEP_CACHE] = "off" if mode == "cache off" else "on"
    os.environ[SPARES] = "0" if mode == "cold" else "1"


def _import_seconds(code: str, runs: int = 3) -> float:
    """Median wall time of a fresh interpreter running ``code`` (the process start included)."""
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def print_floor() -> None:
    """The imports a run cannot avoid, each measured in a fresh process (medians of 3)."""
    cli = _import_seconds("import dagster")
    preprocess = _import_seconds("import numpy, pandas")  # what training/preprocess.py imports
    job = _import_seconds("import pandas, sklearn.ensemble, joblib")  # train.py, evaluate.py
    server = _import_seconds("import pandas, sklearn.ensemble, joblib, starlette, uvicorn")
    floor = cli + preprocess + 2 * job + server
    print("\nfloor: imports in fresh processes that a full local run cannot avoid (medians of 3, s)")
    print(f"  {'the CLI: import dagster':<62} {cli:7.2f}")
    print(f"  {'Preprocess: import numpy, pandas':<62} {preprocess:7.2f}")
    print(f"  {'Train, Evaluate (each): import pandas, sklearn.ensemble, joblib':<62} {job:7.2f}")
    print(f"  {'the endpoint server: the same, and starlette, uvicorn':<62} {server:7.2f}")
    print(f"  {'floor of the full graph: CLI + the 3 jobs in sequence + server':<62} {floor:7.2f}")
    print(f"  {'  with Train, Evaluate and the server started ahead: CLI + Preprocess':<62} {cli + preprocess:7.2f}")


if __name__ == "__main__":
    main()
