"""Input files a tenant stages in S3 before a run: where they may be, and the upload that puts them there.

A run's ``files[].s3_key`` must name one of the caller's own uploads, ``uploads/<tenant>/…`` in the
artifacts bucket; it is copied to ``runs/<run id>/input/<name>`` at submission with a tenant-scoped
session (``store/tenant_files.py``), so IAM refuses another tenant's key even if this check did not.
``POST /uploads`` hands out the way to get a file there: a key under the prefix and a URL to PUT it to.
"""

from __future__ import annotations

import secrets
from datetime import datetime, timedelta

from pydantic import BaseModel, Field

from sandcastle.errors import InvalidRunRequest
from sandcastle.names import FileName
from sandcastle.runs.records import utcnow
from sandcastle.store.tenant_files import SESSION_TTL_S, tenant_prefix
from sandcastle.wiring import Dependencies

UPLOAD_URL_TTL_S = SESSION_TTL_S
"""How long an upload URL is valid (at most the session that signs it)."""


class UploadRequest(BaseModel):
    """The body of ``POST /uploads``: the file's name and exact size."""

    name: FileName
    """The file's name; the key ends with it, and ``files[].name`` may differ."""
    size: int = Field(ge=0)
    """The exact byte count: the URL accepts that many bytes and no other number."""
    content_type: str = Field(default="application/octet-stream", max_length=200)


class UploadTicket(BaseModel):
    """Where to PUT the file, and the key to submit it by."""

    key: str
    """Give this as ``files[].s3_key`` of a run."""
    url: str
    """PUT the bytes here, with the ``headers`` below."""
    method: str = "PUT"
    headers: dict[str, str]
    expires_at: datetime
    max_bytes: int


def check_tenant_key(key: str, tenant: str, *, field: str) -> None:
    """``InvalidRunRequest`` naming ``field`` unless ``key`` is a plain key under ``uploads/<tenant>/``."""
    prefix = tenant_prefix(tenant)
    segments = key.split("/")
    if not key.startswith(prefix) or any(segment in ("", ".", "..") for segment in segments):
        raise InvalidRunRequest(
            f"{key!r} is not one of your uploads: s3_key must be under {prefix} (POST /uploads gives one)",
            field=field,
        )


def create_upload(tenant: str, request: UploadRequest, deps: Dependencies) -> UploadTicket:
    """A fresh key ``uploads/<tenant>/<upload id>/<name>`` and a URL that writes exactly that object."""
    limit = deps.settings.max_input_file_bytes
    if request.size > limit:
        raise InvalidRunRequest(f"{request.size} bytes is over the input file limit of {limit}", field="size")
    key = f"{tenant_prefix(tenant)}up-{secrets.token_hex(12)}/{request.name}"
    expires_at = utcnow() + timedelta(seconds=UPLOAD_URL_TTL_S)
    url = deps.upload_links.put_url(
        tenant, key, size=request.size, content_type=request.content_type, expires_s=UPLOAD_URL_TTL_S
    )
    return UploadTicket(
        key=key,
        url=url,
        headers={"Content-Type": request.content_type, "Content-Length": str(request.size)},
        expires_at=expires_at,
        max_bytes=limit,
    )
