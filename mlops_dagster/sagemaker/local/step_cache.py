"""SageMaker's step caching, for the local service: a Processing or Training step whose
``CacheConfig`` is enabled reuses the job of an earlier execution of the same pipeline instead of
running one, when that job's step had the same name, completed within ``ExpireAfter``, and ran with
the same cache-key attributes (SageMaker's "Default cache key attributes by pipeline step type").

The attributes are those of the resolved request (parameters and step properties substituted), so
a step whose inputs come from a reused step reuses too, as on SageMaker. Outputs, job names and
instance types are not part of the key. Like SageMaker, the cache looks at S3 URIs, not at what they
hold: the project's datasets and code are at content-addressed URIs (``s3_dataset``, the SDK's code
upload), so new data or code is a new key.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

# Step type -> the request attributes whose change makes the step run again.
KEY_ATTRIBUTES = {
    "Processing": ("AppSpecification", "Environment", "ProcessingInputs"),
    "Training": (
        "AlgorithmSpecification",
        "CheckpointConfig",
        "DebugHookConfig",
        "DebugRuleConfigurations",
        "Environment",
        "HyperParameters",
        "InputDataConfig",
    ),
}

# ISO 8601 durations as the service accepts them ("P30D", "PT1H", and the documented "30d", "T16m").
_DURATION = re.compile(
    r"P?(?:(?P<y>\d+)Y)?(?:(?P<mo>\d+)M)?(?:(?P<w>\d+)W)?(?:(?P<d>\d+)D)?"
    r"(?:T(?:(?P<h>\d+)H)?(?:(?P<mi>\d+)M)?(?:(?P<s>\d+)S)?)?",
    re.IGNORECASE,
)
_SECONDS = {"y": 365 * 86400, "mo": 30 * 86400, "w": 7 * 86400, "d": 86400, "h": 3600, "mi": 60, "s": 1}


class CacheConfigError(ValueError):
    pass


def duration_seconds(text: Any) -> float:
    """Seconds of an ``ExpireAfter`` duration; CacheConfigError if it is not one."""
    match = _DURATION.fullmatch(text.strip()) if isinstance(text, str) else None
    if match is None or not any(match.groupdict().values()):
        raise CacheConfigError(
            f"CacheConfig ExpireAfter {text!r} is not an ISO 8601 duration (for example P30D, PT12H, P1W)"
        )
    return float(sum(int(value) * _SECONDS[unit] for unit, value in match.groupdict().items() if value))


def window_seconds(step_type: str, cache_config: Any) -> float | None:
    """How far back this step may reuse a job, or None when it always runs."""
    if cache_config is None:
        return None
    if not isinstance(cache_config, dict) or not isinstance(cache_config.get("Enabled", False), bool):
        raise CacheConfigError(f"CacheConfig must be {{'Enabled': true|false, 'ExpireAfter': ...}}, got {cache_config!r}")
    if not cache_config.get("Enabled"):
        return None
    if "ExpireAfter" not in cache_config:
        raise CacheConfigError("CacheConfig is enabled without ExpireAfter (SageMaker requires one)")
    seconds = duration_seconds(cache_config["ExpireAfter"])
    return seconds if step_type in KEY_ATTRIBUTES else None  # other types run every time here


def cache_key(step_type: str, request: dict) -> str:
    """The digest of the request's cache-key attributes."""
    attributes = {name: request.get(name) for name in KEY_ATTRIBUTES[step_type]}
    return hashlib.sha256(json.dumps(attributes, sort_keys=True, default=str).encode()).hexdigest()
