"""Asset jobs: the whole graph, and retraining (raw data through the trained model)."""

from dagster import AssetSelection, define_asset_job

from .assets.pipeline import trained_model

retraining_job = define_asset_job(
    "retraining_job",
    selection=AssetSelection.assets(trained_model).upstream(),
    description="Retrain: read raw data, upload the dataset, upsert the pipeline, run it, collect the model.",
)
