"""Limits applied before and while a request's body is read: the API key, concurrent uploads, body size and pace."""

import asyncio
import json
import time
from collections.abc import Callable

from fastapi import HTTPException, status
from pymongo.errors import PyMongoError
from starlette.datastructures import Headers
from starlette.requests import cookie_parser
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api import sessions

OPEN_PATHS = {"/api", "/api/", "/api/health"}
MODELS_PATH = "/api/models"  # a model import: a large body too, bounded by MAX_MODEL_BYTES
UPLOAD_PATHS = {"/api/upload_video", MODELS_PATH}
RETRY_AFTER_S = 5


async def refuse(send: Send, code: int, detail: str, headers: dict[str, str] | None = None) -> None:
    """Answer at once, without reading the body (the connection is closed after the answer)."""
    extra = [(name.lower().encode(), value.encode()) for name, value in (headers or {}).items()]
    await send({"type": "http.response.start", "status": code,
                "headers": [(b"content-type", b"application/json"), (b"connection", b"close"), *extra]})  # fmt: skip
    await send({"type": "http.response.body", "body": json.dumps({"detail": detail}).encode()})


async def unavailable(send: Send) -> None:
    """503 with Retry-After: the database a check needs is unreachable (as the app answers it)."""
    await refuse(send, status.HTTP_503_SERVICE_UNAVAILABLE, "the database is unreachable; try again shortly",
                 {"Retry-After": str(RETRY_AFTER_S)})  # fmt: skip


FOREIGN_WRITE = "a write signed in by the session cookie must come from this server's own page"


class ApiKeyGate:
    """ASGI middleware: with API_KEY set, every /api path but health needs the key (X-API-Key) or a valid
    session cookie of the web page (`api.sessions`), checked on the headers: 401 before a byte of the
    body is read. A write authenticated by the cookie alone must come from the server's own page: 403."""

    def __init__(self, app: ASGIApp, key_matches: Callable[[str | None], bool] | None, origins: set[str]) -> None:
        self.app, self.key_matches, self.origins = app, key_matches, origins

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if self.key_matches is None or scope["type"] != "http" or not path.startswith("/api") or path in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        if not self.key_matches(headers.get("x-api-key")):
            token = cookie_parser(headers.get("cookie", "")).get(sessions.COOKIE)
            try:
                valid = token is not None and await sessions.is_valid(scope["app"].state.services.sessions, token)
            except PyMongoError:
                await unavailable(send)
                return
            if not valid:
                await refuse(send, status.HTTP_401_UNAUTHORIZED, "a valid X-API-Key header is required",
                             {"WWW-Authenticate": "X-API-Key"})  # fmt: skip
                return
            if scope.get("method") not in sessions.SAFE_METHODS and not sessions.from_own_page(headers, self.origins):
                await refuse(send, status.HTTP_403_FORBIDDEN, FOREIGN_WRITE)
                return
        await self.app(scope, receive, send)


class UploadSlots:
    """ASGI middleware: at most `slots` uploads stream in at once; more get 503 with Retry-After at once,
    instead of a pile of temporary files."""

    def __init__(self, app: ASGIApp, slots: int) -> None:
        self.app, self.free = app, slots

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path") not in UPLOAD_PATHS or scope.get("method") != "POST":
            await self.app(scope, receive, send)
            return
        if self.free <= 0:
            await refuse(send, status.HTTP_503_SERVICE_UNAVAILABLE, "too many uploads at once; try again shortly",
                         {"Retry-After": str(RETRY_AFTER_S)})  # fmt: skip
            return
        self.free -= 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.free += 1


JOB_PATHS = {"/api/upload_video", "/api/request"}
QUOTA_RETRY_AFTER_S = 30


def client_of(scope: Scope) -> str:
    """The client's address (uvicorn's, or the proxy's X-Forwarded-For where FORWARDED_ALLOW_IPS trusts it)."""
    client = scope.get("client")
    return str(client[0]) if client else "unknown"


