"""``POST /uploads``: where a tenant puts an input file too large to send inline.

The answer is a key under ``uploads/<tenant>/`` and a URL to PUT exactly that many bytes to (presigned
by a tenant-scoped session in the cloud, signed by the local gateway locally); the key then goes into a
run's ``files[].s3_key``. Uploads expire (the bucket's lifecycle rule on ``uploads/``).
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Annotated

from aws_lambda_powertools.event_handler import Response
from aws_lambda_powertools.event_handler.api_gateway import Router
from aws_lambda_powertools.event_handler.openapi.params import Body

from sandcastle.api import examples as ex
from sandcastle.api.responses import error_contents, json_content, ok, principal
from sandcastle.runs.input_files import UploadRequest, UploadTicket, create_upload
from sandcastle.wiring import get_dependencies

router = Router()


@router.post(
    "/uploads",
    operation_id="createUpload",
    tags=["uploads"],
    summary="Upload an input file",
    description="Returns a key under your tenant's `uploads/` prefix and a URL to PUT the file's bytes to "
    "(exactly `size` bytes, with the returned headers, before `expires_at`). Give the key as a run's "
    "`files[].s3_key`; it is copied into the run at submission.",
    responses={
        201: json_content(UploadTicket, "Where to PUT the file, and its key.", example=ex.UPLOAD_TICKET),
        **error_contents(HTTPStatus.UNPROCESSABLE_ENTITY),
    },
)
def post_upload(
    request: Annotated[UploadRequest, Body(openapi_examples=ex.body_examples(upload=ex.UPLOAD_REQUEST))],
) -> Response[UploadTicket]:
    tenant = principal(router.current_event.raw_event)[0]
    return ok(create_upload(tenant, request, get_dependencies()), HTTPStatus.CREATED)
