"""What a request handler gets: the clients opened by the app's lifespan."""

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from pymongo.asynchronous.collection import AsyncCollection

from events.settings import Settings
from events.storage import ObjectStore


@dataclass(frozen=True)
class Services:
    settings: Settings
    outbox: AsyncCollection
    predictions: AsyncCollection  # written only by cleanup/all; the API never reads runner_db
    store: ObjectStore


def get_services(request: Request) -> Services:
    return request.app.state.services


ServicesDep = Annotated[Services, Depends(get_services)]
