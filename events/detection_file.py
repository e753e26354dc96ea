"""The detection file, streamed both ways: written from a job's frame documents, read back frame by frame.

Neither side ever holds a whole result. A two-hour video at 30 fps sampled every 5th frame is 43,200
frames; a dense scene makes that hundreds of MB of JSON. The writer puts `prediction` last, after a
small header; the reader parses any key order (ijson, incremental, C backend).
"""

import json
from collections.abc import AsyncIterable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any, BinaryIO

import ijson

from events.contracts import Contract

CHUNK_BYTES = 1024 * 1024


class DetectionHeader(Contract):
    event_id: str
    total_frames: int
    created_at: datetime
    completed_at: datetime


def frame_json(doc: dict[str, Any]) -> bytes:
    """One frame of `prediction` from its stored document (`{"frame", "objects"}`, plus `"error"` if any)."""
    frame = {"frame": doc["frame"], "objects": doc["objects"]}
    if doc.get("error"):
        frame["error"] = doc["error"]
    return json.dumps(frame, separators=(",", ":")).encode()


def open_object(head: dict[str, Any] | Contract) -> bytes:
    """`{...head, "prediction": [`: the start of a JSON object whose last member is the prediction list."""
    encoded = head.to_bytes() if isinstance(head, Contract) else json.dumps(head, separators=(",", ":")).encode()
    return encoded[:-1] + (b',"prediction":[' if len(encoded) > 2 else b'"prediction":[')


async def write(out: BinaryIO, header: DetectionHeader, frames: AsyncIterable[dict[str, Any]]) -> int:
    """Write the detection file to `out` from frame documents in frame order; returns how many frames."""
    out.write(open_object(header))
    pending: list[bytes] = []
    size = count = 0
    async for doc in frames:
        pending.append(frame_json(doc))
        size += len(pending[-1])
        count += 1
        if size >= CHUNK_BYTES:
            out.write((b"," if count > len(pending) else b"") + b",".join(pending))
            pending, size = [], 0
    if pending:
        out.write((b"," if count > len(pending) else b"") + b",".join(pending))
    out.write(b"]}")
    return count


def prediction_chunks(path: Path) -> Iterator[bytes]:
    """The members of a detection file's `prediction` list, comma-separated, about CHUNK_BYTES at a time."""
    with path.open("rb") as source:
        pending: list[bytes] = []
        size, first = 0, True
        for frame in ijson.items(source, "prediction.item", use_float=True):
            pending.append(json.dumps(frame, separators=(",", ":")).encode())
            size += len(pending[-1])
            if size >= CHUNK_BYTES:
                yield (b"" if first else b",") + b",".join(pending)
                pending, size, first = [], 0, False
        if pending:
            yield (b"" if first else b",") + b",".join(pending)
