"""FailRun: the Catch of every task state; kill the sandbox, record the error, end the run."""

from collections.abc import Callable

from aws_lambda_powertools.utilities.typing import LambdaContext

from sandcastle.handlers._observability import MetricUnit, logger, metrics, tracer
from sandcastle.runs.lifecycle import fail_run
from sandcastle.runs.payloads import FailInput
from sandcastle.wiring import DependenciesFactory, get_dependencies


def make_handler(deps: DependenciesFactory = get_dependencies) -> Callable[[dict, LambdaContext], dict]:
    """The handler, on the dependencies ``deps()`` gives (this container's by default)."""

    @logger.inject_lambda_context(clear_state=True)
    @tracer.capture_lambda_handler
    @metrics.log_metrics
    def handler(event: dict, context: LambdaContext) -> dict:
        failure = FailInput.model_validate(event)
        logger.append_keys(run_id=failure.run_id)
        result = fail_run(failure, deps())
        metrics.add_metric(name="RunsFailed", unit=MetricUnit.Count, value=1)
        return result

    return handler


handler = make_handler()
