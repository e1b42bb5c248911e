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
