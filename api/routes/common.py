"""What every route module shares: the error answers each may give, and the job id of a path."""

import uuid
from typing import Annotated, Any

from fastapi import Depends, Path

from api.schemas import Problem

ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": Problem, "description": "X-API-Key missing or wrong (when API_KEY is set)"},
    503: {"model": Problem, "description": "the database is unreachable; try again after Retry-After seconds"},
}
NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"model": Problem, "description": "unknown event id"}}
QUOTA: dict[int | str, dict[str, Any]] = {
    429: {"model": Problem, "description": "too many jobs waiting, of this client or in all; try after Retry-After"}
}


def job_id(event_id: Annotated[uuid.UUID, Path(description="the job's event_id")]) -> str:
    """A path's job id: a UUID (the document says so; anything else is FastAPI's 422), as the jobs store it."""
    return str(event_id)


JobId = Annotated[str, Depends(job_id)]
