"""``python -m mlops_dagster.monitoring.demo`` (``make monitor``): the loop after deployment, end to end.

With the dev endpoint up (after ``make run``), it sends two streams of requests to it over HTTP
(the URL in ``$MLOPS_HOME/endpoints/dev.json``), each followed by a materialization of the
``monitoring`` group:

1. rows like the training data (the synthetic generator with fresh seeds, or rows drawn from the
   model's own training split when the data source is a file), with ground truth for each
   request: every check passes and model_quality reports the served model's error;
2. the same kind of rows with several features moved by one standard deviation of the training
   data: feature_drift fails naming them, the alert sensor writes the alert to
   ``$MLOPS_HOME/alerts.jsonl``, and the drift trigger requests a retraining run.

Each step prints what happened. The runs are recorded in the Dagster instance at $DAGSTER_HOME,
so `make ui` shows them (checks, metadata, the drift picture's path).
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit

import pandas as pd
from dagster import (
    AssetKey,
    DagsterInstance,
    Definitions,
    ExecuteInProcessResult,
    RunsFilter,
    build_sensor_context,
)

from .. import naming
from ..datasets import synthetic_boston
from ..serving import process
from ..settings import Settings
from .capture import INFERENCE_ID_HEADER, VARIANT, default_capture_destination, iter_capture_files, read_capture
from .ground_truth import put_ground_truth
from .store import load_model_baselines

GROUP = "monitoring"
# More rooms, less lower-status population, fewer pupils per teacher: each one standard deviation,
# all towards dearer houses, so the predictions drift as well.
DEFAULT_SHIFT = ("rm", "-lstat", "-ptratio")
CAPTURE_TIMEOUT_SECONDS = 30.0  # the endpoint writes its capture every second
POLL_SECONDS = 0.25
QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}  # the demo prints what matters


class DemoError(RuntimeError):
    """The demo cannot go on; the message says what to do."""


@dataclass
class Sent:
    """What one stream sent: its inference ids (one per request), and rows/labels per request."""

    ids: list[str] = field(default_factory=list)
    labels: dict[str, list[float]] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    started: datetime = field(default_factory=lambda: datetime.now(UTC))


# --- the traffic --------------------------------------------------------------------------------


def dev_endpoint(settings: Settings) -> process.EndpointRecord:
    record = process.read_endpoint(Path(settings.home), "dev")
    if record is None or not process.is_alive(record):
        raise DemoError(
            f"the dev endpoint is not running (no live server recorded in {settings.home}/endpoints/dev.json): "
            "run `make run` first, then `make monitor`"
        )
    if not record.model_package_arn:
        raise DemoError(f"the dev endpoint at {record.url} serves no model yet: run `make run` first")
    return record


def training_like(
    settings: Settings, instance: DagsterInstance, store, features: list[str], target: str, rows: int, seed: int
) -> pd.DataFrame:
    """``rows`` rows like the model's training data, with the target when it is known."""
    if settings.data_source in ("", "synthetic"):
        return synthetic_boston(rows, seed)
    event = instance.get_latest_materialization_event(AssetKey("registered_model"))
    metadata = event.asset_materialization.metadata if event and event.asset_materialization else {}
    dataset = str(metadata["dataset_uri"].value) if "dataset_uri" in metadata else ""
    if not dataset:
        raise DemoError("no registered_model materialization names the training dataset: run `make run` first")
    train = pd.read_csv(io.BytesIO(store.get_bytes(dataset.rstrip("/") + "/train.csv")))
    return train.sample(rows, replace=True, random_state=seed).reset_index(drop=True)


def parse_shift(items: Sequence[str]) -> dict[str, int]:
    """``["rm", "-lstat"]`` -> ``{"rm": 1, "lstat": -1}``: the feature and the direction it moves."""
    return {item.strip().lstrip("+-"): -1 if item.strip().startswith("-") else 1 for item in items if item.strip()}


def shift(frame: pd.DataFrame, stds: dict[str, float]) -> pd.DataFrame:
    """``frame`` with each feature of ``stds`` moved by that much (plus or minus one training std)."""
    out = frame.copy()
    for name, std in stds.items():
        out[name] = out[name] + std
    return out


