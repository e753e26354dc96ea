"""What a request handler gets: the clients opened by the app's lifespan."""

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from typing import Annotated

from fastapi import Cookie, Depends, Header, HTTPException, Request, status
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


SESSION_COOKIE = "vdetect_session"


def session_token(api_key: str) -> str:
    """What the web page's session cookie holds: derived from the key, never the key itself."""
    return hmac.new(api_key.encode(), b"vdetect web session", hashlib.sha256).hexdigest()


def valid_key(given: str | None, api_key: str) -> bool:
    return given is not None and secrets.compare_digest(given.encode(), api_key.encode())


def require_api_key(
    services: ServicesDep,
    x_api_key: Annotated[str | None, Header()] = None,
    session: Annotated[str | None, Cookie(alias=SESSION_COOKIE)] = None,
) -> None:
    """When API_KEY is set, endpoints that change data need it in the X-API-Key header (or the web
    page's session cookie, which `POST /api/session` gives for the key)."""
    expected = services.settings.api_key
    if expected is None:
        return
    key = expected.get_secret_value()
    if not (valid_key(x_api_key, key) or valid_key(session, session_token(key))):
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "a valid X-API-Key header is required")


ApiKeyDep = Depends(require_api_key)
