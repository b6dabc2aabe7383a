"""PrepareRun: create the run's sandbox and open its transcript."""

from collections.abc import Callable

from aws_lambda_powertools.utilities.typing import LambdaContext

from sandcastle.handlers._observability import MetricUnit, logger, metrics, tracer
from sandcastle.runs.lifecycle import prepare_run
from sandcastle.runs.payloads import StepState
from sandcastle.wiring import DependenciesFactory, get_dependencies


def make_handler(deps: DependenciesFactory = get_dependencies) -> Callable[[dict, LambdaContext], dict]:
    """The handler, on the dependencies ``deps()`` gives (this container's by default)."""

    @logger.inject_lambda_context(clear_state=True)
    @tracer.capture_lambda_handler
    @metrics.log_metrics
    def handler(event: dict, context: LambdaContext) -> dict:
        state = StepState.model_validate(event)
        logger.append_keys(run_id=state.run_id)
        result = prepare_run(state.run_id, deps())
        metrics.add_metric(name="RunsStarted", unit=MetricUnit.Count, value=1)
        return result.model_dump(mode="json")

    return handler


handler = make_handler()
