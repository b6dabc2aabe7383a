"""FinishRun: record the answer and usage, kill the sandbox, end the run."""

from aws_lambda_powertools.utilities.typing import LambdaContext

from sandcastle.handlers._observability import MetricUnit, logger, metrics, tracer
from sandcastle.runs.lifecycle import finish_run
from sandcastle.runs.models import StepState
from sandcastle.wiring import get_dependencies


@logger.inject_lambda_context(clear_state=True)
@tracer.capture_lambda_handler
@metrics.log_metrics
def handler(event: dict, context: LambdaContext) -> dict:
    state = StepState.model_validate(event)
    logger.append_keys(run_id=state.run_id)
    result = finish_run(state, get_dependencies())
    metrics.add_metric(name="RunsFinished", unit=MetricUnit.Count, value=1)
    return result