def send(record: process.EndpointRecord, frame: pd.DataFrame, features: list[str], target: str, batch: int) -> Sent:
    """POST ``frame`` to the endpoint as CSV requests of ``batch`` rows, each with an inference id."""
    url = urlsplit(record.url)
    sent = Sent()
    connection = http.client.HTTPConnection(url.hostname, url.port, timeout=60)
    try:
        for start in range(0, len(frame), batch):
            part = frame.iloc[start : start + batch]
            body = part[features].to_csv(header=False, index=False, lineterminator="\n").encode()
            inference_id = f"demo-{uuid.uuid4().hex[:16]}"
            headers = {"Content-Type": "text/csv", "Accept": "application/json", INFERENCE_ID_HEADER: inference_id}
            connection.request("POST", "/invocations", body=body, headers=headers)
            response = connection.getresponse()
            answer = response.read()
            if response.status != 200:
                sent.errors.append(f"{response.status}: {answer[:200].decode(errors='replace')}")
                continue
            sent.ids.append(inference_id)
            if target in part.columns:
                sent.labels[inference_id] = [float(v) for v in part[target]]
    finally:
        connection.close()
    return sent


def wait_for_capture(store, destination: str, endpoint: str, features: list[str], sent: Sent) -> int:
    """Wait until the endpoint has written the capture of every request sent (or the timeout):
    returns how many of them are in the store."""
    wanted = set(sent.ids)
    deadline = time.monotonic() + CAPTURE_TIMEOUT_SECONDS
    since = sent.started - timedelta(seconds=1)
    while True:
        uris = iter_capture_files(store, destination, endpoint, VARIANT, start=since)
        seen = set()
        for chunk in read_capture(store, uris, features, start=since):
            seen.update(i for i in chunk.inference_ids if i in wanted)
        if len(seen) == len(wanted) or time.monotonic() > deadline:
            return len(seen)
        time.sleep(POLL_SECONDS)


# --- judging ------------------------------------------------------------------------------------


def monitoring_keys(defs: Definitions) -> list[AssetKey]:
    graph = defs.resolve_asset_graph()
    return [key for key in graph.get_all_asset_keys() if graph.get(key).group_name == GROUP]


def judge(defs: Definitions, instance: DagsterInstance, label: str) -> ExecuteInProcessResult:
    """Materialize the monitoring group (its checks run with it), as the UI's "Materialize all" would."""
    job = defs.resolve_implicit_global_asset_job_def()
    return job.execute_in_process(
        instance=instance,
        asset_selection=monitoring_keys(defs),
        # The demo waited for the capture to be written: no need to leave the last seconds out.
        run_config={"ops": {"endpoint_traffic": {"config": {"settle_seconds": 0}}}, **QUIET},
        tags={"mlops/demo": label},
        raise_on_error=False,
    )


def checks_of(result: ExecuteInProcessResult) -> dict:
    return {
        e.event_specific_data.check_name: e.event_specific_data
        for e in result.all_events
        if e.event_type_value == "ASSET_CHECK_EVALUATION"
    }


def metadata_of(result: ExecuteInProcessResult, asset: str) -> dict:
    for event in result.get_asset_materialization_events():
        if event.asset_key.to_user_string() == asset:
            return {k: v.value for k, v in event.materialization.metadata.items()}
    return {}


def report(result: ExecuteInProcessResult, say) -> dict:
    """Print the window and each check; returns the checks by name."""
    if not result.success:
        failures = [
            e.step_failure_data.user_failure_data.description
            if e.step_failure_data.user_failure_data
            else e.step_failure_data.error.message
            for e in result.all_events
            if e.event_type_value == "STEP_FAILURE"
        ]
        raise DemoError(f"the monitoring run {result.run_id} failed: {' | '.join(map(str, failures))}")
    traffic = metadata_of(result, "endpoint_traffic")
    say(
        f"   window {traffic.get('window_start')} to {traffic.get('window_end')}: {traffic.get('dagster/row_count', 0):,} "
        f"rows in {traffic.get('records', 0):,} requests ({traffic.get('bad_records', 0)} unreadable), run {result.run_id[:8]}"
    )
    checks = checks_of(result)
    for name, check in sorted(checks.items()):
        say(f"   {'PASS' if check.passed else 'FAIL'} {name}: {check.description}")
    picture = metadata_of(result, "data_quality_report").get("drift_picture")
    if picture:
        say(f"   picture of the drifted features: {picture}")
    return checks


# --- alerts and the drift trigger (sensors evaluated once, as the daemon's next tick would) ----

ALERT_SENSOR = "check_failure_alert_sensor"
DRIFT_SENSOR = "drift_retraining_sensor"
DAEMON_WAIT_SECONDS = 120.0  # the sensors tick every 30-60 s under `make ui`


def alerts_file(settings: Settings) -> Path:
    return Path(settings.home) / "alerts.jsonl"


