"""State of the local SageMaker service that must survive races and reboots: registry updates that
run at once both persist, and an execution whose worker cannot be alive any more is reaped."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import psutil
import pytest

from mlops_dagster.sagemaker.local.models import LocalSageMakerBackend, ResourceNotFound, StateDB

GROUP = "models"
SHA = "0123456789abcdef" * 4
STALE = 60.0


@pytest.fixture
def backend(mlops_home: Path) -> LocalSageMakerBackend:
    return LocalSageMakerBackend(mlops_home, stale_after_seconds=STALE)


def new_package(backend: LocalSageMakerBackend) -> str:
    spec = {"Containers": [{"Image": "img", "ModelDataUrl": "s3://b/model.tar.gz"}]}
    return backend.create_package(GROUP, {"InferenceSpecification": spec}, None, None, create_group=True).arn


# --- item: no lost update in the model registry --------------------------------------------


def test_an_approval_racing_the_hash_recording_keeps_both(backend: LocalSageMakerBackend, mlops_home: Path):
    """The interleaving that lost the hash: the approval reads the package, the hash is recorded
    (another process, its own backend), then the approval writes. Both must persist."""
    arn = new_package(backend)
    recorder = LocalSageMakerBackend(mlops_home)
    read = backend.get_package
    raced = []

    def get_package_then_race(package_arn: str):
        package = read(package_arn)
        if not raced:
            raced.append(True)
            recorder.update_package(package_arn, None, None, customer_metadata={"mlops:model_sha256": SHA})
        return package

    backend.get_package = get_package_then_race
    backend.update_package(arn, "Approved", "reviewed")
    assert raced, "the hook never ran: update_package no longer reads through get_package"
    package = recorder.get_package(arn)
    assert (package.approval_status, package.approval_description) == ("Approved", "reviewed")
    assert package.body["CustomerMetadataProperties"] == {"mlops:model_sha256": SHA}


def test_concurrent_registry_updates_all_persist(backend: LocalSageMakerBackend, mlops_home: Path):
    """Three writers (approval, hash, another property) at once, from separate backends, many times."""
    updates = [("Approved", "reviewed", None), (None, None, {"mlops:model_sha256": SHA}), (None, None, {"team": "ml"})]
    for round_ in range(15):
        arn = new_package(backend)
        start, errors = threading.Barrier(len(updates)), []

        def run(arn: str, status: str | None, comment: str | None, metadata: dict | None, start=start, errors=errors):
            writer = LocalSageMakerBackend(mlops_home)
            start.wait()
            try:
                writer.update_package(arn, status, comment, customer_metadata=metadata)
            except BaseException as err:  # reported below: a thread's exception is otherwise lost
                errors.append(err)

        threads = [threading.Thread(target=run, args=(arn, *update)) for update in updates]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert errors == []
        package = backend.get_package(arn)
        assert package.approval_status == "Approved", round_
        assert package.body["CustomerMetadataProperties"] == {"mlops:model_sha256": SHA, "team": "ml"}, round_


def test_update_and_delete_name_a_package_that_is_not_there(backend: LocalSageMakerBackend):
    arn = new_package(backend)
    backend.delete_package(arn)
    for call in (lambda: backend.update_package(arn, "Approved", None), lambda: backend.delete_package(arn)):
        with pytest.raises(ResourceNotFound, match=f"model package '{arn}' does not exist in us-east-1"):
            call()


# --- item: executions whose worker cannot be alive are reaped, across reboots ---------------


def executing(backend: LocalSageMakerBackend, **columns) -> str:
    """An Executing execution (no worker launched) whose row then gets ``columns``."""
    if not any(p.name == "p" for p in backend.list_pipelines()):
        body = json.dumps({"Version": "2020-12-01", "Metadata": {}, "Parameters": [], "Steps": []})
        backend.create_pipeline("p", body, None, None, None)
    arn = backend._insert_execution("p", [], None, None, None).arn
    assignments = ", ".join(f"{column} = ?" for column in columns)
    with backend.db.write() as conn:
        conn.execute(f"UPDATE executions SET {assignments} WHERE arn = ?", (*columns.values(), arn))
    return arn


def this_process() -> dict:
    return {"worker_pid": os.getpid(), "worker_created": psutil.Process().create_time()}


def test_a_worker_from_before_a_reboot_is_reaped(backend: LocalSageMakerBackend):
    """After a reboot the monotonic clock starts again near zero: a heartbeat taken before it looks
    fresh (or from the future), and pids are handed out again. Neither may keep it Executing."""
    now = time.monotonic()
    cases = {
        # the boot id says another boot; on this boot's clock the heartbeat looks a second old
        "other boot, no pid": {"heartbeat_boot": "an-earlier-boot", "heartbeat_clock": now - 1},
        # the pid is alive again (this process), but nothing proves it is the worker that was started
        "other boot, reused pid": {
            "heartbeat_boot": "an-earlier-boot", "heartbeat_clock": now - 1, "worker_pid": os.getpid(),
        },
        # a row that kept no boot id (or a clock that cannot be trusted): a reading ahead of ours
        "clock ahead, no pid": {"heartbeat_boot": None, "heartbeat_clock": now + 1e6},
        "clock ahead, reused pid": {"heartbeat_boot": None, "heartbeat_clock": now + 1e6, "worker_pid": os.getpid()},
    }  # fmt: skip
    for case, columns in cases.items():
        arn = executing(backend, **columns)
        execution = backend.get_execution(arn)
        assert execution.status == "Failed", case
        who = f"local worker process {os.getpid()}" if "worker_pid" in columns else f"the local worker of {arn}"
        assert execution.failure_reason.startswith(
            f"{who} did not survive a restart of this machine (no heartbeat since "
        )
        assert execution.failure_reason.endswith("from an earlier boot); start a new execution"), case
    assert psutil.Process().is_running()  # the reused pid (this process) was not killed


def test_an_execution_whose_worker_pid_was_never_recorded_is_reaped_after_the_grace(backend: LocalSageMakerBackend):
    arn = executing(backend, heartbeat_clock=time.monotonic() - STALE - 5)
    execution = backend.get_execution(arn)
    assert execution.status == "Failed"
    assert execution.failure_reason.startswith(f"the local worker of {arn} never started: no worker pid was recorded")
    assert execution.failure_reason.endswith(f"(over {STALE:g} s)")
    assert [s.status for s in backend.list_steps(arn)] == []


def test_live_workers_are_not_reaped(backend: LocalSageMakerBackend):
    now = time.monotonic()
    alive = {
        "a live worker": this_process(),
        "a launch within its grace": {"heartbeat_clock": now - STALE / 2},
        # a laptop that slept an hour: the wall clock moved, the monotonic clock did not
        "after a suspend": {**this_process(), "heartbeat": time.time() - 3600},
        "a row without a boot id": {**this_process(), "heartbeat_boot": None},
    }
    for case, columns in alive.items():
        arn = executing(backend, **columns)
        assert backend.get_execution(arn).status == "Executing", case
        backend.finish_execution(arn, "Stopped")


def test_an_old_state_db_gains_the_boot_column(mlops_home: Path):
    backend = LocalSageMakerBackend(mlops_home)
    arn = executing(backend, **this_process())
    with backend.db.write() as conn:
        conn.execute("ALTER TABLE executions DROP COLUMN heartbeat_boot")  # as an earlier version wrote it
    StateDB._initialized.discard(str(backend.db.path))
    reopened = LocalSageMakerBackend(mlops_home)
    execution = reopened.get_execution(arn)
    assert (execution.status, execution.heartbeat_boot) == ("Executing", None)
    reopened.heartbeat(arn)
    assert reopened.get_execution(arn).heartbeat_boot == Path("/proc/sys/kernel/random/boot_id").read_text().strip()
