"""The detection file, streamed both ways: written from a job's frame documents, read back frame by frame.

Neither side ever holds a whole result. A two-hour video at 30 fps sampled every 5th frame is 43,200
frames; a dense scene makes that hundreds of MB of JSON. The writer puts `prediction` after a
small header, and what is counted over the frames (the summary, the zones) after it; the reader
parses any key order (ijson, incremental, C backend).
"""

import json
from collections.abc import AsyncIterable, Callable, Iterator
from pathlib import Path
from typing import IO, Any

import ijson

CHUNK_BYTES = 1024 * 1024
PREDICTION = b',"prediction":['
HEADER_BYTES = 64 * 1024  # the header is a few small members: found in the file's first bytes


def compact(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def frame_json(doc: dict[str, Any]) -> bytes:
    """One frame of `prediction` from its stored document (`{"frame", "objects"}`, plus `"error"` if any)."""
    frame = {"frame": doc["frame"], "objects": doc["objects"]}
    if doc.get("error"):
        frame["error"] = doc["error"]
    return compact(frame)


def open_object(head: dict[str, Any]) -> bytes:
    """`{...head, "prediction": [`: the start of a JSON object whose last member is the prediction list."""
    return compact(head)[:-1] + PREDICTION


def split(first: bytes) -> tuple[dict[str, Any], int] | None:
    """(The header, where the prediction list's members start) from a detection file's first bytes, as
    `write` lays it out; None for another layout. The marker cannot occur inside the header's strings
    (their quotes are escaped), so its first occurrence ends the header."""
    at = first.find(PREDICTION)
    if at <= 0:
        return None
    try:
        head = json.loads(first[:at] + b"}")
    except ValueError:
        return None
    return (head, at + len(PREDICTION)) if isinstance(head, dict) else None


async def write(
    out: IO[bytes], head: dict[str, Any], frames: AsyncIterable[dict[str, Any]],
    tail: Callable[[], dict[str, Any]] | None = None,
) -> int:  # fmt: skip
    """Write the detection file to `out` (a buffered file) from frame documents in frame order, then the
    members `tail()` gives once every frame went by (what was counted over them: small, never per frame);
    returns how many frames."""
    out.write(open_object(head))
    count = 0
    async for doc in frames:
        out.write(b"," + frame_json(doc) if count else frame_json(doc))
        count += 1
    after = tail() if tail is not None else {}
    out.write(b"]" + (b"," + compact(after)[1:] if after else b"}"))
    return count


def header(path: Path) -> dict[str, Any]:
    """The scalar members of a detection file before its `prediction` (read without parsing the rest)."""
    found: dict[str, Any] = {}
    with path.open("rb") as source:
        for prefix, event, value in ijson.parse(source, use_float=True):
            if prefix == "prediction":
                break
            if event in ("string", "number", "boolean", "null") and "." not in prefix and prefix:
                found[prefix] = value
    return found


def frames(path: Path) -> Iterator[dict[str, Any]]:
    """A detection file's frames, one at a time, in the file's order."""
    with path.open("rb") as source:
        yield from ijson.items(source, "prediction.item", use_float=True)


def prediction_chunks(path: Path) -> Iterator[bytes]:
    """The members of a detection file's `prediction` list, comma-separated, about CHUNK_BYTES at a time."""
    pending: list[bytes] = []
    size, first = 0, True
    for frame in frames(path):
        pending.append(compact(frame))
        size += len(pending[-1])
        if size >= CHUNK_BYTES:
            yield (b"" if first else b",") + b",".join(pending)
            pending, size, first = [], 0, False
    if pending:
        yield (b"" if first else b",") + b",".join(pending)
