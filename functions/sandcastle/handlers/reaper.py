"""Reaper: kill sandboxes whose run is over or unknown; end runs past their deadline TIMED_OUT."""

from collections.abc import Callable
from dataclasses import asdict

from aws_lambda_powertools.utilities.typing import LambdaContext

from sandcastle.handlers._observability import MetricUnit, logger, metrics, tracer
from sandcastle.runs.reaper import reap
from sandcastle.wiring import DependenciesFactory, get_dependencies


def make_handler(deps: DependenciesFactory = get_dependencies) -> Callable[[dict, LambdaContext], dict]:
    """The handler, on the dependencies ``deps()`` gives (this container's by default)."""

    @logger.inject_lambda_context(clear_state=True)
    @tracer.capture_lambda_handler
    @metrics.log_metrics
    def handler(event: dict, context: LambdaContext) -> dict:
        report = reap(deps())
        metrics.add_metric(name="SandboxesSeen", unit=MetricUnit.Count, value=report.seen)
        metrics.add_metric(name="SandboxesKilled", unit=MetricUnit.Count, value=report.killed)
        metrics.add_metric(name="RunsTimedOut", unit=MetricUnit.Count, value=report.timed_out)
        metrics.add_metric(name="ReaperErrors", unit=MetricUnit.Count, value=report.errors)
        return asdict(report)

    return handler


handler = make_handler()
