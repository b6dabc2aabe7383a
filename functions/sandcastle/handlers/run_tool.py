"""RunTool: one tool call, executed in the run's sandbox."""

from collections.abc import Callable

from aws_lambda_powertools.utilities.typing import LambdaContext

from sandcastle.handlers._observability import MetricUnit, logger, metrics, tracer
from sandcastle.runs.payloads import ToolTask
from sandcastle.runs.tool_calls import ToolCallDone, run_tool
from sandcastle.wiring import DependenciesFactory, get_dependencies


def make_handler(deps: DependenciesFactory = get_dependencies) -> Callable[[dict, LambdaContext], ToolCallDone]:
    """The handler, on the dependencies ``deps()`` gives (this container's by default)."""

    @logger.inject_lambda_context(clear_state=True)
    @tracer.capture_lambda_handler
    @metrics.log_metrics
    def handler(event: dict, context: LambdaContext) -> ToolCallDone:
        task = ToolTask.model_validate(event)
        logger.append_keys(run_id=task.run_id, step=task.step, tool_call_id=task.tool_call_id)
        result = run_tool(task, deps())
        metrics.add_metric(name="ToolCalls", unit=MetricUnit.Count, value=1)
        return result

    return handler


handler = make_handler()
