"""The web page's sign-in: `POST /api/session` (the key for a session cookie), `DELETE /api/session`."""

from typing import Annotated

from fastapi import APIRouter, Query, Request, Response, status

from api import sessions
from api.deps import Services, ServicesDep, key_check
from api.limits import client_of
from api.schemas import Problem
from api.validation import client_error
from events.log import get_logger

log = get_logger(__name__)
router = APIRouter()


COOKIE_HEADER = {"Set-Cookie": {
    "description": "vdetect_session=...; HttpOnly; Max-Age=43200; SameSite=strict; Path=/api (Secure over TLS)",
    "schema": {"type": "string"}}}  # fmt: skip


@router.post(
    "/session",
    status_code=status.HTTP_204_NO_CONTENT,
    responses={204: {"description": "the session cookie is set", "headers": COOKIE_HEADER},
               401: {"model": Problem, "description": "without a valid X-API-Key: a session opens only with the key"}},
)  # fmt: skip
async def open_session(services: ServicesDep, request: Request, response: Response) -> None:
    """Sign in: the X-API-Key header (checked, like every /api path, before the request is read) is
    exchanged for an HttpOnly session cookie that expires after SESSION_TTL_S, so the web page's uploads,
    event streams and video player work without the key in a URL."""
    await sign_in(services, request, response)


@router.delete(
    "/session",
    status_code=status.HTTP_204_NO_CONTENT,
    responses={204: {"description": "the session is revoked and its cookie removed", "headers": COOKIE_HEADER},
               403: {"model": Problem, "description": "`all=true` without the X-API-Key header"}},
)  # fmt: skip
async def close_session(
    services: ServicesDep,
    request: Request,
    response: Response,
    every: Annotated[bool, Query(alias="all", description="revoke every session (needs X-API-Key)")] = False,
) -> None:
    """Sign out: this cookie's session is revoked and the cookie removed; with `all=true` and the key,
    every session is revoked."""
    await sign_out(services, request, response, every)


async def sign_in(services: Services, request: Request, response: Response) -> None:
    settings = services.settings
    if (matches := key_check(settings.api_key)) is None:
        return  # no key, no sign-in needed
    if not matches(request.headers.get("x-api-key")):  # a session does not open another one
        raise client_error("a valid X-API-Key header is required", status.HTTP_401_UNAUTHORIZED)
    token, _ = await sessions.open_session(services.sessions, settings.session_ttl_s, client_of(request.scope))
    secure = sessions.secure_cookie(settings.session_cookie_secure, request.url.scheme, request.headers)
    response.set_cookie(sessions.COOKIE, token, max_age=int(settings.session_ttl_s), httponly=True,
                        samesite="strict", secure=secure, path="/api")  # fmt: skip


async def sign_out(services: Services, request: Request, response: Response, every: bool) -> None:
    if every:
        matches = key_check(services.settings.api_key)
        if matches is not None and not matches(request.headers.get("x-api-key")):
            raise client_error("revoking every session needs the X-API-Key header", status.HTTP_403_FORBIDDEN)
        revoked = await sessions.revoke_all(services.sessions)
    else:
        revoked = await sessions.revoke(services.sessions, request.cookies.get(sessions.COOKIE))
    log.info("sessions revoked", sessions=revoked)
    response.delete_cookie(sessions.COOKIE, path="/api", httponly=True, samesite="strict")
