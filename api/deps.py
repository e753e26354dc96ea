"""What a request handler gets: the clients opened by the app's lifespan."""

import hashlib
import hmac
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from pydantic import SecretStr
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


def session_token(api_key: str) -> str:
    """What the web page's session cookie holds: derived from the key, never the key itself."""
    return hmac.new(api_key.encode(), b"vdetect web session", hashlib.sha256).hexdigest()


def key_check(api_key: SecretStr | None) -> Callable[[str | None, str | None], bool] | None:
    """The check of `api.limits.ApiKeyGate`: the key in X-API-Key, or the session cookie; None: no key set."""
    if api_key is None:
        return None
    key = api_key.get_secret_value().encode()
    token = session_token(api_key.get_secret_value()).encode()

    def accepts(header: str | None, session: str | None) -> bool:
        by_header = header is not None and secrets.compare_digest(header.encode(), key)
        return by_header or (session is not None and secrets.compare_digest(session.encode(), token))

    return accepts
