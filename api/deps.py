"""What a request handler gets: the clients opened by the app's lifespan."""

import secrets
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Header, HTTPException, Request, status
from pymongo.asynchronous.collection import AsyncCollection

from api.live import JobFeed
from events.settings import Settings
from events.storage import ObjectStore


@dataclass(frozen=True)
class Services:
    settings: Settings
    outbox: AsyncCollection  # the outbox, and the read model of jobs (the API never reads runner_db)
    store: ObjectStore
    feed: JobFeed  # live updates of the read model


def get_services(request: Request) -> Services:
    return request.app.state.services


ServicesDep = Annotated[Services, Depends(get_services)]


def require_api_key(services: ServicesDep, x_api_key: Annotated[str | None, Header()] = None) -> None:
    """When API_KEY is set, endpoints that change data need it in the X-API-Key header."""
    expected = services.settings.api_key
    if expected is None:
        return
    if x_api_key is None or not secrets.compare_digest(x_api_key.encode(), expected.get_secret_value().encode()):
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "a valid X-API-Key header is required")


ApiKeyDep = Depends(require_api_key)
