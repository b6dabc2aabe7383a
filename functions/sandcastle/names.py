"""The names users give: input file names and tenant names — one rule each, for every entry point.

A **file name** is kept exactly as given (``semi;colon.txt``, ``quo"te``, ``50%``, ``a#b``,
``back\\slash``, spaces, any Unicode) wherever it is safe to keep; only what cannot be one file
in one folder is refused: ``/`` (a path, not a name), control characters, a leading ``.``
(``.``, ``..`` and hidden files) and more than 255 bytes of UTF-8 (Linux's ``NAME_MAX``).

A **tenant name** is a path segment of every per-tenant key (``uploads/<tenant>/``,
``inbox/<tenant>/``, ``outbox/<tenant>/``) and an IAM session value, so it is narrow: 1-64
letters, digits, ``_``, ``.``, ``-``, starting with a letter or digit (so ``.`` and ``..`` are
never a tenant, and ``_unknown`` — where unreadable uploads report — is never anyone's).
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator

FILE_NAME_MAX_BYTES = 255
_FILE_NAME_UNSAFE = re.compile(r"[\x00-\x1f\x7f/]")
_TENANT = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")

FILE_NAME_RULE = "a file name: no '/', no control characters, no leading '.', at most 255 bytes"
TENANT_RULE = "1-64 letters, digits, '_', '.' or '-', starting with a letter or digit"


def file_name_problem(name: str) -> str | None:
    """What is wrong with ``name`` as an input file's name, or None when it is kept exactly as it is."""
    if not name:
        return "must not be empty"
    if _FILE_NAME_UNSAFE.search(name):
        return f"{name!r} is not {FILE_NAME_RULE} (it contains '/' or a control character)"
    if name.startswith("."):
        return f"{name!r} is not {FILE_NAME_RULE} (it starts with '.')"
    if len(name.encode()) > FILE_NAME_MAX_BYTES:
        return f"{name[:40]!r}… is {len(name.encode())} bytes; a file name is at most {FILE_NAME_MAX_BYTES} bytes"
    return None


def tenant_problem(tenant: str) -> str | None:
    """What is wrong with ``tenant`` as a tenant name, or None."""
    if _TENANT.fullmatch(tenant):
        return None
    return f"tenant {tenant!r} is not {TENANT_RULE}"


def check_file_name(name: str) -> str:
    """``name`` when it is a valid file name; ``ValueError`` saying what is wrong otherwise."""
    problem = file_name_problem(name)
    if problem:
        raise ValueError(problem)
    return name


def check_tenant(tenant: str) -> str:
    """``tenant`` when it is a valid tenant name; ``ValueError`` saying what is wrong otherwise."""
    problem = tenant_problem(tenant)
    if problem:
        raise ValueError(problem)
    return tenant


FileName = Annotated[str, AfterValidator(check_file_name)]
"""An input file's name (pydantic type): kept exactly, or refused with the reason."""
TenantName = Annotated[str, AfterValidator(check_tenant)]
"""A tenant's name (pydantic type)."""
