"""The detached pipeline worker: what its interpreter may import from where it was started."""

from __future__ import annotations

from mlops_dagster.resources.object_store import LocalObjectStore
from mlops_dagster.sagemaker.local import worker

MISSING = "arn:aws:sagemaker:us-east-1:000000000000:pipeline/p/execution/doesnotexist"


def test_the_working_directory_cannot_shadow_the_standard_library(mlops_home, tmp_path, monkeypatch):
    cwd = tmp_path / "checkout"
    cwd.mkdir()
    marker = cwd / "shadowed"
    # The worker imports json first thing; a json.py here must not be it.
    (cwd / "json.py").write_text(f"open({str(marker)!r}, 'w').write('imported')\nraise SystemExit('planted json.py')\n")
    monkeypatch.chdir(cwd)
    log = tmp_path / "worker.log"

    proc = worker.launch(mlops_home, LocalObjectStore(root=str(mlops_home / "s3")), MISSING, log)
    proc.wait(timeout=120)  # a bound, not a timing: the worker exits once it finds no such execution

    assert not marker.exists(), f"the worker imported {cwd / 'json.py'}"
    assert proc.args[1] == "-P"
    text = log.read_text()
    assert "planted json.py" not in text
    assert "doesnotexist" in text, text  # it ran past its imports, to looking the execution up


def test_waiting_on_a_launched_worker_returns_when_it_exits(monkeypatch):
    """``worker.wait`` returns at the worker's exit, not after the whole pause."""
    import subprocess
    import sys
    import threading

    proc = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    monkeypatch.setitem(worker._by_execution, MISSING, proc)
    waiter = threading.Thread(target=worker.wait, args=(MISSING, 3600))
    waiter.start()
    proc.stdin.close()  # the "worker" ends
    waiter.join(timeout=120)  # a bound, not a timing: a wait that ignored the exit would take an hour
    assert not waiter.is_alive()
    assert proc.returncode == 0


def test_local_checks_poll_at_a_short_fixed_interval_and_aws_backs_off(mlops_home):
    from itertools import islice

    from mlops_dagster.resources.sagemaker import LOCAL_POLL_SECONDS, LocalSageMaker, SageMaker

    store = LocalObjectStore(root=str(mlops_home / "s3"))
    local = LocalSageMaker(home=str(mlops_home), region="us-east-1", bucket="b", store=store)
    assert list(islice(local.poll_pauses(15), 4)) == [LOCAL_POLL_SECONDS] * 4
    assert list(islice(local.poll_pauses(0.1), 2)) == [0.1, 0.1]  # max_poll still bounds it
    # SageMaker (the aws resource inherits the base class's back-off)
    assert list(islice(SageMaker.poll_pauses(local, 15), 6)) == [1, 2, 4, 8, 15, 15]