class JobQuota:
    """ASGI middleware: a new job (an upload, a request) gets 429 with Retry-After, before its body is
    read, while `per_client` jobs of its client's address, or `total` jobs in all, wait or run: one
    client cannot queue days of work ahead of everybody else's."""

    def __init__(self, app: ASGIApp, per_client: int, total: int) -> None:
        self.app, self.per_client, self.total = app, per_client, total

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path") not in JOB_PATHS or scope.get("method") != "POST":
            await self.app(scope, receive, send)
            return
        jobs = scope["app"].state.services.jobs
        try:  # counted up to the limit only: the cost of a check never grows with the backlog
            mine = await jobs.waiting(client_of(scope), self.per_client)
            everyone = await jobs.waiting(None, self.total) if mine < self.per_client else 0
        except PyMongoError:
            await unavailable(send)
            return
        if mine >= self.per_client or everyone >= self.total:
            whose = f"this client has {mine}" if mine >= self.per_client else f"the server has {everyone}"
            await refuse(send, status.HTTP_429_TOO_MANY_REQUESTS,
                         f"{whose} jobs waiting or in progress, the limit; try again once some have ended",
                         {"Retry-After": str(QUOTA_RETRY_AFTER_S)})  # fmt: skip
            return
        await self.app(scope, receive, send)


MULTIPART_OVERHEAD = 64 * 1024  # form boundaries and fields around the file
GRACE_S = 10.0  # a body's first seconds, before its rate counts (a slow start, a TLS handshake at the proxy)


def too_large(limit: int) -> HTTPException:
    return HTTPException(
        status.HTTP_413_CONTENT_TOO_LARGE, f"the request body is larger than the limit of {limit} bytes"
    )


def too_slow(detail: str) -> HTTPException:
    return HTTPException(status.HTTP_408_REQUEST_TIMEOUT, detail, headers={"Connection": "close"})


class BodyLimits:
    """ASGI middleware: every request body is bounded, in size and in time, before its bytes are held.

    - Size, per path: an upload at most `upload_bytes` (with its form around it), a model import at most
      `model_bytes`, any other body at most `other_bytes`; 413 at once when the declared length passes
      it, and as soon as the received one does.
    - Time: 408 when no byte came for `idle_s`, or when the body arrives slower than `min_rate` bytes
      a second on average (after GRACE_S): a client that sends its headers and goes quiet, or drips,
      gives its upload slot back instead of holding it for ever."""

    def __init__(self, app: ASGIApp, upload_bytes: int, other_bytes: int, idle_s: float, min_rate: int,
                 model_bytes: int | None = None) -> None:  # fmt: skip
        self.app, self.upload_bytes, self.other_bytes = app, upload_bytes, other_bytes
        self.idle_s, self.min_rate = idle_s, min_rate
        self.model_bytes = upload_bytes if model_bytes is None else model_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        upload = scope.get("path") in UPLOAD_PATHS
        allowed = (
            (self.model_bytes if scope.get("path") == MODELS_PATH else self.upload_bytes)
            if upload
            else self.other_bytes
        )
        limit = allowed + (MULTIPART_OVERHEAD if upload else 0)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared and declared.isdigit() and int(declared) > limit:
            await refuse(send, status.HTTP_413_CONTENT_TOO_LARGE, too_large(allowed).detail)
            return
        received, started, done = 0, time.monotonic(), False

        async def bounded() -> Message:
            nonlocal received, done
            if done:  # the body is over: what comes now is the disconnect, which may wait for ever
                return await receive()
            # the time left: no more than `idle_s`, and no later than the minimum rate allows
            allowance = started + GRACE_S + received / self.min_rate - time.monotonic()
            try:
                async with asyncio.timeout(max(0.0, min(self.idle_s, allowance))):
                    message = await receive()
            except TimeoutError:
                raise too_slow(
                    f"the request body stopped for {self.idle_s:.0f} s"
                    if allowance > self.idle_s
                    else f"the request body arrived slower than {self.min_rate} bytes a second"
                ) from None
            received += len(message.get("body", b""))
            done = message["type"] != "http.request" or not message.get("more_body", False)
            if received > limit:
                raise too_large(allowed)  # FastAPI turns it into the 413 response
            return message

        await self.app(scope, bounded, send)


# The web page loads only its own files: no inline script, nothing from elsewhere, never framed.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; media-src 'self' blob:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
SECURITY_HEADERS = [
    (b"content-security-policy", CONTENT_SECURITY_POLICY.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
]


class SecurityHeaders:
    """ASGI middleware: the browser hardening headers on every answer (streamed ones included)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *SECURITY_HEADERS]}
            await send(message)

        await self.app(scope, receive, with_headers)
