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
    """check name -> AssetCheckEvaluation of the run."""
    return {
        e.event_specific_data.check_name: e.event_specific_data
        for e in result.all_events
        if e.event_type_value == "ASSET_CHECK_EVALUATION"
    }


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
