"""API keys at the door: the authorizer's decision and the policy it returns to API Gateway."""

from __future__ import annotations

from typing import Any

from sandcastle.errors import Unauthorized
from sandcastle.store.keys import ApiKey, ApiKeyStore


def authenticate(authorization: str | None, keys: ApiKeyStore) -> ApiKey:
    """The stored key a ``Bearer`` header carries; ``Unauthorized`` for anything else."""
    scheme, _, token = (authorization or "").strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized
    key = keys.lookup(token.strip())
    if key is None or key.revoked:
        raise Unauthorized
    return key


def allow_policy(key: ApiKey, method_arn: str) -> dict[str, Any]:
    """The authorizer's answer: allow every route of this API stage (the answer is cached per key)."""
    # arn:aws:execute-api:region:account:api-id/stage/METHOD/path → arn:...:api-id/stage/*
    prefix = "/".join(method_arn.split("/", 2)[:2])
    return {
        "principalId": key.key_id,
        "policyDocument": {
            "Version": "2012-10-17",
            "Statement": [{"Action": "execute-api:Invoke", "Effect": "Allow", "Resource": f"{prefix}/*"}],
        },
        "context": {"tenant": key.tenant, "key_id": key.key_id},
    }


def header(headers: dict[str, str] | None, name: str) -> str | None:
    """A header's value, whatever its case."""
    for key, value in (headers or {}).items():
        if key.lower() == name.lower():
            return value
    return None
