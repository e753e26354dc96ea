"""Accepting jobs: `POST /api/upload_video` (a video sent), `POST /api/request` (a video in storage)."""

from typing import Annotated

from fastapi import APIRouter, File, Form, Request, UploadFile, status

from api import commands
from api.deps import Services, ServicesDep
from api.limits import client_of
from api.registry import UnknownModel
from api.routes.common import QUOTA
from api.schemas import Accepted, Problem, VideoRequest
from api.validation import (
    PROBE_BYTES,
    check_bucket,
    check_callback_url,
    check_object_key,
    client_error,
    form_flag,
    job_options,
    looks_like_video,
)
from events.contracts import ModelRef

router = APIRouter()


def webhook_rules(services: Services) -> tuple[bool, bool]:
    """(webhooks enabled, private callback addresses allowed), from the settings."""
    return services.settings.webhook_secret is not None, services.settings.webhook_allow_private


async def model_of(services: Services, name: str | None) -> ModelRef | None:
    """The job's model, by name (400 before anything is stored if no model has it), or the default."""
    try:
        return await services.models.resolve(name or None)
    except UnknownModel:
        raise client_error(f"no model is named {name!r}: GET /api/models lists them") from None


@router.post(
    "/upload_video",
    responses={
        400: {"model": Problem, "description": "an empty file, a bad bucket name or callback URL, an unknown model"},
        403: {"model": Problem, "description": "a bucket outside ALLOWED_BUCKETS"},
        409: {"model": Problem, "description": "the bucket cannot be written to"},
        408: {"model": Problem, "description": "the upload stopped, or dripped (UPLOAD_IDLE_TIMEOUT_S)"},
        413: {"model": Problem, "description": "larger than MAX_UPLOAD_BYTES"},
        415: {"model": Problem, "description": "not a video container"},
        **QUOTA,
    },
)
async def upload_video(
    services: ServicesDep,
    request: Request,
    file: Annotated[UploadFile, File(description="the video")],
    bucket: Annotated[str | None, Form()] = None,
    callback_url: Annotated[str | None, Form(max_length=2048, description="POSTed to when the job ends")] = None,
    model: Annotated[str | None, Form(max_length=64, description="a model's name (GET /api/models)")] = None,
    track: Annotated[str | None, Form(max_length=8, description="true or false: track objects (default true)")] = None,
    zones: Annotated[
        str | None,
        Form(
            description='JSON: [{"name": "door", "line": [[x1, y1], [x2, y2]]}, '
            '{"name": "lot", "polygon": [[x, y], ...]}], video pixels'
        ),
    ] = None,
    render: Annotated[str | None, Form(max_length=8, description="true or false: make the annotated video")] = None,
) -> Accepted:
    bucket = check_bucket(bucket or services.settings.default_bucket, services.settings.bucket_allowlist)
    options = job_options(form_flag("track", track), zones, form_flag("render", render))
    chosen = await model_of(services, model)
    if callback_url:
        await check_callback_url(callback_url, *webhook_rules(services))
    head = await file.read(PROBE_BYTES)
    if not head:
        raise client_error("the uploaded file is empty")
    if not looks_like_video(head):
        raise client_error("the uploaded file is not a video container", status.HTTP_415_UNSUPPORTED_MEDIA_TYPE)
    await file.seek(0)
    try:
        event_id = await commands.accept_upload(services.jobs, services.store, bucket, file.file,
                                                file.content_type or "video/mp4", callback_url or None, file.filename,
                                                client_of(request.scope), chosen, options)  # fmt: skip
    except commands.BucketRefused as error:
        raise client_error(f"bucket {bucket!r} cannot be written to", status.HTTP_409_CONFLICT) from error
    return Accepted(event_id=event_id)


@router.post(
    "/request",
    responses={400: {"model": Problem, "description": "a bad key, bucket name or callback URL, an unknown model"},
               403: {"model": Problem, "description": "a bucket outside ALLOWED_BUCKETS"},
               404: {"model": Problem, "description": "no such object in storage"},
               413: {"model": Problem, "description": "a body larger than MAX_REQUEST_BYTES"}, **QUOTA},
)  # fmt: skip
async def request_video(services: ServicesDep, request: Request, body: VideoRequest) -> Accepted:
    bucket = check_bucket(body.bucket or services.settings.default_bucket, services.settings.bucket_allowlist)
    key = check_object_key(body.object)
    options = job_options(body.track, body.zones, body.render)
    chosen = await model_of(services, body.model)
    if body.callback_url:
        await check_callback_url(body.callback_url, *webhook_rules(services))
    if not await services.store.exists(bucket, key):
        raise client_error(f"object {bucket}/{key} does not exist", status.HTTP_404_NOT_FOUND)
    client = client_of(request.scope)
    return Accepted(event_id=await commands.accept_request(services.jobs, bucket, key, body.callback_url or None,
                                                           client, chosen, options))  # fmt: skip
