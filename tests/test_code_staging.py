"""Staging of the training scripts: never run code someone else (or an earlier run) left behind.

The SDK uploads the staged folder and hashes its path, so it must be stable and private: these
tests plant code where an attacker could and check that the definition still carries the real
scripts, byte for byte, or that staging refuses with a message saying what to remove.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import stat
import tarfile
import tempfile
from pathlib import Path

import pytest

from mlops_dagster.resources.object_store import LocalObjectStore
from mlops_dagster.sagemaker.offline import local_boto_session
from mlops_dagster.sagemaker.pipeline_builder import PipelineSpec, build_pipeline
from mlops_dagster.sagemaker.training_code import TRAINING_DIR, StagingError, stage_training_code

ROLE = "arn:aws:iam::000000000000:role/mlops-local-execution-role"
PLANTED = b"import os\nos.system('echo pwned')\n"
REAL = {p.name: p.read_bytes() for p in sorted(TRAINING_DIR.glob("*.py"))}
OTHER_UID = 4242


@pytest.fixture
def temp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A temporary directory standing in for /tmp (root's, world-writable, sticky) for this test."""
    shared = tmp_path / "tmp"
    shared.mkdir()
    shared.chmod(0o1777)
    monkeypatch.setattr(tempfile, "tempdir", str(shared))
    return shared


def digest_folder_name() -> str:
    """The content-addressed folder name of the real scripts (sha256 over names and bytes)."""
    digest = hashlib.sha256()
    for name, data in sorted(REAL.items()):
        digest.update(name.encode() + b"\0" + data + b"\0")
    return digest.hexdigest()[:32]


def plant(folder: Path) -> Path:
    """The real scripts, except a train.py that is not ours."""
    folder.mkdir(parents=True)
    for name, data in REAL.items():
        (folder / name).write_bytes(PLANTED if name == "train.py" else data)
    return folder


def user_root(temp: Path) -> Path:
    return temp / f"mlops-dagster-code-{os.getuid()}"


def build(store_root: Path) -> dict:
    store = LocalObjectStore(root=str(store_root))
    spec = PipelineSpec(name="mlops-pipeline", bucket="mlops-local", prefix="mlops", region="us-east-1", role_arn=ROLE)
    return json.loads(build_pipeline(spec, local_boto_session(store, "mlops-local", "us-east-1")).definition())


def shipped_code(doc: dict, store_root: Path) -> dict[str, bytes]:
    """What the definition's steps would run: the Train sourcedir.tar.gz and the processing scripts."""
    store = LocalObjectStore(root=str(store_root))
    steps = {s["Name"]: s["Arguments"] for s in doc["Steps"]}
    sourcedir = json.loads(steps["Train"]["HyperParameters"]["sagemaker_submit_directory"])
    with tarfile.open(fileobj=io.BytesIO(store.get_bytes(sourcedir))) as tar:
        code = {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}
    for step in ("Preprocess", "Evaluate"):
        uri = next(i["S3Input"]["S3Uri"] for i in steps[step]["ProcessingInputs"] if i["InputName"] == "code")
        code[f"{step}:{uri.rsplit('/', 1)[1]}"] = store.get_bytes(uri)
    return code


def assert_real_code(code: dict[str, bytes]) -> None:
    assert code["train.py"] == REAL["train.py"], "the definition ships a train.py that is not training/train.py"
    assert code["Preprocess:preprocess.py"] == REAL["preprocess.py"]
    assert code["Evaluate:evaluate.py"] == REAL["evaluate.py"]


# --------------------------------------------------------------------------- planted or stale code


def test_code_planted_in_the_shared_temp_folder_is_not_used(temp, tmp_path):
    # Where the scripts used to be staged: any local user could create this folder first.
    plant(temp / "mlops-dagster-code" / digest_folder_name())
    doc = build(tmp_path / "s3")
    assert_real_code(shipped_code(doc, tmp_path / "s3"))


def test_a_changed_staged_copy_is_replaced_and_the_definition_is_unchanged(temp, tmp_path):
    clean = build(tmp_path / "clean")
    staged = stage_training_code()
    (staged / "train.py").write_bytes(PLANTED)  # e.g. left by an earlier run, or edited by hand
    doc = build(tmp_path / "s3")
    assert doc == clean
    assert_real_code(shipped_code(doc, tmp_path / "s3"))


