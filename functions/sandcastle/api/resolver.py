"""The API's resolver: Powertools' ``APIGatewayRestResolver`` with the request it resolves kept per request.

Powertools keeps the request being resolved on the class (``BaseRouter.current_event``,
``BaseRouter.lambda_context``) and in one dict per resolver (``context``: the matched route, its
arguments, the parsed request). A Lambda container resolves one request at a time, so that is
harmless in the cloud; the local gateway resolves many at once on threads, where one request read
another's event (another tenant's) or found its route cleared (``KeyError: '_route'``). Here those
attributes are properties over a ``ContextVar`` set for each ``resolve`` — the shape Powertools'
own ``HttpResolver`` uses for concurrent requests.

A body that is not UTF-8 (JSON is UTF-8 by definition) is a request validation error where the
body is decoded, not a ``UnicodeDecodeError`` out of the route: the API answers 400 for it.

The OpenAPI document it generates (``/openapi.json``, and the one Swagger UI at ``/docs`` embeds) goes
through ``api/openapi.py``: its server is where the request came from, and Powertools' validation error
shapes, which this API never answers, are out.
"""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from aws_lambda_powertools.event_handler import APIGatewayRestResolver
from aws_lambda_powertools.event_handler.openapi.exceptions import RequestValidationError
from aws_lambda_powertools.event_handler.openapi.models import OpenAPI, Server
from aws_lambda_powertools.utilities.data_classes import APIGatewayProxyEvent
from aws_lambda_powertools.utilities.data_classes.common import BaseProxyEvent

from sandcastle.api.openapi import server_for, without_powertools_errors

#: The validation error type of a body that is not UTF-8.
BODY_NOT_UTF8 = "body_not_utf8"


class _ProxyEvent(APIGatewayProxyEvent):
    @cached_property
    def decoded_body(self) -> str | None:
        try:
            return super().decoded_body
        except UnicodeDecodeError as error:
            raise RequestValidationError(
                [{"type": BODY_NOT_UTF8, "loc": ("body",), "msg": f"not valid UTF-8 at byte {error.start}"}]
            ) from None


@dataclass
class _RequestState:
    event: BaseProxyEvent | None = None
    lambda_context: Any = None
    context: dict[str, Any] = field(default_factory=dict)
    processed_stack_frames: list[str] = field(default_factory=list)


class RequestScopedRestResolver(APIGatewayRestResolver):
    """An ``APIGatewayRestResolver`` whose per-request state belongs to the request, not the class."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._startup_state = _RequestState()  # what routes see outside a request (registration, tests)
        self._request_state: ContextVar[_RequestState | None] = ContextVar("sandcastle_api_request", default=None)
        super().__init__(*args, **kwargs)

    @property
    def _state(self) -> _RequestState:
        return self._request_state.get() or self._startup_state

    def _to_proxy_event(self, event: dict) -> BaseProxyEvent:
        return _ProxyEvent(event, self._json_body_deserializer)

    def resolve(self, event: Any, context: Any) -> dict[str, Any]:
        token = self._request_state.set(_RequestState())
        try:
            self.current_event = self._to_proxy_event(dict(event))
            self.lambda_context = context
            return super().resolve(event, context)
        finally:
            self._request_state.reset(token)

    def get_openapi_schema(self, *, servers: list[Server] | None = None, **kwargs: Any) -> OpenAPI:
        """The document as served: while a request is resolved its server is that request's base path
        (Powertools' rule, the one Swagger UI's page uses: the stage when the URL starts with it)."""
        if servers is None and self._request_state.get() is not None:
            servers = [server_for(self._get_base_path())]
        return without_powertools_errors(super().get_openapi_schema(servers=servers, **kwargs))

    @property  # type: ignore[override]
    def current_event(self) -> BaseProxyEvent:
        assert self._state.event is not None, "no request is being resolved"
        return self._state.event

    @current_event.setter
    def current_event(self, value: BaseProxyEvent) -> None:
        self._state.event = value

    @property  # type: ignore[override]
    def lambda_context(self) -> Any:
        return self._state.lambda_context

    @lambda_context.setter
    def lambda_context(self, value: Any) -> None:
        self._state.lambda_context = value

    @property  # type: ignore[override]
    def context(self) -> dict[str, Any]:
        return self._state.context

    @context.setter
    def context(self, value: dict[str, Any]) -> None:
        self._state.context = value

    @property  # type: ignore[override]
    def processed_stack_frames(self) -> list[str]:
        return self._state.processed_stack_frames

    @processed_stack_frames.setter
    def processed_stack_frames(self, value: list[str]) -> None:
        self._state.processed_stack_frames = value
