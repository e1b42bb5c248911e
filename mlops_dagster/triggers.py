"""Retraining triggers (the recipe's CI/CD challenge): new data, new code, drift.

Each is a sensor with a cursor that requests ``retraining_job`` (raw_data through registered_model:
registered with its lineage and artifact hash, never deployed) with run tags that say why
(``mlops/trigger`` = data | code | drift, ``mlops/trigger_detail``); registered_model copies them
into the model's lineage, and the UI shows them on the run.

- ``new_data_sensor``: the files at MLOPS_DATA_SOURCE (a file or a folder: size, mtime and sha256
  of each file) or the objects under its s3:// prefix (ListObjectsV2: ETag). The run key is the
  object and its version, so the same data never trains twice.
- ``new_code_sensor``: the head commit of the code repository's branch (the local bare repository;
  CodeCommit GetBranch on aws). Its first tick records the commit and starts nothing.
- ``drift_retraining_sensor``: a failed evaluation of a check of the code location whose name
  contains ``drift`` or ``model_quality``, at most once per MLOPS_DRIFT_RETRAIN_HOURS (read like
  ``check_failure_alert_sensor``'s: per check, from the event log's check index).

They start SageMaker work, so on aws they start stopped unless MLOPS_AUTOMATION=on.
"""

from __future__ import annotations

import json
import time
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass
from pathlib import Path

from dagster import (
    ConfigurableResource,
    DefaultSensorStatus,
    RunRequest,
    SensorDefinition,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    sensor,
)

from .infrastructure import read_code_commit
from .jobs import retraining_job, trigger_tags
from .resources.infrastructure import Infrastructure
from .resources.object_store import LocalObjectStore, sha256_file, split_uri
from .sensors import NO_DEFINITIONS, CheckCursor, check_events, watched_checks
from .settings import Settings

SETTLE_SECONDS = 5.0  # a local file modified more recently may still be being written: next tick
DRIFT_MARKERS = ("drift", "model_quality")
RETRAINED = "retraining requested"  # the drift cursor's key for its last request
DEFAULT_BRANCH = "main"


@dataclass(frozen=True)
class SourceObject:
    """A file or object at the data source; ``version`` is its sha256 (files) or ETag (S3)."""

    uri: str
    version: str
    modified: float  # seconds since the epoch
    size: int
    settling: bool = False  # modified moments ago: not judged until it has settled


class SourceLister(ConfigurableResource, ABC):
    """Lists the objects under an s3:// data source, each with a version."""

    @abstractmethod
    def objects(self, uri: str, known: dict[str, SourceObject]) -> list[SourceObject]:
        """Objects whose key starts with ``uri``'s key; ``known`` (the last tick's) saves re-hashing."""


class LocalSourceLister(SourceLister):
    """s3:// sources in the local object store (folders under $MLOPS_HOME/s3)."""

    store: LocalObjectStore

    def objects(self, uri: str, known: dict[str, SourceObject]) -> list[SourceObject]:
        return scan_files([(u, self.store.path_for(u)) for u in self.store.list(uri)], known)


def scan_files(items: list[tuple[str, Path]], known: dict[str, SourceObject]) -> list[SourceObject]:
    """Each file's size, mtime and sha256; a file whose size and mtime are unchanged keeps its known
    sha256 (hashing a large file every tick costs more than the tick)."""
    found, now = [], time.time()
    for uri, path in items:
        try:
            stat = path.stat()
        except FileNotFoundError:  # removed since it was listed
            continue
        modified = stat.st_mtime_ns / 1e9
        if now - modified < SETTLE_SECONDS:
            found.append(SourceObject(uri, "", modified, stat.st_size, settling=True))
            continue
        old = known.get(uri)
        same = old is not None and (old.modified, old.size) == (modified, stat.st_size)
        found.append(SourceObject(uri, old.version if same else sha256_file(path), modified, stat.st_size))
    return found


