"""AgentStep: one model turn (and its tool call, when it makes exactly one); returns the next move for the
state machine's Choice."""

from collections.abc import Callable

from aws_lambda_powertools.utilities.typing import LambdaContext

from sandcastle.handlers._observability import MetricUnit, logger, metrics, tracer
from sandcastle.runs.payloads import StepState
from sandcastle.runs.turns import agent_step
from sandcastle.wiring import DependenciesFactory, get_dependencies

#: Seconds kept back from the Lambda's remaining time to record the reply (and an inline call's result).
SAFETY_MARGIN_S = 10.0


def make_handler(deps: DependenciesFactory = get_dependencies) -> Callable[[dict, LambdaContext], dict]:
    """The handler, on the dependencies ``deps()`` gives (this container's by default)."""

    @logger.inject_lambda_context(clear_state=True)
    @tracer.capture_lambda_handler
    @metrics.log_metrics
    def handler(event: dict, context: LambdaContext) -> dict:
        state = StepState.model_validate(event)
        logger.append_keys(run_id=state.run_id, step=state.step + 1)
        time_left = context.get_remaining_time_in_millis() / 1000 - SAFETY_MARGIN_S
        result = agent_step(state, deps(), time_left_s=time_left)
        metrics.add_metric(name="AgentSteps", unit=MetricUnit.Count, value=1)
        if result.next == "agent":  # the turn's one tool call ran here, not in RunTool
            metrics.add_metric(name="ToolCalls", unit=MetricUnit.Count, value=1)
        return result.model_dump(mode="json")

    return handler


handler = make_handler()
