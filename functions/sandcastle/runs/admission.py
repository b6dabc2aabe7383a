"""Admitting a tenant's run from the API: size caps, the concurrent-run limit, ``Idempotency-Key``.

``admit_run`` wraps ``submit_run``: nothing is written when a cap or the limit refuses the run,
and a client retrying with the same ``Idempotency-Key`` gets the run its first request created
(Powertools idempotency on the runs table, scoped by tenant, the body hashed to detect reuse
with a different body).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sandcastle.errors import (
    ActiveRunLimitReached,
    IdempotencyConflict,
    PayloadTooLarge,
    TooManyActiveRuns,
)
from sandcastle.runs.records import Run
from sandcastle.runs.requests import RunRequest
from sandcastle.runs.submit import submit_run
from sandcastle.wiring import Dependencies

if TYPE_CHECKING:
    from aws_lambda_powertools.utilities.idempotency.persistence.datarecord import DataRecord
    from aws_lambda_powertools.utilities.typing import LambdaContext

#: How long a request waits for a concurrent request with the same key to finish.
_IN_PROGRESS_WAIT_S = 10.0
_IN_PROGRESS_POLL_S = 0.1


@dataclass(frozen=True)
class Admission:
    run: Run
    replayed: bool
    """True when this is the stored answer to an earlier request with the same ``Idempotency-Key``."""


def admit_run(
    request: RunRequest,
    deps: Dependencies,
    *,
    idempotency_key: str | None = None,
    lambda_context: LambdaContext | None = None,
) -> Admission:
    """Submit ``request`` for its tenant unless a cap or the tenant's run limit refuses it.

    Raises ``PayloadTooLarge``, ``TooManyActiveRuns``, ``InvalidRunRequest`` (nothing written
    for any of them) or ``IdempotencyConflict``.
    """
    _check_inline_sizes(request, deps)
    if not idempotency_key:
        return Admission(run=_submit_within_limit(request, deps), replayed=False)
    return _submit_once(request, deps, idempotency_key, lambda_context)


def _submit_within_limit(request: RunRequest, deps: Dependencies) -> Run:
    """Submit unless the tenant has ``max_active_runs_per_tenant`` unfinished runs: the run item and the
    tenant's counter are written in one transaction conditioned on the counter (``store/dynamo.py``), so
    simultaneous submits never both take the last slot. The read first only spares the input files'
    upload when the limit is plainly reached."""
    limit = deps.settings.max_active_runs_per_tenant
    refusal = (
        f"tenant {request.tenant} has {limit} unfinished runs, the most it may have at once; "
        "wait for one to end or cancel one"
    )
    if deps.store.active_runs(request.tenant) >= limit:
        raise TooManyActiveRuns(refusal)
    try:
        return submit_run(request, deps, active_limit=limit)
    except ActiveRunLimitReached:
        raise TooManyActiveRuns(refusal) from None


def _submit_once(request: RunRequest, deps: Dependencies, key: str, lambda_context: LambdaContext | None) -> Admission:
    from aws_lambda_powertools.utilities.idempotency import IdempotencyConfig, idempotent_function
    from aws_lambda_powertools.utilities.idempotency.exceptions import (
        IdempotencyAlreadyInProgressError,
        IdempotencyValidationError,
    )

    replayed = False

    def mark_replayed(response: Any, idempotent_data: DataRecord) -> Any:
        nonlocal replayed
        replayed = True
        return response

    config = IdempotencyConfig(
        event_key_jmespath="[tenant, key]",
        payload_validation_jmespath="body",
        raise_on_no_idempotency_key=True,
        expires_after_seconds=deps.settings.idempotency_ttl_s,
        hash_function="sha256",
        lambda_context=lambda_context,
        response_hook=mark_replayed,
    )

    def submit(submission: dict[str, Any]) -> dict[str, Any]:
        return _submit_within_limit(request, deps).model_dump(mode="json")

    once = idempotent_function(
        data_keyword_argument="submission",
        persistence_store=deps.idempotency_layer,
        config=config,
        key_prefix="submit_run",
    )(submit)
    submission = {"tenant": request.tenant, "key": key, "body": request.model_dump(mode="json")}
    deadline = time.monotonic() + _IN_PROGRESS_WAIT_S
    while True:
        try:
            stored = once(submission=submission)
            break
        except IdempotencyValidationError:
            raise IdempotencyConflict(
                "this Idempotency-Key was already used with a different request body; use a new key"
            ) from None
        except IdempotencyAlreadyInProgressError:
            if time.monotonic() > deadline:
                raise IdempotencyConflict(
                    "a request with this Idempotency-Key is still in progress; retry in a moment"
                ) from None
            time.sleep(_IN_PROGRESS_POLL_S)
    return Admission(run=Run.model_validate(stored), replayed=replayed)


def _check_inline_sizes(request: RunRequest, deps: Dependencies) -> None:
    cap = deps.settings.api_max_inline_file_bytes
    for index, file in enumerate(request.files):
        if file.content_base64 is not None and len(file.content_base64) * 3 // 4 > cap + 2:
            raise PayloadTooLarge(
                f"{file.name} is over the {cap}-byte limit for inline files; upload it to S3 and give its s3_key",
                field=f"files[{index}].content_base64",
            )