def _local_items(path: Path) -> list[tuple[str, Path]]:
    if path.is_file():
        return [(str(path), path)]
    files = sorted(
        p
        for p in path.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts)
    )
    return [(str(p), p) for p in files]


def _exact_or_folder(uri: str, objects: list[SourceObject]) -> list[SourceObject]:
    """``s3://b/data.csv`` names that object alone (not ``data.csv.bak``); otherwise the URI is a folder."""
    exact = [o for o in objects if o.uri == uri]
    if exact:
        return exact
    folder = uri.rstrip("/") + "/"
    return [o for o in objects if o.uri.startswith(folder)]


@dataclass
class DataCursor:
    source: str
    objects: dict[str, SourceObject]

    @classmethod
    def load(cls, raw: str | None) -> DataCursor | None:
        if not raw:
            return None
        body = json.loads(raw)
        return cls(body["source"], {uri: SourceObject(**o) for uri, o in body["objects"].items()})

    def dump(self) -> str:
        return json.dumps({"source": self.source, "objects": {u: asdict(o) for u, o in self.objects.items()}})


def _status(settings: Settings) -> DefaultSensorStatus:
    return DefaultSensorStatus.RUNNING if settings.automation_on else DefaultSensorStatus.STOPPED


def _starts(settings: Settings) -> str:
    return "Starts running." if settings.automation_on else "Starts stopped (MLOPS_AUTOMATION=on to start it running)."


def evaluate_new_data(context: SensorEvaluationContext, settings: Settings, source_lister: SourceLister):
    source = settings.data_source.strip()
    if source in ("", "synthetic"):
        return SkipReason(
            "MLOPS_DATA_SOURCE is 'synthetic': there is no data source to watch "
            "(set it to a CSV/Parquet file, a folder of them, or an s3:// URI)"
        )
    cursor = DataCursor.load(context.cursor)
    if cursor is not None and cursor.source != source:
        context.log.info(f"the data source changed from {cursor.source} to {source}: taking stock again")
        cursor = None
    known = cursor.objects if cursor else {}
    if source.startswith("s3://"):
        split_uri(source)  # a malformed URI fails here, naming it
        listed = _exact_or_folder(source, source_lister.objects(source, known))
    else:
        path = Path(source).expanduser().resolve()
        if not path.exists():
            return SkipReason(f"data source {path} does not exist (yet)")
        listed = scan_files(_local_items(path), known)
    settled = {o.uri: o for o in listed if not o.settling}
    # A file being rewritten keeps its last known version until it settles.
    seen = {**{o.uri: known[o.uri] for o in listed if o.settling and o.uri in known}, **settled}
    updated = DataCursor(source, seen).dump()
    if cursor is None:
        return SensorResult(
            cursor=updated,
            skip_reason=f"first tick: recorded {len(settled)} objects at {source}; new or changed ones request retraining",
        )
    changed = [o for o in settled.values() if o.uri not in known or known[o.uri].version != o.version]
    if not changed:
        return SensorResult(cursor=updated, skip_reason=f"no new or changed object at {source}")
    # Each file is a whole dataset for raw_data: train on the newest; the others are recorded as seen.
    newest = max(changed, key=lambda o: (o.modified, o.uri))
    if len(changed) > 1:
        context.log.info(f"{len(changed)} new or changed objects at {source}; retraining on the newest, {newest.uri}")
    request = RunRequest(
        run_key=f"data:{newest.uri}@{newest.version}",
        run_config={"ops": {"raw_data": {"config": {"source": newest.uri}}}},
        tags=trigger_tags("data", f"{newest.uri}@{newest.version}"),
    )
    return SensorResult(run_requests=[request], cursor=updated)


