"""S3 access for run files: inputs now, large outputs and artifacts as they come."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from botocore.exceptions import ClientError


class ObjectStore:
    """The artifacts bucket. Keys for a run live under ``runs/<run_id>/``."""

    def __init__(self, bucket: str, client: Any | None = None) -> None:
        if client is None:
            import boto3

            client = boto3.client("s3")
        self._client = client
        self.bucket = bucket

    @staticmethod
    def input_key(run_id: str, name: str) -> str:
        return f"runs/{run_id}/input/{name}"

    def put(self, key: str, data: bytes, *, content_type: str = "application/octet-stream") -> None:
        self._client.put_object(Bucket=self.bucket, Key=key, Body=data, ContentType=content_type)

    def get(self, key: str) -> bytes:
        """The object's bytes; ``FileNotFoundError`` naming the key when it does not exist."""
        try:
            return self._client.get_object(Bucket=self.bucket, Key=key)["Body"].read()
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                raise FileNotFoundError(f"s3://{self.bucket}/{key} does not exist") from error
            raise

    def size(self, key: str) -> int | None:
        """The object's size in bytes, or None when it does not exist."""
        try:
            return int(self._client.head_object(Bucket=self.bucket, Key=key)["ContentLength"])
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") in ("NoSuchKey", "404", "NotFound"):
                return None
            raise

    # --- the inbox: copying uploads in, reading their metadata ---

    def copy_from(self, source_bucket: str, source_key: str, key: str, *, version_id: str | None = None) -> None:
        """Copy an object (one version of it) from another bucket to ``key`` here, server-side.

        ``FileNotFoundError`` when the source no longer exists.
        """
        source: dict[str, str] = {"Bucket": source_bucket, "Key": source_key}
        if version_id:
            source["VersionId"] = version_id
        try:
            self._client.copy_object(Bucket=self.bucket, Key=key, CopySource=source)
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") in ("NoSuchKey", "NoSuchVersion", "404"):
                raise FileNotFoundError(f"s3://{source_bucket}/{source_key} does not exist") from error
            raise

    def head(self, key: str, *, version_id: str | None = None) -> ObjectHead | None:
        """Size, user metadata and version of the object, or None when it does not exist."""
        request: dict[str, str] = {"Bucket": self.bucket, "Key": key}
        if version_id:
            request["VersionId"] = version_id
        try:
            response = self._client.head_object(**request)
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") in ("NoSuchKey", "NoSuchVersion", "404", "NotFound"):
                return None
            raise
        return ObjectHead(
            size=int(response["ContentLength"]),
            metadata=dict(response.get("Metadata") or {}),
            version_id=response.get("VersionId"),
        )


@dataclass(frozen=True)
class ObjectHead:
    """What ``head_object`` tells of an object."""

    size: int
    metadata: dict[str, str]
    """User metadata (``x-amz-meta-<name>``), by lower-case name."""
    version_id: str | None = None
