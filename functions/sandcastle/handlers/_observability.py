"""Powertools Logger, Tracer and Metrics shared by the handlers (service name from the environment).

The Tracer is built only where tracing is on: building one imports the X-Ray SDK (100-200 ms of a cold
start) even when tracing is off, so with tracing off a handler is left undecorated instead.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.shared.functions import resolve_truthy_env_var_choice

if TYPE_CHECKING:
    from aws_lambda_powertools import Tracer

# A handler that raises before recording its metric has nothing to publish: not worth a warning.
warnings.filterwarnings("ignore", message="No application metrics to publish")

Handler = TypeVar("Handler", bound=Callable[..., Any])


def tracing_enabled() -> bool:
    """Whether Powertools traces here: in a Lambda (not SAM local or Chalice), unless ``POWERTOOLS_TRACE_DISABLED``.

    The same conditions as Powertools' own ``Tracer`` uses to disable itself.
    """
    if resolve_truthy_env_var_choice(env=os.getenv("POWERTOOLS_TRACE_DISABLED", "false")):
        return False
    in_lambda = bool(os.getenv("LAMBDA_TASK_ROOT"))
    emulated = bool(os.getenv("AWS_SAM_LOCAL") or os.getenv("AWS_CHALICE_CLI_MODE"))
    return in_lambda and not emulated


class LazyTracer:
    """Powertools' ``Tracer``, built on first use where tracing is enabled; with tracing off, nothing is imported."""

    def __init__(self) -> None:
        self._tracer: Tracer | None = None

    @property
    def tracer(self) -> Tracer:
        """The real Tracer (importing the X-Ray SDK)."""
        if self._tracer is None:
            from aws_lambda_powertools import Tracer

            self._tracer = Tracer()
        return self._tracer

    def capture_lambda_handler(self, handler: Handler) -> Handler:
        """Trace the handler (a subsegment per invocation, boto3 calls patched) when tracing is on."""
        if not tracing_enabled():
            return handler
        traced: Handler = self.tracer.capture_lambda_handler(handler)
        return traced


logger = Logger()
tracer = LazyTracer()
metrics = Metrics()

__all__ = ["MetricUnit", "logger", "metrics", "tracer"]
