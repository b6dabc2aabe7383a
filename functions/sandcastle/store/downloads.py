"""Links into the artifacts bucket: artifact downloads and upload URLs, signed and expiring.

In the cloud: presigned S3 URLs (downloads with the function's role, uploads with a tenant-scoped
session, ``store/tenant_files.py``). Under the local runtime (``local_base_url`` set), the gateway's
``/local-artifacts/<key>`` and ``/local-uploads/<key>``, signed the same way S3 would: an HMAC-SHA256
over what the link allows (action, key, scope — the run for a download, the tenant and byte count for
an upload — and the expiry) with a secret that lives only in the runtime. The gateway checks it with
``LinkSigner.verify``: a link without a valid signature, expired, or for another run, is refused.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from typing import Any
from urllib.parse import quote, urlencode

#: How long a presigned artifact URL stays valid.
PRESIGNED_URL_TTL_S = 3600
LOCAL_DOWNLOAD_PATH = "/local-artifacts/"
LOCAL_UPLOAD_PATH = "/local-uploads/"


def content_disposition(filename: str) -> str:
    """``attachment`` with the name exact (RFC 6266 ``filename*``) and a plain-ASCII fallback for old clients."""
    fallback = "".join(c if c.isascii() and c.isprintable() else "_" for c in filename)
    quoted = fallback.replace("\\", "\\\\").replace('"', '\\"')  # an RFC 2616 quoted-string: exact for ASCII
    return f"attachment; filename=\"{quoted}\"; filename*=UTF-8''{quote(filename, safe='')}"


class LinkSigner:
    """Signs and checks local links: HMAC-SHA256 over (action, key, scope, expiry)."""

    def __init__(self, secret: str) -> None:
        if not secret:
            raise ValueError("a link secret is needed to sign local links")
        self._secret = secret.encode()

    def signature(self, action: str, key: str, scope: str, expires: int) -> str:
        message = "\n".join((action, key, scope, str(expires))).encode()
        return hmac.new(self._secret, message, hashlib.sha256).hexdigest()

    def verify(
        self, action: str, key: str, scope: str, expires: str, signature: str, *, now: float | None = None
    ) -> bool:
        """True when ``signature`` is ours for exactly this link and it has not expired."""
        try:
            deadline = int(expires)
        except ValueError:
            return False
        if deadline < (time.time() if now is None else now):
            return False
        return hmac.compare_digest(self.signature(action, key, scope, deadline), signature)


class DownloadLinks:
    """Download URLs for a run's objects: presigned ``GetObject``, or the local gateway's signed link."""

    def __init__(
        self,
        bucket: str,
        *,
        local_base_url: str | None = None,
        local_secret: str | None = None,
        client: Any | None = None,
    ) -> None:
        self.bucket = bucket
        self.local_base_url = local_base_url.rstrip("/") if local_base_url else None
        self._signer = LinkSigner(local_secret or "") if self.local_base_url else None
        self._client = client

    def url(self, key: str, *, run_id: str, filename: str | None = None, ttl_s: int = PRESIGNED_URL_TTL_S) -> str:
        """A URL that downloads ``key`` (an object of run ``run_id``) for ``ttl_s`` seconds."""
        if self._signer is not None:
            expires = int(time.time()) + ttl_s
            query = {
                "run": run_id,
                "expires": expires,
                "signature": self._signer.signature("get", key, run_id, expires),
            }
            if filename:
                query["filename"] = filename
            return (
                f"{self.local_base_url}{LOCAL_DOWNLOAD_PATH}{quote(key, safe='/')}?{urlencode(query, quote_via=quote)}"
            )
        if self._client is None:
            import boto3
            from botocore.config import Config

            self._client = boto3.client("s3", config=Config(signature_version="s3v4"))
        params: dict[str, Any] = {"Bucket": self.bucket, "Key": key}
        if filename:
            params["ResponseContentDisposition"] = content_disposition(filename)
        return str(self._client.generate_presigned_url("get_object", Params=params, ExpiresIn=ttl_s))


class LocalUploadLinks:
    """Upload URLs of the local gateway: ``PUT /local-uploads/<key>``, signed for the tenant and byte count."""

    def __init__(self, local_base_url: str, local_secret: str) -> None:
        self.local_base_url = local_base_url.rstrip("/")
        self._signer = LinkSigner(local_secret)

    def put_url(self, tenant: str, key: str, *, size: int, content_type: str, expires_s: int) -> str:
        expires = int(time.time()) + expires_s
        scope = f"{tenant}\n{size}"
        query = {
            "tenant": tenant,
            "size": size,
            "expires": expires,
            "signature": self._signer.signature("put", key, scope, expires),
        }
        return f"{self.local_base_url}{LOCAL_UPLOAD_PATH}{quote(key, safe='/')}?{urlencode(query, quote_via=quote)}"
