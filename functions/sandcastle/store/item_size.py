"""How much of a DynamoDB item (400 KB at most) a stored request may take, and which field is too large.

A run's request, a saved task and a schedule's run template are each stored in one item. A request
may take ``REQUEST_BUDGET_BYTES`` of it — the rest is room for what the run adds later (its answer,
error, artifacts, usage). Over that, the write is refused with ``ValueTooLarge`` naming the largest
field, before anything is written: the model reads instructions and playbooks every turn, so they
are not moved aside the way large outputs are; large content belongs in input files.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from pydantic_core import to_jsonable_python

from sandcastle.errors import ValueTooLarge

#: What a stored request may take of its item.
REQUEST_BUDGET_BYTES = 256 * 1024


def check_request_fits(fields: Mapping[str, Any], *, what: str, prefix: str = "") -> None:
    """Refuse ``fields`` (a request's, by name) when together they take more than the budget."""
    sizes = {
        name: len(name) + len(json.dumps(to_jsonable_python(value), ensure_ascii=False).encode())
        for name, value in fields.items()
        if value is not None
    }
    total = sum(sizes.values())
    if total <= REQUEST_BUDGET_BYTES:
        return
    largest = max(sizes, key=lambda name: sizes[name])
    raise ValueTooLarge(
        f"{what} takes {total} bytes to store, over the {REQUEST_BUDGET_BYTES}-byte limit; this field is "
        f"{sizes[largest]} bytes. Put large content in input files (files[].s3_key) and refer to it",
        field=prefix + largest,
    )
