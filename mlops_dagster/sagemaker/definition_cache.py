"""A cache of SDK-built pipeline definitions, so an unchanged pipeline is not rebuilt.

Building the definition imports the SageMaker SDK and runs it (seconds); its output depends only
on the spec's fields, the training code, the code that drives the SDK and the SDK's version. The
key is a hash of all of them; an entry holds the definition exactly as the SDK wrote it, so a hit
upserts the same bytes a build would, and the code objects the SDK uploaded with it (the
processing scripts and ``sourcedir.tar.gz``, at content-addressed keys), so a hit puts back the
ones missing from the store (a fresh ``$MLOPS_HOME``, an emptied bucket).

The cache is the user's, like pip's: ``$MLOPS_DEFINITION_CACHE_DIR``, else
``$XDG_CACHE_HOME/mlops-dagster/pipeline-definitions`` (``~/.cache/...``). Deleting it is always safe.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import tempfile
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..resources.object_store import ObjectStore

# Bump when the entry's layout or the key's recipe changes.
CACHE_FORMAT = 1
# The files that decide what the SDK is asked to build and how (beside the training code).
_BUILDER_FILES = ("pipeline_builder.py", "training_code.py", "offline.py", "__init__.py", "sdk_config.yaml")
_PACKAGES = ("sagemaker", "boto3", "botocore")


def _file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def training_code_digest(training_dir: str | Path, entry_point: str | Path) -> str:
    """sha256 over what is staged for the jobs: ``training_dir/*.py`` and an entry point outside it."""
    digest = hashlib.sha256()
    files = sorted(Path(training_dir).glob("*.py"))
    entry = Path(entry_point)
    if entry.is_absolute() or entry.parent != Path("."):
        files.append(entry)  # a missing file is reported by the build, which a miss runs
    for path in files:
        digest.update(str(path.name).encode() + b"\0")
        digest.update(path.read_bytes() if path.is_file() else b"<missing>")
        digest.update(b"\0")
    return digest.hexdigest()


def cache_key(spec_fields: dict[str, Any]) -> str:
    """sha256 of everything the definition is built from."""
    here = Path(__file__).parent
    inputs = {
        "format": CACHE_FORMAT,
        "spec": spec_fields,
        "training_code": training_code_digest(spec_fields["training_dir"], spec_fields["entry_point"]),
        "builder": {name: _file_digest(here / name) for name in _BUILDER_FILES},
        "packages": {name: metadata.version(name) for name in _PACKAGES},
        "python": platform.python_version(),
    }
    return hashlib.sha256(json.dumps(inputs, sort_keys=True, default=str).encode()).hexdigest()


def code_uris(definition: str) -> list[str]:
    """The S3 objects of code the definition's jobs read: processing ``code`` inputs and the
    training steps' ``sagemaker_submit_directory``."""
    uris = []
    for step in _all_steps(json.loads(definition).get("Steps", [])):
        arguments = step.get("Arguments") or {}
        for item in arguments.get("ProcessingInputs") or []:
            uri = (item.get("S3Input") or {}).get("S3Uri")
            if item.get("InputName") == "code" and isinstance(uri, str):
                uris.append(uri)
        submit = (arguments.get("HyperParameters") or {}).get("sagemaker_submit_directory")
        if isinstance(submit, str):
            uris.append(json.loads(submit) if submit.startswith('"') else submit)
    return [u for u in uris if u.startswith("s3://")]


def _all_steps(steps: list[dict]) -> list[dict]:
    out = []
    for step in steps:
        out.append(step)
        arguments = step.get("Arguments") or {}
        out += _all_steps((arguments.get("IfSteps") or []) + (arguments.get("ElseSteps") or []))
    return out


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class DefinitionCache:
    """Definitions by key, one JSON file each under ``root``; code objects by sha256 in ``blobs/``."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def _path(self, key: str) -> Path:
        return self.root / f"{key}.json"

    def _blob(self, sha: str) -> Path:
        return self.root / "blobs" / sha

    def get(self, key: str) -> tuple[str, dict[str, str]] | None:
        """(definition, {code uri: sha256 of its blob}), or None when absent or damaged (a rebuild
        replaces it)."""
        try:
            entry = json.loads(self._path(key).read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(entry, dict):
            return None
        definition, code = entry.get("definition"), entry.get("code")
        if not isinstance(definition, str) or entry.get("sha256") != _sha256(definition.encode()):
            return None
        if not isinstance(code, dict) or set(code) != set(code_uris(definition)):
            return None
        return definition, code

    def blob(self, sha: str) -> bytes | None:
        """A cached code object, or None when absent or not the bytes its name says."""
        try:
            data = self._blob(sha).read_bytes()
        except OSError:
            return None
        return data if _sha256(data) == sha else None

    def put(self, key: str, definition: str, code: dict[str, bytes]) -> None:
        """Store the definition and its code objects; each file atomically, the entry last (a
        reader sees the old entry or the new one with all its blobs, never half)."""
        code_shas = {}
        for uri, data in code.items():
            code_shas[uri] = sha = _sha256(data)
            if self.blob(sha) is None:
                self._write(self._blob(sha), data)
        entry = {"definition": definition, "sha256": _sha256(definition.encode()), "code": code_shas}
        self._write(self._path(key), json.dumps(entry).encode())

    @staticmethod
    def _write(path: Path, data: bytes) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".part-", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(data)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


CACHE_DIR_ENV = "MLOPS_DEFINITION_CACHE_DIR"


def cache_root() -> Path:
    """$MLOPS_DEFINITION_CACHE_DIR, else $XDG_CACHE_HOME (or ~/.cache)/mlops-dagster/pipeline-definitions."""
    if os.environ.get(CACHE_DIR_ENV):
        return Path(os.environ[CACHE_DIR_ENV])
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "mlops-dagster" / "pipeline-definitions"


def cached_definition(
    home: str | Path, store: ObjectStore, fields: dict[str, Any], build: Callable[[], str]
) -> tuple[str, str]:
    """(definition, "hit" | "miss"): the cached definition for ``fields``, else ``build()``'s, cached.

    On a hit the code objects missing from ``store`` are put back from the cache; when one cannot
    be (its blob is gone), the definition is built again, which uploads them. ``home`` is the
    project's state folder, where the cache goes when the user's (``cache_root``, so that a new
    home reuses it) cannot be created.
    """
    root = cache_root()
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError:  # e.g. a read-only or missing home directory in a container
        root = Path(home) / "cache" / "pipeline-definitions"
    cache = DefinitionCache(root)
    key = cache_key(fields)
    entry = cache.get(key)
    if entry is not None and _restore_code(cache, store, entry[1]):
        return entry[0], "hit"
    definition = build()
    cache.put(key, definition, {uri: store.get_bytes(uri) for uri in code_uris(definition)})
    return definition, "miss"


def _restore_code(cache: DefinitionCache, store: ObjectStore, code: dict[str, str]) -> bool:
    """Put the code objects that are missing from the store back; False if one cannot be."""
    missing = {uri: sha for uri, sha in code.items() if store.head(uri) is None}
    blobs = {uri: cache.blob(sha) for uri, sha in missing.items()}
    if any(data is None for data in blobs.values()):
        return False
    for uri, data in blobs.items():
        store.put_bytes(uri, data)
    return True
