"""Asset jobs: retraining (raw data through the registered model, as ``make run`` registers it),
and the run tags that say why a retraining ran."""

from dagster import AssetSelection, define_asset_job

from .assets.registry import registered_model

# Why a run ran; registered_model copies both into the model's lineage (assets/registry.py).
TRIGGER_TAG = "mlops/trigger"  # schedule | data | code | drift
TRIGGER_DETAIL_TAG = "mlops/trigger_detail"  # the cron, the file and its version, the commit, the check
TRIGGERS = ("schedule", "data", "code", "drift")
MAX_DETAIL = 500  # characters of a detail tag (an S3 key can reach 1,024)

retraining_job = define_asset_job(
    "retraining_job",
    selection=AssetSelection.assets(registered_model).upstream(),
    description=(
        "Retrain: read raw data, upload the dataset, upsert the pipeline, run it, collect the model and "
        "register it with its lineage and artifact sha256 (registered_model). Never deploys."
    ),
)


def trigger_tags(trigger: str, detail: str) -> dict[str, str]:
    """The tags of a triggered retraining run."""
    if trigger not in TRIGGERS:
        raise ValueError(f"trigger {trigger!r} is not one of {TRIGGERS}")
    return {
        TRIGGER_TAG: trigger,
        TRIGGER_DETAIL_TAG: detail if len(detail) <= MAX_DETAIL else detail[: MAX_DETAIL - 1] + "…",
    }
