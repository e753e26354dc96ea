"""What a request handler gets: the clients opened by the app's lifespan."""

import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from pydantic import SecretStr
from pymongo.asynchronous.collection import AsyncCollection

from api.live import JobFeed
from api.readmodel import ReadModel
from api.registry import ModelRegistry
from events.settings import Settings
from events.storage import ObjectStore


@dataclass(frozen=True)
class Services:
    settings: Settings
    jobs: ReadModel  # main_db.outbox: the read model of jobs (the API never reads runner_db)
    store: ObjectStore
    feed: JobFeed  # live updates of the read model
    sessions: AsyncCollection  # the web page's sessions (api.sessions)
    models: ModelRegistry  # main_db.models: the models jobs may name


def get_services(request: Request) -> Services:
    return request.app.state.services


ServicesDep = Annotated[Services, Depends(get_services)]


def key_check(api_key: SecretStr | None) -> Callable[[str | None], bool] | None:
    """Whether an X-API-Key header holds the key (in constant time); None: no key is set."""
    if api_key is None:
        return None
    key = api_key.get_secret_value().encode()

    def matches(header: str | None) -> bool:
        return header is not None and secrets.compare_digest(header.encode(), key)

    return matches
