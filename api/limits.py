"""Limits applied before a request's body is read: the API key, concurrent uploads, the upload size."""

import json
from collections.abc import Callable

from fastapi import HTTPException, status
from starlette.datastructures import Headers
from starlette.requests import cookie_parser
from starlette.types import ASGIApp, Message, Receive, Scope, Send

OPEN_PATHS = {"/api", "/api/", "/api/health"}
SESSION_COOKIE = "vdetect_session"  # the web page's session (api.deps.session_token)
UPLOAD_PATHS = {"/api/upload_video"}
RETRY_AFTER_S = 5


async def refuse(send: Send, code: int, detail: str, headers: dict[str, str] | None = None) -> None:
    """Answer at once, without reading the body (the connection is closed after the answer)."""
    extra = [(name.lower().encode(), value.encode()) for name, value in (headers or {}).items()]
    await send({"type": "http.response.start", "status": code,
                "headers": [(b"content-type", b"application/json"), (b"connection", b"close"), *extra]})  # fmt: skip
    await send({"type": "http.response.body", "body": json.dumps({"detail": detail}).encode()})


class ApiKeyGate:
    """ASGI middleware: with API_KEY set, every /api path but health needs the key (X-API-Key, or the
    web page's session cookie), checked on the headers: 401 before a byte of the body is read."""

    def __init__(self, app: ASGIApp, accepts: Callable[[str | None, str | None], bool] | None) -> None:
        self.app, self.accepts = app, accepts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if self.accepts is None or scope["type"] != "http" or not path.startswith("/api") or path in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        session = cookie_parser(headers.get("cookie", "")).get(SESSION_COOKIE)
        if not self.accepts(headers.get("x-api-key"), session):
            await refuse(send, status.HTTP_401_UNAUTHORIZED, "a valid X-API-Key header is required",
                         {"WWW-Authenticate": "X-API-Key"})  # fmt: skip
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


MULTIPART_OVERHEAD = 64 * 1024  # form boundaries and fields around the file


def too_large(limit: int) -> HTTPException:
    return HTTPException(status.HTTP_413_CONTENT_TOO_LARGE, f"the upload is larger than the limit of {limit} bytes")


class BodySizeLimit:
    """ASGI middleware: 413 as soon as the declared or received body passes `max_bytes`."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.max_bytes + MULTIPART_OVERHEAD
        declared = dict(scope["headers"]).get(b"content-length")
        if declared and declared.isdigit() and int(declared) > limit:
            await refuse(send, status.HTTP_413_CONTENT_TOO_LARGE, too_large(self.max_bytes).detail)
            return
        received = 0

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > limit:
                raise too_large(self.max_bytes)  # FastAPI turns it into the 413 response
            return message

        await self.app(scope, counted, send)


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
