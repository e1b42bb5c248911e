"""Asset jobs: retraining (raw data through the registered model, as ``make run`` registers it)."""

from dagster import AssetSelection, define_asset_job

from .assets.registry import registered_model

retraining_job = define_asset_job(
    "retraining_job",
    selection=AssetSelection.assets(registered_model).upstream(),
    description=(
        "Retrain: read raw data, upload the dataset, upsert the pipeline, run it, collect the model and "
        "register it with its lineage and artifact sha256 (registered_model)."
    ),
)
