"""The persistence of ``Idempotency-Key`` records: Powertools' DynamoDB layer on the runs table.

Records live at ``IDEMPOTENCY#submit_run`` / ``submit_run#<hash of tenant and key>`` and expire
through the table's TTL attribute (``expires_at``), like every other item.
"""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools.utilities.idempotency import DynamoDBPersistenceLayer

IDEMPOTENCY_PK = "IDEMPOTENCY#submit_run"


def idempotency_layer(table_name: str, client: Any | None = None) -> DynamoDBPersistenceLayer:
    """The idempotency persistence layer on the runs table (``pk``/``sk``, TTL ``expires_at``)."""
    return DynamoDBPersistenceLayer(
        table_name=table_name,
        key_attr="pk",
        sort_key_attr="sk",
        static_pk_value=IDEMPOTENCY_PK,
        expiry_attr="expires_at",
        boto3_client=client,
    )