def check_cursor_now(defs: Definitions, instance: DagsterInstance) -> str:
    """The sensors' cursor before a run: past every execution of the code location's checks so far."""
    from ..sensors import CheckCursor

    keys = list(defs.get_repository_def().asset_graph.asset_check_keys)
    return CheckCursor.past_latest(instance, keys).dump(keep_after=0)


def sensor_daemon_live(instance: DagsterInstance) -> bool:
    """Is a Dagster daemon (``make ui``) ticking the sensors of this instance right now?"""
    beat = instance.get_daemon_heartbeats().get("SENSOR")
    return beat is not None and time.time() - beat.timestamp < 60


def alert_and_trigger(
    defs: Definitions, instance: DagsterInstance, settings: Settings, cursor: str, run_id: str, say, retrain: bool
) -> dict:
    """The alert sensor and the drift trigger on the evaluations after ``cursor`` (``check_cursor_now``):
    ticked once here, or (when a daemon runs them) watched until they have acted."""
    if sensor_daemon_live(instance):
        return _watch_daemon(instance, settings, run_id, say)
    outcome = {}
    lines_before = _alert_lines(settings)
    with build_sensor_context(instance=instance, cursor=cursor, definitions=defs, resources=defs.resources) as context:
        defs.resolve_sensor_def(ALERT_SENSOR)(context)
    alerts = _alert_lines(settings)[len(lines_before) :]
    outcome["alerts"] = alerts
    for alert in alerts:
        say(f"   ALERT appended to {alerts_file(settings)}: {alert.get('title')}")
    with build_sensor_context(instance=instance, cursor=cursor, definitions=defs, resources=defs.resources) as context:
        result = defs.resolve_sensor_def(DRIFT_SENSOR)(context)
    requests = list(result.run_requests or []) if result is not None else []
    outcome["run_requests"] = requests
    for request in requests:
        reason = ", ".join(f"{k}={v}" for k, v in request.tags.items() if k.startswith("mlops/"))
        say(f"   RETRAIN requested by {DRIFT_SENSOR}: run key {request.run_key} ({reason})")
    if not requests:
        say(f"   {DRIFT_SENSOR} requested no run: {getattr(result, 'skip_message', None) or 'see its cooldown'}")
    elif retrain:
        say("   Running retraining_job with the request's tags (the new model is registered, not promoted):")
        job = defs.resolve_job_def("retraining_job")
        run = job.execute_in_process(
            instance=instance, tags=dict(requests[0].tags), run_config=QUIET, raise_on_error=False
        )
        say(f"   retraining run {run.run_id[:8]}: {'succeeded' if run.success else 'FAILED'}")
    else:
        say(
            "   (shown, not run: `make monitor RETRAIN=1` runs it here; under `make ui` the daemon's own "
            f"{DRIFT_SENSOR} launches it)"
        )
    return outcome


def _alert_lines(settings: Settings) -> list[dict]:
    path = alerts_file(settings)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _watch_daemon(instance: DagsterInstance, settings: Settings, run_id: str, say) -> dict:
    say(f"   A Dagster daemon runs the sensors (make ui): waiting up to {DAEMON_WAIT_SECONDS:.0f} s for it to act.")
    deadline = time.monotonic() + DAEMON_WAIT_SECONDS
    alerts, runs = [], []
    while time.monotonic() < deadline and not (alerts and runs):
        alerts = [a for a in _alert_lines(settings) if a.get("run_id") == run_id]
        runs = instance.get_run_records(RunsFilter(tags={"mlops/trigger": "drift"}), limit=1)
        runs = [r for r in runs if r.create_timestamp.timestamp() > time.time() - DAEMON_WAIT_SECONDS * 2]
        time.sleep(1.0)
    for alert in alerts:
        say(f"   ALERT appended to {alerts_file(settings)}: {alert.get('title')}")
    for record in runs:
        say(f"   RETRAIN run {record.dagster_run.run_id[:8]} launched by {DRIFT_SENSOR} (see the UI)")
    if not (alerts and runs):
        say("   the daemon had not acted yet (its sensors may be stopped in the UI): see Automation in `make ui`")
    return {"alerts": alerts, "runs": runs}


# --- main ---------------------------------------------------------------------------------------


