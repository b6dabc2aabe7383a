"""Download links for a run's artifacts: presigned S3 URLs, or the local gateway's URLs."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

#: How long a presigned artifact URL stays valid.
PRESIGNED_URL_TTL_S = 3600


class DownloadLinks:
    """Links to objects of the artifacts bucket.

    In the cloud: presigned ``GetObject`` URLs. Under the local runtime (``local_base_url`` set):
    ``<local_base_url>/local-artifacts/<key>``, which the local gateway serves from emulated S3.
    """

    def __init__(self, bucket: str, *, local_base_url: str | None = None, client: Any | None = None) -> None:
        self.bucket = bucket
        self.local_base_url = local_base_url.rstrip("/") if local_base_url else None
        self._client = client

    def url(self, key: str, *, filename: str | None = None) -> str:
        """A URL the caller can download ``key`` from."""
        if self.local_base_url:
            return f"{self.local_base_url}/local-artifacts/{quote(key)}"
        if self._client is None:
            import boto3

            self._client = boto3.client("s3")
        params: dict[str, Any] = {"Bucket": self.bucket, "Key": key}
        if filename:
            params["ResponseContentDisposition"] = f'attachment; filename="{quote(filename)}"'
        return str(self._client.generate_presigned_url("get_object", Params=params, ExpiresIn=PRESIGNED_URL_TTL_S))
