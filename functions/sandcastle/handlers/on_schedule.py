"""OnSchedule: EventBridge Scheduler fired a schedule ({schedule_id, tenant, scheduled_time}) → start its run once."""

from aws_lambda_powertools.utilities.typing import LambdaContext

from sandcastle.handlers._observability import MetricUnit, logger, metrics, tracer
from sandcastle.runs.models import ScheduleFire
from sandcastle.runs.schedules import fire_schedule
from sandcastle.wiring import get_dependencies


@logger.inject_lambda_context(clear_state=True)
@tracer.capture_lambda_handler
@metrics.log_metrics
def handler(event: dict, context: LambdaContext) -> dict:
    fire = ScheduleFire.model_validate(event)
    logger.append_keys(schedule_id=fire.schedule_id, tenant=fire.tenant, scheduled_time=fire.scheduled_time)
    outcome = fire_schedule(fire, get_dependencies())
    metrics.add_metric(name=f"ScheduleFires{outcome.status.capitalize()}", unit=MetricUnit.Count, value=1)
    return outcome.__dict__
