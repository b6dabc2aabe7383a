"""OnExecutionEnd: an execution ended ABORTED, TIMED_OUT or FAILED (EventBridge) → end its run, kill its sandbox."""

from collections.abc import Callable

from aws_lambda_powertools.utilities.typing import LambdaContext

from sandcastle.handlers._observability import MetricUnit, logger, metrics, tracer
from sandcastle.runs.cancel import end_stopped_execution
from sandcastle.runs.payloads import ExecutionStatusChange
from sandcastle.wiring import DependenciesFactory, get_dependencies


def make_handler(deps: DependenciesFactory = get_dependencies) -> Callable[[dict, LambdaContext], dict]:
    """The handler, on the dependencies ``deps()`` gives (this container's by default)."""

    @logger.inject_lambda_context(clear_state=True)
    @tracer.capture_lambda_handler
    @metrics.log_metrics
    def handler(event: dict, context: LambdaContext) -> dict:
        change = ExecutionStatusChange.model_validate(event["detail"])
        logger.append_keys(run_id=change.name, execution_status=change.status)
        result = end_stopped_execution(change, deps())
        metrics.add_metric(name="ExecutionsEndedEarly", unit=MetricUnit.Count, value=1)
        return result

    return handler


handler = make_handler()
