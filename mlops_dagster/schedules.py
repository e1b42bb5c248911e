"""``retraining_schedule``: materializes raw_data through registered_model on a cron (weekly by default)."""

from dagster import DefaultScheduleStatus, ScheduleDefinition

from .jobs import retraining_job, trigger_tags
from .settings import Settings


def retraining_schedule(settings: Settings) -> ScheduleDefinition:
    # Retraining starts SageMaker jobs: on aws it starts stopped unless MLOPS_AUTOMATION=on.
    status = DefaultScheduleStatus.RUNNING if settings.automation_on else DefaultScheduleStatus.STOPPED
    return ScheduleDefinition(
        name="retraining_schedule",
        job=retraining_job,
        cron_schedule=settings.retrain_cron,
        execution_timezone="UTC",
        default_status=status,
        tags=trigger_tags("schedule", f"cron {settings.retrain_cron} UTC"),
        description=(
            f"Scheduled retraining ({settings.retrain_cron} UTC; set MLOPS_RETRAIN_CRON to change). "
            f"Starts {status.value.lower()} (MLOPS_AUTOMATION)."
        ),
    )
