"""``retraining_schedule``: materializes raw_data through registered_model on a cron (weekly by default)."""

from dagster import DefaultScheduleStatus, ScheduleDefinition

from .jobs import retraining_job
from .settings import Settings


def retraining_schedule(settings: Settings) -> ScheduleDefinition:
    return ScheduleDefinition(
        name="retraining_schedule",
        job=retraining_job,
        cron_schedule=settings.retrain_cron,
        execution_timezone="UTC",
        default_status=DefaultScheduleStatus.RUNNING,
        description=f"Scheduled retraining ({settings.retrain_cron} UTC; set MLOPS_RETRAIN_CRON to change).",
    )
