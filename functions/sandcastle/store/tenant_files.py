"""A tenant's own files in the artifacts bucket (``uploads/<tenant>/…``), touched only with credentials
IAM confines to that tenant.

Every read of a key a user named, and every upload URL handed out, goes through an STS session of
the template's ``TenantFilesRole``, assumed with

* the session tag ``tenant=<tenant>``: the role's own policy allows ``uploads/${aws:PrincipalTag/tenant}/*``
  and nothing else of ``uploads/``, and the bucket policy denies ``uploads/`` to every other principal;
* a session policy narrowing that further to this one request: reading ``uploads/<tenant>/*`` and
  writing only the run's ``runs/<run id>/input/*`` (a submission), or writing one key (an upload URL).

So a tenant's key check in the domain (``runs/input_files.py``) is not the only guard: with a bug in
it, S3 itself refuses another tenant's key. Presigned URLs signed with such a session can only do what
the session may, and die with it (``SESSION_TTL_S``).
"""

from __future__ import annotations

import json
from typing import Any

from botocore.exceptions import ClientError

from sandcastle.errors import FileTooLarge, TenantFileAccessDenied

UPLOADS_PREFIX = "uploads/"
SESSION_TTL_S = 900
"""The shortest STS session (15 minutes): an upload URL is valid at most this long."""
TENANT_TAG = "tenant"


def tenant_prefix(tenant: str) -> str:
    """``uploads/<tenant>/``: the only part of the bucket a tenant's keys may name."""
    return f"{UPLOADS_PREFIX}{tenant}/"


class TenantFiles:
    """Reads and upload URLs for ``uploads/<tenant>/`` with a tenant-scoped STS session."""

    def __init__(
        self, bucket: str, role_arn: str, *, region: str, sts: Any | None = None, s3_factory: Any | None = None
    ) -> None:
        self.bucket = bucket
        self.role_arn = role_arn
        self.region = region
        self._sts = sts
        self._s3_factory = s3_factory

    # --- the policies (pure: tests assert them) ---

    def session_policy(self, tenant: str, *, run_id: str | None = None, put_key: str | None = None) -> dict[str, Any]:
        """What one session may do: read the tenant's uploads and write the run's inputs, or write ``put_key``."""
        bucket_arn = f"arn:aws:s3:::{self.bucket}"
        statements: list[dict[str, Any]] = []
        if run_id is not None:
            statements += [
                {
                    "Sid": "ReadTheTenantsUploads",
                    "Effect": "Allow",
                    "Action": ["s3:GetObject"],
                    "Resource": f"{bucket_arn}/{tenant_prefix(tenant)}*",
                },
                {
                    "Sid": "SeeMissingKeysAsMissing",
                    "Effect": "Allow",
                    "Action": ["s3:ListBucket"],
                    "Resource": bucket_arn,
                    "Condition": {"StringLike": {"s3:prefix": f"{tenant_prefix(tenant)}*"}},
                },
                {
                    "Sid": "WriteTheRunsInputs",
                    "Effect": "Allow",
                    "Action": ["s3:PutObject"],
                    "Resource": f"{bucket_arn}/runs/{run_id}/input/*",
                },
            ]
        if put_key is not None:
            if not put_key.startswith(tenant_prefix(tenant)):
                raise ValueError(f"{put_key!r} is not under {tenant_prefix(tenant)}")
            statements.append(
                {
                    "Sid": "WriteOneUpload",
                    "Effect": "Allow",
                    "Action": ["s3:PutObject"],
                    "Resource": f"{bucket_arn}/{put_key}",
                }
            )
        return {"Version": "2012-10-17", "Statement": statements}

    # --- what the domain calls ---

    def copy_into_run(self, tenant: str, key: str, run_id: str, target_key: str, *, max_bytes: int) -> int | None:
        """Copy the tenant's object ``key`` to the run's ``target_key``; its size, or None when it does not exist.

        ``TenantFileAccessDenied`` when S3 refuses (IAM: not the tenant's), ``FileTooLarge`` over ``max_bytes``.
        """
        s3 = self._client(tenant, self.session_policy(tenant, run_id=run_id))
        try:
            size = int(s3.head_object(Bucket=self.bucket, Key=key)["ContentLength"])
            if size > max_bytes:
                raise FileTooLarge(size, max_bytes)
            s3.copy_object(Bucket=self.bucket, Key=target_key, CopySource={"Bucket": self.bucket, "Key": key})
        except ClientError as error:
            code = error.response.get("Error", {}).get("Code")
            if code in ("NoSuchKey", "404", "NotFound"):
                return None
            if code in ("AccessDenied", "403", "Forbidden"):
                raise TenantFileAccessDenied(key) from error
            raise
        return size

    def presign_put(self, tenant: str, key: str, *, size: int, content_type: str, expires_s: int) -> str:
        """A presigned ``PutObject`` URL for ``key`` (under the tenant's prefix) of exactly ``size`` bytes."""
        s3 = self._client(tenant, self.session_policy(tenant, put_key=key))
        params = {"Bucket": self.bucket, "Key": key, "ContentLength": size, "ContentType": content_type}
        return str(s3.generate_presigned_url("put_object", Params=params, ExpiresIn=min(expires_s, SESSION_TTL_S)))

    def _client(self, tenant: str, policy: dict[str, Any]) -> Any:
        import boto3

        if self._sts is None:
            self._sts = boto3.client("sts", region_name=self.region)
        credentials = self._sts.assume_role(
            RoleArn=self.role_arn,
            RoleSessionName=f"tenant-{tenant}"[:64],
            Policy=json.dumps(policy),
            Tags=[{"Key": TENANT_TAG, "Value": tenant}],
            DurationSeconds=SESSION_TTL_S,
        )["Credentials"]
        from botocore.config import Config

        factory = self._s3_factory or boto3.client
        return factory(
            "s3",
            region_name=self.region,
            config=Config(signature_version="s3v4"),  # SigV4 signs Content-Length into an upload URL
            aws_access_key_id=credentials["AccessKeyId"],
            aws_secret_access_key=credentials["SecretAccessKey"],
            aws_session_token=credentials["SessionToken"],
        )
