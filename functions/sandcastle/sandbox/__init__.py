"""Sandboxes: where agent-written code runs. The port is in ``base``; the backends are
``local_sandbox`` (bubblewrap) and ``e2b_sandbox`` (E2B), imported only when built.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sandcastle.errors import SandboxError
from sandcastle.sandbox.base import SANDBOX_HOME, CommandResult, Sandbox, SandboxProvider, SandboxSpec

if TYPE_CHECKING:
    from sandcastle.config import Settings
    from sandcastle.redaction import Redactor

__all__ = [
    "SANDBOX_HOME",
    "CommandResult",
    "Sandbox",
    "SandboxProvider",
    "SandboxSpec",
    "build_sandbox_provider",
]

_E2B_SECRET_MAX_AGE_S = 300


def build_sandbox_provider(settings: Settings, redactor: Redactor | None = None) -> SandboxProvider:
    """The sandbox backend the settings select: ``local`` (bubblewrap) or ``e2b``.

    For ``local`` the limits, the sandbox uid and the disk quota come from the ``sandbox_*`` settings.

    For ``e2b`` the API key comes from ``E2B_API_KEY``, or else from the Secrets Manager secret
    ``E2B_API_KEY_SECRET_ARN`` (cached for five minutes; ``redactor`` is given the key read).
    Raises ``SandboxError`` when neither is set. ``E2B_API_URL``/``E2B_SANDBOX_URL`` point it at an
    E2B-compatible server instead of E2B's cloud (the local runtime's sandbox server, ``sandcastle.e2b_server``).
    """
    if settings.sandbox_backend == "local":
        from sandcastle.sandbox.local_sandbox import LocalSandboxProvider, SandboxLimits

        limits = SandboxLimits(
            cpu_seconds=settings.sandbox_cpu_seconds,
            memory_mb=settings.sandbox_memory_mb,
            file_size_mb=settings.sandbox_file_size_mb,
            max_processes=settings.sandbox_max_processes,
        )
        return LocalSandboxProvider(
            settings.sandbox_root,
            limits,
            sandbox_uid=settings.sandbox_uid,
            disk_quota_mb=settings.sandbox_disk_quota_mb,
            mount_root=settings.sandbox_mount_root,
        )

    from sandcastle.sandbox.e2b_sandbox import E2BSandboxProvider

    return E2BSandboxProvider(
        _e2b_api_key(settings, redactor),
        settings.e2b_template,
        api_url=settings.e2b_api_url,
        sandbox_url=settings.e2b_sandbox_url,
    )


def _e2b_api_key(settings: Settings, redactor: Redactor | None) -> str:
    if settings.e2b_api_key is not None and settings.e2b_api_key.get_secret_value():
        return settings.e2b_api_key.get_secret_value()
    if settings.e2b_api_key_secret_arn:
        from sandcastle.redaction import read_secret

        redactors = [redactor] if redactor is not None else []
        api_key = read_secret(settings.e2b_api_key_secret_arn, *redactors, max_age=_E2B_SECRET_MAX_AGE_S)
        if api_key:
            return api_key
        raise SandboxError(f"the E2B secret {settings.e2b_api_key_secret_arn} is empty; store the E2B API key in it")
    raise SandboxError(
        "sandbox_backend is e2b but no E2B API key is configured; set E2B_API_KEY "
        "or E2B_API_KEY_SECRET_ARN (or use SANDBOX_BACKEND=local)"
    )
