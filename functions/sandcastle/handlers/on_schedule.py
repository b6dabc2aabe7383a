"""OnSchedule: EventBridge Scheduler fired a schedule ({schedule_id, tenant, scheduled_time}) → start its run once."""

from collections.abc import Callable

from aws_lambda_powertools.utilities.typing import LambdaContext

from sandcastle.handlers._observability import MetricUnit, logger, metrics, tracer
from sandcastle.runs.payloads import ScheduleFire
from sandcastle.runs.schedules import fire_schedule
from sandcastle.wiring import DependenciesFactory, get_dependencies


def make_handler(deps: DependenciesFactory = get_dependencies) -> Callable[[dict, LambdaContext], dict]:
    """The handler, on the dependencies ``deps()`` gives (this container's by default)."""

    @logger.inject_lambda_context(clear_state=True)
    @tracer.capture_lambda_handler
    @metrics.log_metrics
    def handler(event: dict, context: LambdaContext) -> dict:
        fire = ScheduleFire.model_validate(event)
        logger.append_keys(schedule_id=fire.schedule_id, tenant=fire.tenant, scheduled_time=fire.scheduled_time)
        outcome = fire_schedule(fire, deps())
        metrics.add_metric(name=f"ScheduleFires{outcome.status.capitalize()}", unit=MetricUnit.Count, value=1)
        return outcome.__dict__

    return handler


handler = make_handler()
