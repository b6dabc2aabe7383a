"""OnUpload: an object was created in the inbox bucket (EventBridge, or an S3 notification) → start its run."""

from collections.abc import Callable

from aws_lambda_powertools.utilities.typing import LambdaContext

from sandcastle.handlers._observability import MetricUnit, logger, metrics, tracer
from sandcastle.runs.uploads import created_objects, start_upload_run
from sandcastle.wiring import DependenciesFactory, get_dependencies


def make_handler(deps: DependenciesFactory = get_dependencies) -> Callable[[dict, LambdaContext], dict]:
    """The handler, on the dependencies ``deps()`` gives (this container's by default)."""

    @logger.inject_lambda_context(clear_state=True)
    @tracer.capture_lambda_handler
    @metrics.log_metrics
    def handler(event: dict, context: LambdaContext) -> dict:
        outcomes = [start_upload_run(obj, deps()) for obj in created_objects(event)]
        for outcome in outcomes:
            metrics.add_metric(name=f"Uploads{outcome.status.capitalize()}", unit=MetricUnit.Count, value=1)
        return {"uploads": [outcome.__dict__ for outcome in outcomes]}

    return handler


handler = make_handler()
