"""Answers streamed from storage: a ready result passed through as stored, a video's byte range."""

import asyncio
import hashlib
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

from starlette.concurrency import iterate_in_threadpool

from events import detection_file
from events.storage import ObjectStore

CARRIED = ("fps", "model")  # what the answer takes from the stored file's header, when it is there


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


def result_etag(event_id: str, size: int, ready_at: datetime) -> str:
    """A ready result never changes: its tag is the job and the stored file's size and time."""
    return '"' + hashlib.sha256(f"{event_id}/{size}/{ready_at.isoformat()}".encode()).hexdigest()[:32] + '"'


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