@pytest.mark.parametrize("tamper", ["changed bytes", "extra file", "linked file", "fifo", "linked folder", "file"])
def test_staging_replaces_anything_but_an_exact_copy(temp, tmp_path, tamper):
    staged = stage_training_code()
    elsewhere = plant(tmp_path / "elsewhere")
    if tamper == "changed bytes":
        (staged / "train.py").write_bytes(REAL["train.py"] + b"\n# one more line\n")
    elif tamper == "extra file":
        (staged / "sitecustomize.py").write_bytes(PLANTED)
    elif tamper == "linked file":
        (staged / "train.py").unlink()
        (staged / "train.py").symlink_to(elsewhere / "train.py")
    elif tamper == "fifo":
        (staged / "train.py").unlink()
        os.mkfifo(staged / "train.py")
    else:
        for path in staged.iterdir():
            path.unlink()
        staged.rmdir()
        if tamper == "linked folder":
            staged.symlink_to(elsewhere, target_is_directory=True)
        else:
            staged.write_bytes(PLANTED)

    again = stage_training_code()

    assert again == staged
    assert not again.is_symlink() and again.is_dir()
    # Regular files first: reading a FIFO left in place would block the test.
    assert all(stat.S_ISREG(p.lstat().st_mode) for p in again.iterdir())
    assert {p.name: p.read_bytes() for p in again.iterdir()} == REAL
    assert (elsewhere / "train.py").read_bytes() == PLANTED  # a link is removed, never followed


def test_the_staging_folder_is_private_to_this_user(temp):
    staged = stage_training_code()
    root = user_root(temp)
    assert staged.parent == root
    info = root.lstat()
    assert (info.st_uid, stat.S_IMODE(info.st_mode)) == (os.getuid(), 0o700)
    assert not stat.S_IMODE(staged.lstat().st_mode) & 0o022


# --------------------------------------------------------------------------- folders that are not ours


def test_a_staging_folder_owned_by_another_user_is_refused(temp, monkeypatch):
    if os.geteuid() == 0:  # really hand it to another uid
        root = user_root(temp)
        plant(root / digest_folder_name())
        os.chown(root, OTHER_UID, OTHER_UID)
        expected = f"{root} is owned by uid {OTHER_UID}, not you"
    else:  # without root: be another uid than the one that created the folders
        real = os.getuid()
        monkeypatch.setattr(os, "getuid", lambda: real + 1)
        plant(temp / f"mlops-dagster-code-{real + 1}" / digest_folder_name())
        expected = f"is owned by uid {real}"
    with pytest.raises(StagingError, match=expected) as caught:
        stage_training_code()
    assert "another user may" in str(caught.value) or "only you control" in str(caught.value)


@pytest.mark.parametrize("mode", [0o777, 0o770, 0o702], ids=oct)
def test_a_staging_folder_others_can_write_to_is_refused(temp, mode):
    root = user_root(temp)
    plant(root / digest_folder_name())
    root.chmod(mode)
    with pytest.raises(StagingError, match=rf"{root} is writable by group or others \(mode {mode:o}\)") as caught:
        stage_training_code()
    assert f"rm -rf {root}" in str(caught.value)
    assert (root / digest_folder_name() / "train.py").read_bytes() == PLANTED  # refused, not touched


def test_a_linked_staging_folder_is_refused(temp, tmp_path):
    attacker = tmp_path / "attacker"
    plant(attacker / digest_folder_name())
    attacker.chmod(0o700)
    user_root(temp).symlink_to(attacker, target_is_directory=True)
    with pytest.raises(StagingError, match=r"is not a directory \(a link or a file\)"):
        stage_training_code()


def test_a_temp_folder_others_can_write_to_without_sticky_bit_is_refused(temp):
    shared = temp / "shared"
    shared.mkdir()
    shared.chmod(0o777)  # anyone could rename our folder away and put theirs in its place
    with pytest.raises(StagingError, match=rf"{shared} is writable by group or others and not sticky"):
        stage_training_code(temp_dir=shared)
    shared.chmod(0o1777)  # as /tmp is: only the owner of an entry can rename it
    assert stage_training_code(temp_dir=shared).parent == shared / f"mlops-dagster-code-{os.getuid()}"