def run(
    settings: Settings,
    defs: Definitions,
    instance: DagsterInstance,
    rows: int = 600,
    batch: int = 10,
    shifted: Sequence[str] = DEFAULT_SHIFT,
    seed: int = 2024,
    say=print,
    retrain: bool = False,
) -> dict:
    """The whole demonstration; returns the checks of both windows by stream."""
    store = defs.resources["store"]
    record = dev_endpoint(settings)
    baselines = load_model_baselines(store, defs.resources["sagemaker"].get_client(), record.model_package_arn)
    features = baselines.data.features
    directions = parse_shift(shifted)
    unknown = [f for f in directions if f not in features]
    if unknown:
        raise DemoError(f"cannot shift {unknown}: the served model's features are {features}")
    target = _target(instance)
    destination = default_capture_destination(settings)
    endpoint = naming.endpoint_name(settings.pipeline_name, "dev")
    say(f"Dev endpoint {record.url} serves {record.model_package_arn}.")

    say("0. Judging what it served before this demo, so the demo's windows hold only its own requests.")
    settle(record)
    report(judge(defs, instance, "before"), say)

    outcome = {}
    stds = {
        f: sign * float(baselines.data.feature_statistics(f)["numerical_statistics"]["std_dev"])
        for f, sign in directions.items()
    }
    streams = [
        ("like-training", "1. Sending", training_like(settings, instance, store, features, target, rows, seed)),
        (
            "shifted",
            "2. Sending",
            shift(training_like(settings, instance, store, features, target, rows, seed + 1), stds),
        ),
    ]
    for label, step, frame in streams:
        what = (
            "rows like the training data"
            if label == "like-training"
            else "rows with " + ", ".join(f"{f} {s:+.3g}" for f, s in stds.items()) + " (one training std each)"
        )
        say(f"{step} {len(frame):,} {what} in requests of {batch}.")
        sent = send(record, frame, features, target, batch)
        if sent.errors:
            say(f"   {len(sent.errors)} requests failed, first: {sent.errors[0]}")
        settle(record)
        captured = wait_for_capture(store, destination, endpoint, features, sent)
        say(f"   {len(sent.ids)} requests answered; {captured} captured in {destination}/{endpoint}/")
        if label == "like-training" and sent.labels:
            uri = put_ground_truth(store, f"s3://{settings.bucket}/{settings.prefix}/groundtruth", sent.labels)
            say(f"   ground truth of these requests (by inference id) uploaded: {uri}")
        say("   Materializing the monitoring group:")
        before = check_cursor_now(defs, instance)
        result = judge(defs, instance, label)
        outcome[label] = report(result, say)
        if label == "shifted":
            say("3. The alert sensor and the drift trigger see the failed checks:")
            outcome["sensors"] = alert_and_trigger(defs, instance, settings, before, result.run_id, say, retrain)
    drift = outcome["shifted"].get("feature_drift")
    if drift is not None and not drift.passed:
        say("Done: the first window passed, the shifted one failed feature_drift. See `make ui` for the runs.")
    else:
        say("Done, but the shifted window did not fail feature_drift: see the table above.")
    return outcome


def settle(record: process.EndpointRecord) -> None:
    """Let the window about to be judged hold every request sent so far: wait for the next whole
    second (inferenceTime is to the second and a window ends on a whole second), then have the
    endpoint write what its capture still buffers."""
    time.sleep(1.0 - (time.time() % 1.0) + 0.01)
    if process.flush_capture(record) is None:
        raise DemoError(
            f"the dev endpoint at {record.url} does not capture its requests: deploy it with data capture on "
            "(dev_endpoint's capture_enabled, the default), then run `make monitor` again"
        )


def _target(instance: DagsterInstance) -> str:
    event = instance.get_latest_materialization_event(AssetKey("registered_model"))
    metadata = event.asset_materialization.metadata if event and event.asset_materialization else {}
    return str(metadata["target"].value) if "target" in metadata else "medv"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mlops_dagster.monitoring.demo", description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=600, help="rows per stream (default 600)")
    parser.add_argument("--batch", type=int, default=10, help="rows per request (default 10)")
    parser.add_argument(
        "--shift",
        default=",".join(DEFAULT_SHIFT),
        help="features of the second stream to move up (-name: down), comma-separated",
    )
    parser.add_argument("--retrain", action="store_true", help="also run the retraining the drift trigger requests")
    args = parser.parse_args(argv)
    if args.rows < 1 or args.batch < 1:
        parser.error("--rows and --batch must be at least 1")
    from .. import build_definitions

    settings = Settings.from_env()
    defs = build_definitions(settings)
    try:
        shifted = args.shift.split(",")
        run(settings, defs, DagsterInstance.get(), args.rows, args.batch, shifted, retrain=args.retrain)
    except DemoError as err:
        print(f"make monitor: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
