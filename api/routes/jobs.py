"""The jobs as a list: `GET /api/status/all` (pages), `DELETE /api/jobs/{id}`, `DELETE /api/cleanup/all`."""

from typing import Annotated

from fastapi import APIRouter, Query, status

from api import commands
from api.deps import ServicesDep
from api.jobs import views
from api.readmodel import CURSOR_PATTERN, MAX_CURSOR, BadCursor, cursor_of
from api.routes.common import NOT_FOUND, JobId
from api.schemas import Cleaned, Operations, Problem
from api.validation import client_error
from events.log import get_logger
from events.statuses import OutboxStatus

log = get_logger(__name__)
router = APIRouter()
MAX_PAGE = 1000


@router.get("/status/all", responses={400: {"model": Problem, "description": "an invalid `after` cursor"}})
async def status_all(
    services: ServicesDep,
    status_filter: Annotated[OutboxStatus | None, Query(alias="status", description="only jobs in this status")] = None,
    limit: Annotated[int | None, Query(ge=1, le=MAX_PAGE, description="a page of this many jobs; all if unset")] = None,
    after: Annotated[
        str | None,
        Query(
            min_length=1,
            max_length=MAX_CURSOR,
            pattern=CURSOR_PATTERN,
            description="the `next` cursor of the previous page",
        ),
    ] = None,
) -> Operations:
    """Jobs in the order they were accepted, a page at a time; each job's readiness checked in storage."""
    try:
        docs = await services.jobs.page(status_filter, after, limit)  # one more than `limit`: is there a next page
    except BadCursor as error:
        raise client_error(str(error)) from error
    page = await views(services.store, docs[:limit] if limit is not None else docs)
    following = cursor_of(page[-1].state) if limit is not None and len(docs) > limit else None
    operations = [view.operation() for view in page]
    return Operations(operations=operations, total=len(operations), next=following)


@router.delete("/jobs/{event_id}", responses=NOT_FOUND)
async def delete_job(services: ServicesDep, event_id: JobId) -> Cleaned:
    """Remove one job: its objects and its records."""
    if (location := await services.jobs.location(event_id)) is None:
        raise client_error(f"no job with event_id {event_id}", status.HTTP_404_NOT_FOUND)
    objects = await commands.forget(services.jobs, services.store, event_id, location)
    log.info("job deleted", event_id=event_id, objects_deleted=objects)
    return Cleaned(jobs_deleted=1, objects_deleted=objects)


@router.delete("/cleanup/all")
async def cleanup_all(services: ServicesDep) -> Cleaned:
    """Remove every job the system knows, with its objects; nothing else in the buckets is touched."""
    jobs, objects = await commands.forget_all(services.jobs, services.store)
    log.info("cleanup done", jobs_deleted=jobs, objects_deleted=objects)
    return Cleaned(jobs_deleted=jobs, objects_deleted=objects)
