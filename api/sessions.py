"""The web page's sessions: a random token per sign-in, kept only as its hash in `main_db.sessions`
with its expiry (SESSION_TTL_S; a TTL index removes it after), revoked one at a time (sign-out) or all
at once. The cookie that carries the token is HttpOnly, SameSite=Strict, and Secure behind TLS.

A write authenticated by the cookie must come from the server's own page: `Sec-Fetch-Site:
same-origin`, or an `Origin` whose host is the request's (or one of CORS_ORIGINS). SameSite=Strict
alone lets another port of the same host through (a page there is "same-site")."""

import hashlib
import secrets
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

from pymongo.asynchronous.collection import AsyncCollection
from starlette.datastructures import Headers

from events.contracts import SessionDocument, utcnow

COOKIE = "vdetect_session"
SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


async def open_session(sessions: AsyncCollection, ttl_s: float, client: str) -> tuple[str, datetime]:
    """A new session: (its token, for the cookie; when it expires)."""
    token, now = secrets.token_urlsafe(32), utcnow()
    expires = now + timedelta(seconds=ttl_s)
    await sessions.insert_one(SessionDocument(id=digest(token), created_at=now, expires_at=expires,
                                              client=client).to_mongo())  # fmt: skip
    return token, expires


async def is_valid(sessions: AsyncCollection, token: str) -> bool:
    found: dict[str, Any] | None = await sessions.find_one({"_id": digest(token), "expires_at": {"$gt": utcnow()}})
    return found is not None


async def revoke(sessions: AsyncCollection, token: str | None) -> int:
    return (await sessions.delete_one({"_id": digest(token)})).deleted_count if token else 0


async def revoke_all(sessions: AsyncCollection) -> int:
    return (await sessions.delete_many({})).deleted_count


def from_own_page(headers: Headers, allowed_origins: set[str]) -> bool:
    """Whether a browser says the request comes from this server's own page (see the module's docstring)."""
    site = headers.get("sec-fetch-site")
    if site is not None:
        return site == "same-origin"
    origin = headers.get("origin")
    if origin is None or origin == "null":
        return False
    return origin in allowed_origins or urlsplit(origin).netloc == headers.get("host")


def secure_cookie(always: bool, scheme: str, headers: Headers) -> bool:
    """The cookie is Secure when SESSION_COOKIE_SECURE says so, or the request came over TLS (directly,
    or through a proxy that says so in X-Forwarded-Proto)."""
    return always or scheme == "https" or headers.get("x-forwarded-proto", "").split(",")[0].strip() == "https"
