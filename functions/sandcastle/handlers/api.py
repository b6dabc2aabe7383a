"""Api: every route of the HTTP API (API Gateway REST proxy events → the Powertools resolver)."""

from aws_lambda_powertools.logging import correlation_paths
from aws_lambda_powertools.utilities.typing import LambdaContext

from sandcastle.api.app import handle_request
from sandcastle.config import get_settings
from sandcastle.handlers._observability import MetricUnit, logger, metrics, tracer


@logger.inject_lambda_context(clear_state=True, correlation_id_path=correlation_paths.API_GATEWAY_REST)
@tracer.capture_lambda_handler
@metrics.log_metrics
def handler(event: dict, context: LambdaContext) -> dict:
    response = handle_request(event, context, max_body_bytes=get_settings().api_max_body_bytes)
    metrics.add_metric(name="ApiRequests", unit=MetricUnit.Count, value=1)
    return response
