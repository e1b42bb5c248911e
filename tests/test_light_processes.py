"""Processes the local backend starts do not import Dagster (about a second each on this machine)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from mlops_dagster.objects import LocalObjects
from mlops_dagster.resources.object_store import LocalObjectStore
from mlops_dagster.sagemaker.local import worker

_PROBE = """
import json, sys, types
package = types.ModuleType('mlops_dagster')
package.__path__ = [sys.argv[1]]
sys.modules['mlops_dagster'] = package
from mlops_dagster.sagemaker.local import jobs, model_steps, worker
from mlops_dagster.monitoring.capture import records
store = worker.store_from_config(sys.argv[2])
store.put_bytes('s3://bucket/key', b'body')
print(json.dumps({'dagster': 'dagster' in sys.modules, 'store': type(store).__name__,
                  'body': store.get_bytes('s3://bucket/key').decode()}))
"""


def test_the_worker_runs_jobs_on_a_store_without_importing_dagster(tmp_path):
    config = worker.store_config(LocalObjectStore(root=str(tmp_path)))
    done = subprocess.run(
        [sys.executable, "-P", "-c", _PROBE, str(worker._PACKAGE_DIR), config],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert json.loads(done.stdout) == {"dagster": False, "store": "LocalObjects", "body": "body"}
    # The same files the Dagster resource sees.
    assert LocalObjectStore(root=str(tmp_path)).get_bytes("s3://bucket/key") == b"body"


def test_store_config_accepts_both_local_stores_and_refuses_others(tmp_path):
    assert json.loads(worker.store_config(LocalObjects(tmp_path)))["root"] == str(tmp_path.resolve())

    class Elsewhere:
        root = str(tmp_path)

    with pytest.raises(TypeError, match="runs on a LocalObjectStore, not Elsewhere"):
        worker.store_config(Elsewhere())
