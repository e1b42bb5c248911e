"""The code the pipeline runs: where the training scripts live and the hash that versions them.

Kept apart from ``pipeline_builder`` so that loading the code location does not import the
SageMaker SDK (seconds per Dagster process).

Where the scripts are staged, and why there. The SDK's code hash (``hash_files_or_dirs`` in
``sagemaker.workflow.utilities``) covers the absolute path string of the folder or file it is
given plus the names and bytes beneath it; that hash is the S3 key of the uploaded code, so it
is part of the definition. Building from the checkout would give each clone (and each stray
``__pycache__``) its own definition; a fresh random folder per build would give each build its
own. So the path must be stable, and it must be private: a folder in a shared temporary
directory that another local user can pre-create gets their code run (locally, and on aws
uploaded and run under the execution role).

The choice: one private folder per user, ``<tempdir>/mlops-dagster-code-<uid>/<digest>/``.

- Stable: the same user building the same scripts gets the same path from any checkout, so the
  definition stays byte-identical across builds and clones. (``$MLOPS_HOME`` was not chosen:
  every home, including each test's, would then give its own definition.)
- Private: the per-user folder is created 0700 and checked with ``lstat`` before each use: a
  real directory (not a symlink), owned by this uid, with no group or other write bits; every
  folder above it must be owned by root or this uid and, if others may write to it, be sticky
  (as ``/tmp`` is), so nobody else can rename our folder away and put theirs in its place. A
  folder that fails is refused with a ``StagingError`` saying what to remove; it is never
  repaired in place (someone else may have written into it already).
- Verified: nothing a previous run left is trusted. The scripts are read from ``training/``
  once, into memory; the digest folder is used only when it holds exactly those files with
  exactly those bytes (regular files, opened without following links). Anything else (a
  changed byte, an extra file, a link) is replaced by a fresh copy written from memory into a
  new private folder and renamed into place.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import shutil
import stat
import tempfile
from pathlib import Path

TRAINING_DIR = Path(__file__).resolve().parents[2] / "training"
STAGING_PREFIX = "mlops-dagster-code-"  # + the uid: one folder per user
_OTHERS_WRITE = stat.S_IWGRP | stat.S_IWOTH
_RESTAGE_ATTEMPTS = 3


class StagingError(RuntimeError):
    """The training code cannot be staged in a folder only this user controls."""


def code_version(training_dir: str | Path = TRAINING_DIR) -> str:
    """sha256 over the training scripts' names and bytes: the code the definition embeds."""
    digest = hashlib.sha256()
    for path in sorted(Path(training_dir).glob("*.py")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def stage_training_code(
    training_dir: str | Path = TRAINING_DIR,
    entry_point: str | Path = "train.py",
    temp_dir: str | Path | None = None,
) -> Path:
    """Copy the scripts (``*.py`` only: no caches, no lint config) to this user's private,
    content-addressed folder and return it (see the module docstring for why there).

    ``entry_point`` may name a script outside ``training_dir`` (the recipe's own train.py); it is
    staged beside the others under its own name. ``temp_dir`` defaults to ``tempfile.gettempdir()``.
    """
    files = _read_scripts(Path(training_dir), Path(entry_point))
    root = private_staging_root(temp_dir)
    target = root / _digest(files)
    if not _holds_exactly(target, files):
        _restage(root, target, files)
    return target


def private_staging_root(temp_dir: str | Path | None = None) -> Path:
    """``<temp_dir>/mlops-dagster-code-<uid>``, created 0700 if absent, refused unless private."""
    parent = Path(os.path.realpath(temp_dir if temp_dir is not None else tempfile.gettempdir()))
    uid = os.getuid()
    _check_parents(parent, uid)
    root = parent / f"{STAGING_PREFIX}{uid}"
    try:
        os.mkdir(root, 0o700)
    except FileExistsError:
        pass
    except OSError as exc:
        raise StagingError(
            f"cannot create the code staging folder {root}: {exc}; set TMPDIR to a writable folder"
        ) from exc
    info = os.lstat(root)
    remove = f"remove it (rm -rf {root}) or set TMPDIR to a folder only you can write"
    if stat.S_ISLNK(info.st_mode) or not stat.S_ISDIR(info.st_mode):
        raise StagingError(f"code staging folder {root} is not a directory (a link or a file): {remove}")
    if info.st_uid != uid:
        raise StagingError(
            f"code staging folder {root} is owned by uid {info.st_uid}, not you (uid {uid}): another user may "
            f"have planted code in it; {remove}"
        )
    if info.st_mode & _OTHERS_WRITE:
        raise StagingError(
            f"code staging folder {root} is writable by group or others (mode {stat.S_IMODE(info.st_mode):o}): "
            f"its content cannot be trusted; {remove}"
        )
    return root


def _check_parents(parent: Path, uid: int) -> None:
    """Every folder down to ``parent`` (a resolved path) is root's or ours, and sticky if others
    may write to it: otherwise someone else could swap our staging folder for theirs."""
    for folder in (*reversed(parent.parents), parent):
        try:
            info = os.lstat(folder)
        except OSError as exc:
            raise StagingError(
                f"cannot stage training code under {parent}: {exc}; set TMPDIR to a folder you own"
            ) from exc
        if info.st_uid not in (0, uid):
            raise StagingError(
                f"cannot stage training code under {parent}: {folder} is owned by uid {info.st_uid} "
                f"(neither root nor you, uid {uid}); set TMPDIR to a folder only you control"
            )
        if info.st_mode & _OTHERS_WRITE and not info.st_mode & stat.S_ISVTX:
            raise StagingError(
                f"cannot stage training code under {parent}: {folder} is writable by group or others and not "
                f"sticky (mode {stat.S_IMODE(info.st_mode):o}); set TMPDIR to a folder only you control"
            )


def _read_scripts(training_dir: Path, entry: Path) -> dict[str, bytes]:
    """name -> bytes of what will be staged, read once: what is staged is what was read."""
    files = {p.name: p.read_bytes() for p in sorted(training_dir.glob("*.py"))}
    if entry.is_absolute() or entry.parent != Path("."):
        if not entry.is_file():
            raise FileNotFoundError(f"training entry point {entry} does not exist")
        files[entry.name] = entry.read_bytes()
    return files


def _digest(files: dict[str, bytes]) -> str:
    digest = hashlib.sha256()
    for name, data in sorted(files.items()):
        digest.update(name.encode() + b"\0" + data + b"\0")
    return digest.hexdigest()[:32]


def _holds_exactly(folder: Path, files: dict[str, bytes]) -> bool:
    """True when ``folder`` is our own directory holding these files, byte for byte, and nothing else."""
    try:
        info = os.lstat(folder)
        if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & _OTHERS_WRITE:
            return False
        if sorted(os.listdir(folder)) != sorted(files):
            return False
        return all(_read_regular_file(folder / name) == data for name, data in files.items())
    except OSError:  # gone, a link (ELOOP), unreadable: not what we staged
        return False


def _read_regular_file(path: Path) -> bytes | None:
    # O_NONBLOCK: a FIFO in place of a script must not hang the build (it then fails the S_ISREG test).
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            return None
        return f.read()


def _restage(root: Path, target: Path, files: dict[str, bytes]) -> None:
    """Write the files into a new private folder and rename it to ``target``, replacing whatever is there."""
    partial = Path(tempfile.mkdtemp(prefix=".staging-", dir=root))
    for name, data in files.items():
        fd = os.open(partial / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
    for _attempt in range(_RESTAGE_ATTEMPTS):
        try:
            os.rename(partial, target)
            return
        except OSError:  # target exists (not empty) or is not a directory
            if _holds_exactly(target, files):  # another build of ours staged the same code meanwhile
                shutil.rmtree(partial)
                return
            _discard(root, target)
    shutil.rmtree(partial, ignore_errors=True)
    raise StagingError(f"cannot stage training code at {target}: it kept changing while it was replaced")


def _discard(root: Path, path: Path) -> None:
    """Move ``path`` aside (atomically, so the name is free) and delete it; a link is removed, not followed."""
    aside = root / f".discarded-{secrets.token_hex(8)}"
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return
    if aside.is_symlink() or not aside.is_dir():
        aside.unlink()
    else:
        shutil.rmtree(aside)
