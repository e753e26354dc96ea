"""Answers streamed from storage: a ready result passed through as stored, a video's byte range."""

import asyncio
import hashlib
from collections.abc import AsyncIterator, Iterator
from datetime import datetime
from typing import Any

from fastapi import HTTPException, status
from fastapi.responses import StreamingResponse
from starlette.concurrency import iterate_in_threadpool

from analytics import exports
from events import detection_file
from events.storage import ObjectStore

CARRIED = ("fps", "model", "stride", "width", "height")  # what the answer takes from the stored file's header


def carried(stored: dict[str, Any]) -> dict[str, Any]:
    return {name: stored[name] for name in CARRIED if stored.get(name) is not None}


async def stream_ready(
    store: ObjectStore, bucket: str, key: str, head: dict[str, Any], size: int
) -> AsyncIterator[bytes]:
    """The `ready` answer: the stored detection file's bytes passed through from storage as they are
    (its `prediction` list is last), after the answer's own members (the video's frame rate, which a
    player maps frames to time with, and the model that made it, when the file knows them). Nothing is
    parsed but the header."""
    first = b"".join(
        [chunk async for chunk in store.read_range(bucket, key, 0, min(size, detection_file.HEADER_BYTES))]
    )
    if (found := detection_file.split(first)) is None:  # not the layout `detection_file.write` makes
        async for chunk in parsed_ready(store, bucket, key, head):
            yield chunk
        return
    stored, start = found
    yield detection_file.open_object({**head, **carried(stored)})
    async for chunk in store.read_range(bucket, key, start, size - start):  # the list's members and `]}`
        yield chunk


async def parsed_ready(store: ObjectStore, bucket: str, key: str, head: dict[str, Any]) -> AsyncIterator[bytes]:
    """The `ready` answer from a detection file of another layout, its frames parsed one by one."""
    async with store.local_copy(bucket, key) as path:
        yield detection_file.open_object({**head, **carried(await asyncio.to_thread(detection_file.header, path))})
        async for chunk in iterate_in_threadpool(detection_file.prediction_chunks(path)):
            yield chunk
        yield b"]}"


def result_etag(event_id: str, size: int, ready_at: datetime, output: str = "json") -> str:
    """A ready result never changes: its tag is the job and the stored file's size and time (and the format)."""
    suffix = "" if output == "json" else f"/{output}"
    return '"' + hashlib.sha256(f"{event_id}/{size}/{ready_at.isoformat()}{suffix}".encode()).hexdigest()[:32] + '"'


def byte_range(header: str | None, size: int) -> tuple[int, int]:
    """(first, last) byte of a single `Range: bytes=...` request, or of the whole file without one."""
    if header is None:
        return 0, size - 1
    unit, _, spec = header.partition("=")
    first, dash, last = spec.strip().partition("-")
    if unit.strip() != "bytes" or not dash or "," in spec or not (first or last):
        raise ValueError(f"unsupported range {header!r}: one range of bytes")
    try:
        if not first:  # the last N bytes
            start, end = max(size - int(last), 0), size - 1
        else:
            start, end = int(first), min(int(last), size - 1) if last else size - 1
    except ValueError as error:
        raise ValueError(f"invalid range {header!r}") from error
    if start > end or start >= size:
        raise ValueError(f"range {header!r} is outside the video's {size} bytes")
    return start, end


async def exported(
    store: ObjectStore, bucket: str, key: str, event_id: str, output: exports.Format
) -> AsyncIterator[bytes]:
    """A ready result in another format (`analytics.exports`), converted frame by frame from a local copy."""
    async with store.local_copy(bucket, key) as path:
        head = {**await asyncio.to_thread(detection_file.header, path), "event_id": event_id}
        text = exports.text(output, head, lambda: detection_file.frames(path))
        async for piece in iterate_in_threadpool(batched(text)):
            yield piece


def batched(text: Iterator[str], size: int = 256 * 1024) -> Iterator[bytes]:
    pending: list[str] = []
    length = 0
    for piece in text:
        pending.append(piece)
        length += len(piece)
        if length >= size:
            yield "".join(pending).encode()
            pending, length = [], 0
    if pending:
        yield "".join(pending).encode()


def ranged(
    store: ObjectStore, bucket: str, key: str, size: int, header: str | None, media_type: str
) -> StreamingResponse:
    """An object with HTTP range requests (a browser's player seeks with them): 206 for a range, 416 outside."""
    try:
        start, end = byte_range(header, size)
    except ValueError as error:
        raise HTTPException(status.HTTP_416_RANGE_NOT_SATISFIABLE, str(error),
                            headers={"Content-Range": f"bytes */{size}"}) from error  # fmt: skip
    headers = {"Accept-Ranges": "bytes", "Content-Length": str(end - start + 1)}
    if header is not None:
        headers["Content-Range"] = f"bytes {start}-{end}/{size}"
    body = store.read_range(bucket, key, start, end - start + 1)
    code = status.HTTP_206_PARTIAL_CONTENT if header is not None else status.HTTP_200_OK
    return StreamingResponse(body, code, headers=headers, media_type=media_type)
