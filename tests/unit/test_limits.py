"""The upload limit stops reading a body as soon as it is passed, with no declared length."""

from collections.abc import MutableMapping
from typing import Any

from fastapi import FastAPI, Request

from api.limits import BodySizeLimit

CHUNK = 64 * 1024


async def test_a_body_over_the_limit_is_refused_while_it_streams() -> None:
    app = FastAPI()

    @app.post("/upload")
    async def read_all(request: Request) -> dict:
        return {"size": len(await request.body())}

    pulled = 0

    async def receive() -> dict:
        nonlocal pulled
        pulled += 1
        return {"type": "http.request", "body": b"\x00" * CHUNK, "more_body": pulled < 1000}  # 64 MB offered

    sent: list[MutableMapping[str, Any]] = []

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/upload",
        "headers": [],
        "query_string": b"",
        "http_version": "1.1",
        "scheme": "http",
        "server": ("t", 80),
        "client": ("c", 1),
        "root_path": "",
    }
    await BodySizeLimit(app, max_bytes=1_000_000)(scope, receive, send)
    assert sent[0]["status"] == 413
    assert pulled * CHUNK < 1_000_000 + 64 * 1024 + 2 * CHUNK  # stopped right after the limit
