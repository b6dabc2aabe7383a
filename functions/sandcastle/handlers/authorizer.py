"""ApiAuthorizer: API Gateway's REQUEST authorizer — the Bearer API key → its tenant, in the context.

It needs only the key store (the table's name), not the whole ``Dependencies``: ``make_handler`` takes
the store to use, this container's by default.
"""

from collections.abc import Callable
from functools import cache

from aws_lambda_powertools.utilities.typing import LambdaContext

from sandcastle.api.auth import allow_policy, authenticate, header
from sandcastle.config import get_settings
from sandcastle.handlers._observability import logger, tracer
from sandcastle.store.keys import ApiKeyStore


@cache
def container_keys() -> ApiKeyStore:
    """This container's key store, built on first use and reused by every invocation."""
    return ApiKeyStore(get_settings().table_name)


def make_handler(keys: Callable[[], ApiKeyStore] = container_keys) -> Callable[[dict, LambdaContext], dict]:
    """The authorizer, looking keys up in the store ``keys()`` gives."""

    @logger.inject_lambda_context(clear_state=True)
    @tracer.capture_lambda_handler
    def handler(event: dict, context: LambdaContext) -> dict:
        key = authenticate(header(event.get("headers"), "Authorization"), keys())
        logger.append_keys(tenant=key.tenant, key_id=key.key_id)
        return allow_policy(key, event.get("methodArn", ""))

    return handler


handler = make_handler()
