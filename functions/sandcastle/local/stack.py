"""What the local runtime's helpers use of it — the bus, the inbox, the scheduler, the gateway.

They take these Protocols, not ``LocalRuntime``: each sees the template, the region, a client of
the emulated AWS and the functions to invoke, and nothing of the runtime's lifecycle, patches or
environment, so a test can run one against a stub.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from sandcastle.local.template import Template
    from sandcastle.wiring import Dependencies


class Stack(Protocol):
    """The emulated stack of ``template.yaml``: its template, its AWS and its functions."""

    @property
    def template(self) -> Template: ...

    @property
    def region(self) -> str: ...

    def invoke(self, function: str, payload: dict[str, Any]) -> dict[str, Any]:
        """Invoke a function (logical id or name) through the emulated Lambda API; its answer."""
        ...

    def deps_client(self, service: str) -> Any:
        """A boto3 client of the emulated ``service`` (the runtime's own: not checked against a role)."""
        ...


class ServedStack(Stack, Protocol):
    """A stack whose API is served: the gateway also reads objects and settings through the handlers' dependencies."""

    @property
    def deps(self) -> Dependencies: ...
