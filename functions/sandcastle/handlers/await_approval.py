"""AwaitApproval: keep the waiting execution's task token with the run, mark it AWAITING_APPROVAL, announce it."""

from collections.abc import Callable

from aws_lambda_powertools.utilities.typing import LambdaContext

from sandcastle.handlers._observability import logger, metrics, tracer
from sandcastle.runs.approvals import await_approval
from sandcastle.runs.payloads import ApprovalWait
from sandcastle.wiring import DependenciesFactory, get_dependencies


def make_handler(deps: DependenciesFactory = get_dependencies) -> Callable[[dict, LambdaContext], dict]:
    """The handler, on the dependencies ``deps()`` gives (this container's by default)."""

    @logger.inject_lambda_context(clear_state=True)
    @tracer.capture_lambda_handler
    @metrics.log_metrics
    def handler(event: dict, context: LambdaContext) -> dict:
        wait = ApprovalWait.model_validate(event)
        logger.append_keys(run_id=wait.run_id, step=wait.step + 1)
        return await_approval(wait.run_id, wait.step + 1, wait.task_token, deps())

    return handler


handler = make_handler()
