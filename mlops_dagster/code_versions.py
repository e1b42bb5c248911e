"""Code versions of the assets: a hash of the source that produces each one.

The UI marks an asset stale when its code version differs from the one it was materialized
with, so changing (say) ``training/train.py`` flags ``pipeline_definition`` and ``trained_model``.
Files are read, not imported: building the definitions stays cheap.
"""

import hashlib
import importlib.util
from functools import cache
from pathlib import Path

from .sagemaker.training_code import TRAINING_DIR

PACKAGE = "mlops_dagster"
_DATA = ("assets.data", "datasets", "quality")
_PIPELINE = ("assets.pipeline", "sagemaker.pipeline_builder", "sagemaker.definition")
_TRAINING = tuple(sorted(p.name for p in TRAINING_DIR.glob("*.py")))
_SERVING = ("assets.deployment",)
_TRAFFIC = (
    "assets.monitoring",
    "monitoring.capture.reader",
    "monitoring.store",
    "monitoring.baseline",
    "monitoring.drift",
)

# asset -> (modules of this package, scripts in training/)
SOURCES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "raw_data": (_DATA, ()),
    "s3_dataset": (_DATA, ()),
    "pipeline_definition": (_PIPELINE, _TRAINING),
    "pipeline_execution": (("assets.pipeline",), ()),
    "trained_model": (("assets.pipeline",), _TRAINING),
    "registered_model": (("assets.registry",), ()),
    "dev_endpoint": (_SERVING, ("inference.py",)),
    "staging_endpoint": (_SERVING, ("inference.py",)),
    "prod_endpoint": (_SERVING, ("inference.py",)),
    # The capture reader parses requests with the endpoint's own input_fn.
    "endpoint_traffic": (_TRAFFIC, ("inference.py",)),
    "data_quality_report": (("assets.monitoring", "monitoring.drift", "monitoring.violations", "monitoring.plots"), ()),
    "model_quality_report": (
        ("assets.monitoring", "monitoring.model_quality", "monitoring.ground_truth", "monitoring.capture.reader"),
        ("inference.py",),
    ),
}


@cache
def _file_digest(path: Path) -> bytes:
    return hashlib.sha256(path.read_bytes()).digest()


def _module_path(module: str) -> Path:
    spec = importlib.util.find_spec(f"{PACKAGE}.{module}")
    if spec is None or spec.origin is None:
        raise ValueError(f"no source file for module {PACKAGE}.{module}")
    return Path(spec.origin)


def code_version_for(asset: str) -> str | None:
    """sha256 (first 16 hex digits) over the asset's source files, or None for an unknown asset."""
    if asset not in SOURCES:
        return None
    modules, scripts = SOURCES[asset]
    digest = hashlib.sha256()
    for path in [*(_module_path(m) for m in modules), *(TRAINING_DIR / s for s in scripts)]:
        digest.update(path.name.encode() + b"\0" + _file_digest(path))
    return digest.hexdigest()[:16]
