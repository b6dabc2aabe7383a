"""SubmitRun: a run request in (direct invoke), the QUEUED run out."""

from aws_lambda_powertools.utilities.typing import LambdaContext

from sandcastle.handlers._observability import MetricUnit, logger, metrics, tracer
from sandcastle.runs.models import RunRequest
from sandcastle.runs.submit import submit_run
from sandcastle.wiring import get_dependencies


@logger.inject_lambda_context(clear_state=True)
@tracer.capture_lambda_handler
@metrics.log_metrics
def handler(event: dict, context: LambdaContext) -> dict:
    request = RunRequest.model_validate(event)
    run = submit_run(request, get_dependencies())
    logger.append_keys(run_id=run.run_id, tenant=run.tenant)
    logger.info("run submitted", extra={"source": run.source, "model_backend": run.model_backend})
    metrics.add_metric(name="RunsSubmitted", unit=MetricUnit.Count, value=1)
    return run.model_dump(mode="json")
