"""SubmitRun: a run request in (direct invoke), the QUEUED run out."""

from collections.abc import Callable

from aws_lambda_powertools.utilities.typing import LambdaContext

from sandcastle.handlers._observability import MetricUnit, logger, metrics, tracer
from sandcastle.runs.requests import RunRequest
from sandcastle.runs.submit import submit_run
from sandcastle.wiring import DependenciesFactory, get_dependencies


def make_handler(deps: DependenciesFactory = get_dependencies) -> Callable[[dict, LambdaContext], dict]:
    """The handler, on the dependencies ``deps()`` gives (this container's by default)."""

    @logger.inject_lambda_context(clear_state=True)
    @tracer.capture_lambda_handler
    @metrics.log_metrics
    def handler(event: dict, context: LambdaContext) -> dict:
        request = RunRequest.model_validate(event)
        run = submit_run(request, deps())
        logger.append_keys(run_id=run.run_id, tenant=run.tenant)
        logger.info("run submitted", extra={"source": run.source, "model_backend": run.model_backend})
        metrics.add_metric(name="RunsSubmitted", unit=MetricUnit.Count, value=1)
        return run.model_dump(mode="json")

    return handler


handler = make_handler()
