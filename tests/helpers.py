"""Small helpers shared by the foundation tests: CSV builders and readers of Dagster run results."""

from __future__ import annotations

from pathlib import Path

from dagster import DagsterInstance, ExecuteInProcessResult, materialize

from mlops_dagster.datasets import synthetic_boston, to_csv_bytes


def boston_lines(rows: int = 40, seed: int = 7) -> list[str]:
    """A valid Boston-schema CSV as lines (header first), from the seeded generator."""
    return to_csv_bytes(synthetic_boston(rows, seed)).decode().splitlines()


def set_cell(lines: list[str], row: int, column: str, value: str) -> list[str]:
    """Copy of ``lines`` with one cell replaced; ``row`` counts data rows from 1 (line ``row + 1``)."""
    out = list(lines)
    header = out[0].split(",")
    cells = out[row].split(",")
    cells[header.index(column)] = value
    out[row] = ",".join(cells)
    return out


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


def store_files(home: Path) -> list[str]:
    """Every file under $MLOPS_HOME/s3 (objects and any leftover temporary parts)."""
    root = home / "s3"
    if not root.exists():
        return []
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def run_data_assets(
    defs,
    instance: DagsterInstance | None = None,
    raw_config: dict | None = None,
    s3_config: dict | None = None,
    selection: list[str] | None = None,
) -> ExecuteInProcessResult:
    ops: dict = {}
    if raw_config is not None:
        ops["raw_data"] = {"config": raw_config}
    if s3_config is not None:
        ops["s3_dataset"] = {"config": s3_config}
    return materialize(
        [defs.get_assets_def("raw_data"), defs.get_assets_def("s3_dataset")],
        resources=defs.resources,
        run_config={"ops": ops},
        instance=instance or DagsterInstance.ephemeral(),
        selection=selection,
        raise_on_error=False,
    )


def check_evaluations(result: ExecuteInProcessResult) -> dict:
    """check name -> AssetCheckEvaluation of the run (the same reading make monitor prints)."""
    from mlops_dagster.monitoring.demo import checks_of

    return checks_of(result)


def failure_text(result: ExecuteInProcessResult) -> str:
    """Messages of every step failure, including the chained causes (the user's exception)."""
    texts = []
    for event in result.all_events:
        if event.event_type_value != "STEP_FAILURE":
            continue
        err = event.event_specific_data.error
        while err is not None:
            texts.append(err.message)
            err = err.cause or err.context
    return "\n".join(texts)


def materialized(result: ExecuteInProcessResult, asset: str) -> list:
    """AssetMaterializations of ``asset`` in the run."""
    return [
        e.event_specific_data.materialization
        for e in result.all_events
        if e.event_type_value == "ASSET_MATERIALIZATION" and e.asset_key.to_user_string() == asset
    ]


def started_steps(result: ExecuteInProcessResult) -> set[str]:
    return {e.step_key for e in result.all_events if e.event_type_value == "STEP_START"}


def meta(materialization, key: str):
    return materialization.metadata[key].value


def materialize_assets(defs, instance: DagsterInstance, keys: list[str], ops: dict | None = None,
                       selection: list[str] | None = None) -> ExecuteInProcessResult:  # fmt: skip
    """Materialize ``keys`` (or the ``selection`` among them) with per-asset config in ``ops``."""
    return materialize(
        [defs.get_assets_def(k) for k in keys],
        resources=defs.resources,
        run_config={"ops": {k: {"config": v} for k, v in (ops or {}).items()}},
        instance=instance,
        selection=selection,
        raise_on_error=False,
    )


def latest_metadata(result: ExecuteInProcessResult, key: str) -> dict | None:
    """Metadata values of the last materialization of ``key`` in the run, or None."""
    events = [m for m in result.get_asset_materialization_events() if m.asset_key.to_user_string() == key]
    return {k: v.value for k, v in events[-1].materialization.metadata.items()} if events else None


def step_failure_text(result: ExecuteInProcessResult, step: str | None = None) -> str:
    """The error and user-failure description of a step's failure (the first failed step if None)."""
    failures = [
        e for e in result.all_events
        if e.event_type_value == "STEP_FAILURE" and (step is None or e.step_key == step)
    ]  # fmt: skip
    assert failures, f"{step or 'no step'} did not fail"
    data = failures[0].step_failure_data
    user = data.user_failure_data
    return "\n".join(filter(None, [data.error.message if data.error else "", user.description if user else ""]))


def run_job(defs, instance: DagsterInstance, job: str, run_config: dict | None = None):
    """Execute a job; ``result.log_text`` holds the messages its ops logged."""
    result = defs.resolve_job_def(job).execute_in_process(
        instance=instance, run_config=run_config or {}, raise_on_error=False
    )
    result.log_text = "\n".join(entry.user_message for entry in instance.all_logs(result.run_id))
    return result


def failures_text(result) -> str:
    """Text of every step failure of the run: each Failure's description and error message."""
    texts = []
    for event in result.all_events:
        if event.event_type_value == "STEP_FAILURE":
            data = event.step_failure_data
            user = data.user_failure_data
            texts += [data.error.message if data.error else "", user.description if user else ""]
    return "\n".join(texts)


def op_output_metadata(result, op: str) -> dict:
    """Metadata values of an op's (single) output."""
    [event] = [e for e in result.all_events if e.event_type_value == "STEP_OUTPUT" and e.step_key == op]
    return {k: v.value for k, v in event.event_specific_data.metadata.items()}
