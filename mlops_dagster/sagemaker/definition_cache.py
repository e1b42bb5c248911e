"""A cache of SDK-built pipeline definitions, so an unchanged pipeline is not rebuilt.

Building the definition imports the SageMaker SDK and runs it (seconds); its output depends only
on the spec's fields, the training code, the code that drives the SDK and the SDK's version. The
key is a hash of all of them; an entry holds the definition exactly as the SDK wrote it, so a hit
upserts the same bytes a build would. A hit whose code objects (the processing scripts and
``sourcedir.tar.gz`` the SDK uploaded) are gone from the store is treated as a miss: the build
uploads them again.
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


class DefinitionCache:
    """Definitions by key, one JSON file each under ``root``."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def _path(self, key: str) -> Path:
        return self.root / f"{key}.json"

    def get(self, key: str) -> str | None:
        """The cached definition, or None (absent or unreadable: a rebuild replaces it)."""
        try:
            entry = json.loads(self._path(key).read_text())
        except (OSError, ValueError):
            return None
        definition = entry.get("definition") if isinstance(entry, dict) else None
        if not isinstance(definition, str) or entry.get("sha256") != hashlib.sha256(definition.encode()).hexdigest():
            return None
        return definition

    def put(self, key: str, definition: str) -> None:
        """Store atomically (a concurrent reader sees the old entry or the new one, never half)."""
        self.root.mkdir(parents=True, exist_ok=True)
        entry = {"definition": definition, "sha256": hashlib.sha256(definition.encode()).hexdigest()}
        fd, tmp = tempfile.mkstemp(dir=self.root, prefix=".entry-", suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as out:
                json.dump(entry, out)
            os.replace(tmp, self._path(key))
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def cache_root(home: str | Path) -> Path:
    return Path(home) / "cache" / "pipeline-definitions"


def cached_definition(
    home: str | Path, store: ObjectStore, fields: dict[str, Any], build: Callable[[], str]
) -> tuple[str, str]:
    """(definition, "hit" | "miss"): the cached definition for ``fields``, else ``build()``'s, cached.

    A cached entry whose code objects are missing from the store is rebuilt (the build uploads them).
    """
    cache = DefinitionCache(cache_root(home))
    key = cache_key(fields)
    definition = cache.get(key)
    if definition is not None and all(store.head(uri) is not None for uri in code_uris(definition)):
        return definition, "hit"
    definition = build()
    cache.put(key, definition)
    return definition, "miss"
