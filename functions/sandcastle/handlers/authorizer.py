"""ApiAuthorizer: API Gateway's REQUEST authorizer — the Bearer API key → its tenant, in the context."""

from aws_lambda_powertools.utilities.typing import LambdaContext

from sandcastle.api.auth import allow_policy, authenticate, header
from sandcastle.config import get_settings
from sandcastle.handlers._observability import logger, tracer
from sandcastle.store.keys import ApiKeyStore

_keys: ApiKeyStore | None = None


@logger.inject_lambda_context(clear_state=True)
@tracer.capture_lambda_handler
def handler(event: dict, context: LambdaContext) -> dict:
    global _keys
    if _keys is None:
        _keys = ApiKeyStore(get_settings().table_name)
    key = authenticate(header(event.get("headers"), "Authorization"), _keys)
    logger.append_keys(tenant=key.tenant, key_id=key.key_id)
    return allow_policy(key, event.get("methodArn", ""))
