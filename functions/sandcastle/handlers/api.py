"""Api: every route of the HTTP API (API Gateway REST proxy events → the Powertools resolver)."""

from collections.abc import Callable

from aws_lambda_powertools.logging import correlation_paths
from aws_lambda_powertools.utilities.typing import LambdaContext

from sandcastle.api.app import handle_request
from sandcastle.handlers._observability import MetricUnit, logger, metrics, tracer
from sandcastle.wiring import DependenciesFactory, get_dependencies, using


def make_handler(deps: DependenciesFactory = get_dependencies) -> Callable[[dict, LambdaContext], dict]:
    """The handler, on the dependencies ``deps()`` gives (this container's by default); its routes use them."""

    @logger.inject_lambda_context(clear_state=True, correlation_id_path=correlation_paths.API_GATEWAY_REST)
    @tracer.capture_lambda_handler
    @metrics.log_metrics
    def handler(event: dict, context: LambdaContext) -> dict:
        with using(deps()) as bundle:
            response = handle_request(event, context, max_body_bytes=bundle.settings.api_max_body_bytes)
        metrics.add_metric(name="ApiRequests", unit=MetricUnit.Count, value=1)
        return response

    return handler


handler = make_handler()