def evaluate_new_code(context: SensorEvaluationContext, settings: Settings, infrastructure: Infrastructure):
    branch = (read_code_commit(settings.home) or {}).get("branch") or DEFAULT_BRANCH
    head = infrastructure.head_commit(branch)
    if head is None:
        return SkipReason(
            f"code repository {settings.repository_name} has no branch {branch} yet: run setup_infrastructure"
        )
    previous = json.loads(context.cursor) if context.cursor else None
    updated = json.dumps({"branch": branch, "commit": head})
    if previous is None or previous.get("branch") != branch:
        return SensorResult(
            cursor=updated, skip_reason=f"first tick: {branch} is at {head[:12]}; a new commit requests retraining"
        )
    if previous["commit"] == head:
        return SensorResult(cursor=updated, skip_reason=f"{branch} is still at {head[:12]}")
    context.log.info(f"{settings.repository_name} {branch} moved from {previous['commit'][:12]} to {head[:12]}")
    request = RunRequest(
        run_key=f"code:{head}", tags=trigger_tags("code", f"{settings.repository_name}@{branch}: {head}")
    )
    return SensorResult(run_requests=[request], cursor=updated)


def is_drift_check(check_name: str) -> bool:
    return any(marker in check_name for marker in DRIFT_MARKERS)


def evaluate_drift(context: SensorEvaluationContext, settings: Settings):
    keys = [key for key in watched_checks(context) if is_drift_check(key.name)]
    if not keys:
        reason = NO_DEFINITIONS if context.repository_def is None else "the code location has no drift checks"
        return SensorResult(cursor=context.cursor, skip_reason=reason)
    period = settings.drift_retrain_hours * 3600
    cursor = CheckCursor.load(context.cursor) or CheckCursor()
    events = check_events(context.instance, keys, cursor, period)
    requests = []
    for event in events:
        if event.evaluation.passed:
            continue
        if cursor.cooling(RETRAINED, event.timestamp, period):
            context.log.info(f"{event.check_key} failed (execution {event.execution_id}): retraining was requested "
                             f"less than {settings.drift_retrain_hours} h before, none now")  # fmt: skip
            continue
        requests.append(
            RunRequest(
                # check key and execution id: unique across runs (and unlike the storage ids keyed before)
                run_key=f"drift:{event.check_key}:{event.execution_id}",
                tags=trigger_tags("drift", f"{event.check_key} failed in run {event.run_id}"),
            )
        )
        cursor.last[RETRAINED] = event.timestamp
    dumped = cursor.dump(keep_after=time.time() - period)
    if requests:
        return SensorResult(run_requests=requests, cursor=dumped)
    return SensorResult(cursor=dumped, skip_reason=f"{len(events)} check evaluations read: no drift retraining due")


def retraining_triggers(settings: Settings) -> list[SensorDefinition]:
    """The three triggers, running or stopped by default as MLOPS_AUTOMATION says."""
    status = _status(settings)

    @sensor(
        name="new_data_sensor", job=retraining_job, minimum_interval_seconds=60, default_status=status,
        description=f"Retrains when a file or object at MLOPS_DATA_SOURCE is new or changed (once per version). {_starts(settings)}",
    )  # fmt: skip
    def new_data_sensor(context: SensorEvaluationContext, settings: Settings, source_lister: SourceLister):
        return evaluate_new_data(context, settings, source_lister)

    @sensor(
        name="new_code_sensor", job=retraining_job, minimum_interval_seconds=60, default_status=status,
        description="Rebuilds the pipeline definition and retrains when the code repository's branch has a new "
        f"commit (the first tick only records it). {_starts(settings)}",
    )  # fmt: skip
    def new_code_sensor(context: SensorEvaluationContext, settings: Settings, infrastructure: Infrastructure):
        return evaluate_new_code(context, settings, infrastructure)

    @sensor(
        name="drift_retraining_sensor", job=retraining_job, minimum_interval_seconds=60, default_status=status,
        description="Retrains when a drift or model-quality check fails, at most once per MLOPS_DRIFT_RETRAIN_HOURS. "
        f"{_starts(settings)}",
    )  # fmt: skip
    def drift_retraining_sensor(context: SensorEvaluationContext, settings: Settings):
        return evaluate_drift(context, settings)

    return [new_data_sensor, new_code_sensor, drift_retraining_sensor]
