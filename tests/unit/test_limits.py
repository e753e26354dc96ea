"""The upload limit stops reading a body as soon as it is passed, with no declared length."""

from collections.abc import MutableMapping
from typing import Any

from fastapi import FastAPI, Request

from api.limits import BodyLimits

CHUNK = 64 * 1024


async def test_a_body_over_the_limit_is_refused_while_it_streams() -> None:
    app = FastAPI()

    @app.post("/api/upload_video")
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
        "path": "/api/upload_video",
        "headers": [],
        "query_string": b"",
        "http_version": "1.1",
        "scheme": "http",
        "server": ("t", 80),
        "client": ("c", 1),
        "root_path": "",
    }
    await BodyLimits(app, 1_000_000, 1000, 30, 1)(scope, receive, send)
    assert sent[0]["status"] == 413
    assert pulled * CHUNK < 1_000_000 + 64 * 1024 + 2 * CHUNK  # stopped right after the limit


async def test_a_body_that_drips_slower_than_the_minimum_rate_gets_408(monkeypatch) -> None:
    import asyncio

    from api import limits

    monkeypatch.setattr(limits, "GRACE_S", 0.2)
    app = FastAPI()

    @app.post("/api/request")
    async def read_all(request: Request) -> dict:
        return {"size": len(await request.body())}

    async def drip() -> dict:
        await asyncio.sleep(0.05)
        return {"type": "http.request", "body": b"x", "more_body": True}  # 20 bytes a second, for ever

    sent: list[MutableMapping[str, Any]] = []

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/api/request", "headers": [], "query_string": b"",
             "http_version": "1.1", "scheme": "http", "server": ("t", 80), "client": ("c", 1),
             "root_path": ""}  # fmt: skip
    async with asyncio.timeout(5):
        await BodyLimits(app, 1_000_000, 1_000_000, idle_s=30, min_rate=100)(scope, drip, send)
    assert sent[0]["status"] == 408
    assert b"slower than 100 bytes a second" in sent[1]["body"]


def test_a_listener_far_behind_holds_a_bounded_number_of_jobs_and_reads_the_current_state_again() -> None:
    from api.live import MAX_HELD, Listener

    listener = Listener(None)
    for number in range(MAX_HELD * 5):
        listener.offer(f"job-{number}", {"_id": f"job-{number}", "version": 1})
    assert len(listener.latest) <= MAX_HELD and listener.resync
