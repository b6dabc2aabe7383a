"""How a failed pydantic validation reads to whoever sent the input: one formatter for the API, the CLI,
the upload handler and the tools' arguments, so the same mistake reads the same everywhere."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

#: The leading parts of a Powertools request validation location: where in the request, not which field.
_REQUEST_PARTS = ("body", "query", "header", "path")


def field_path(loc: Sequence[Any], *, in_request: bool = False) -> str:
    """A validation location as the field it names: ``("files", 0, "name")`` → ``files[0].name``. With
    ``in_request`` (Powertools' locations of an HTTP request) the leading part — body, query, header,
    path — is dropped: the parameter's name says it, ``("query", "limit")`` → ``limit``."""
    parts = list(loc)
    if in_request and parts and parts[0] in _REQUEST_PARTS:
        parts = parts[1:]
    name = ""
    for part in parts:
        if isinstance(part, int):
            name += f"[{part}]"
        else:
            name += f".{part}" if name else str(part)
    return name


def describe_issues(issues: Iterable[Mapping[str, Any]], *, whole: str = "request", in_request: bool = False) -> str:
    """Every issue of a validation, ``field: what was wrong`` joined by ``; `` (``whole`` names an issue
    of the input as a whole): ``files[0].name: Field required; limit: Input should be less than 100``.
    ``issues`` are pydantic's ``ValidationError.errors()`` or (``in_request``) Powertools'
    ``RequestValidationError.errors()``."""
    return "; ".join(
        f"{field_path(issue.get('loc', ()), in_request=in_request) or whole}: {issue.get('msg') or issue.get('type')}"
        for issue in issues
    )
