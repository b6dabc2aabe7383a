"""PrepareRun: create the run's sandbox and open its transcript."""

from aws_lambda_powertools.utilities.typing import LambdaContext

from sandcastle.handlers._observability import MetricUnit, logger, metrics, tracer
from sandcastle.runs.lifecycle import prepare_run
from sandcastle.runs.models import StepState
from sandcastle.wiring import get_dependencies


@logger.inject_lambda_context(clear_state=True)
@tracer.capture_lambda_handler
@metrics.log_metrics
def handler(event: dict, context: LambdaContext) -> dict:
    state = StepState.model_validate(event)
    logger.append_keys(run_id=state.run_id)
    result = prepare_run(state.run_id, get_dependencies())
    metrics.add_metric(name="RunsStarted", unit=MetricUnit.Count, value=1)
    return result.model_dump(mode="json")
