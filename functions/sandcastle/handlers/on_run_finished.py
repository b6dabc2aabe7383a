"""OnRunFinished: a ``Run Finished`` event of a run an upload started → its artifacts and result.json in the outbox."""

from collections.abc import Callable

from aws_lambda_powertools.utilities.typing import LambdaContext

from sandcastle.handlers._observability import MetricUnit, logger, metrics, tracer
from sandcastle.runs.uploads import write_outbox
from sandcastle.wiring import DependenciesFactory, get_dependencies


def make_handler(deps: DependenciesFactory = get_dependencies) -> Callable[[dict, LambdaContext], dict]:
    """The handler, on the dependencies ``deps()`` gives (this container's by default)."""

    @logger.inject_lambda_context(clear_state=True)
    @tracer.capture_lambda_handler
    @metrics.log_metrics
    def handler(event: dict, context: LambdaContext) -> dict:
        run_id = str(event["detail"]["run_id"])
        logger.append_keys(run_id=run_id)
        result_key = write_outbox(run_id, deps())
        metrics.add_metric(name="OutboxesWritten", unit=MetricUnit.Count, value=1 if result_key else 0)
        return {"run_id": run_id, "result_key": result_key}

    return handler


handler = make_handler()
