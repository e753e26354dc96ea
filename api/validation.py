"""Checks on what clients send: bucket names, object keys, ids, and whether bytes look like a video."""

import re
import unicodedata
from typing import Any

from fastapi import HTTPException, status
from pydantic import TypeAdapter, ValidationError

from events import webhooks
from events.contracts import JobOptions, Zone

BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
MP4_BOXES = {b"ftyp", b"moov", b"mdat", b"free", b"wide", b"skip"}
PROBE_BYTES = 512
MAX_FILE_NAME = 120


def client_error(message: str, code: int = status.HTTP_400_BAD_REQUEST) -> HTTPException:
    """A 4xx answer whose detail says what was wrong."""
    return HTTPException(status_code=code, detail=message)


def check_bucket(bucket: str, allowed: set[str]) -> str:
    """A bucket a client may name: a valid name, in ALLOWED_BUCKETS (which this answer does not list)."""
    if not BUCKET_RE.match(bucket) or ".." in bucket:
        raise client_error(f"invalid bucket name {bucket!r}: 3-63 lowercase letters, digits, dots and hyphens")
    if bucket not in allowed:
        raise client_error(f"bucket {bucket!r} is not allowed on this server", 403)
    return bucket


MAX_KEY_BYTES = 1024  # S3's limit
MAX_KEY_PART_BYTES = 255  # a file name's, in the local stack's folder


def check_object_key(key: str) -> str:
    parts = key.split("/")
    if key.startswith("/") or any(part in {"", ".", ".."} for part in parts) or not key.isprintable():
        raise client_error(f"invalid object key {key[:100]!r}: a relative path without empty, '.' or '..' parts")
    if len(key.encode()) > MAX_KEY_BYTES or any(len(part.encode()) > MAX_KEY_PART_BYTES for part in parts):
        raise client_error(
            f"invalid object key: at most {MAX_KEY_BYTES} bytes, and {MAX_KEY_PART_BYTES} between two slashes"
        )
    return key


def file_label(name: str | None) -> str | None:
    """A file name fit to show: its last path part (a browser may send a whole path), without control or
    format characters, whitespace collapsed, at most MAX_FILE_NAME characters (an ellipsis in the middle
    keeps the extension); None when nothing is left."""
    if not name:
        return None
    base = re.split(r"[/\\]", unicodedata.normalize("NFC", name))[-1]
    shown = " ".join("".join(c for c in base if unicodedata.category(c)[0] != "C").split())
    if len(shown) > MAX_FILE_NAME:
        keep = MAX_FILE_NAME - 1
        shown = shown[: keep - keep // 3] + "…" + shown[-(keep // 3) :]
    return shown or None


def looks_like_video(head: bytes) -> bool:
    """Container signatures: MP4/MOV/3GP, Matroska/WebM, AVI, FLV, MPEG-TS, MPEG-PS, Ogg."""
    return (
        head[4:8] in MP4_BOXES
        or head.startswith(b"\x1a\x45\xdf\xa3")
        or (head.startswith(b"RIFF") and head[8:12] == b"AVI ")
        or head.startswith(b"FLV")
        or (len(head) > 188 and head[0] == 0x47 and head[188] == 0x47)
        or head.startswith(b"\x00\x00\x01\xba")
        or head.startswith(b"OggS")
    )


async def check_callback_url(url: str, enabled: bool, allow_private: bool) -> None:
    """400 unless the server signs webhooks (`enabled`: WEBHOOK_SECRET is set) and `url` may receive them
    (no private networks unless `allow_private`: SSRF)."""
    if not enabled:
        raise client_error("webhooks are not enabled on this server (WEBHOOK_SECRET is not set)")
    try:
        await webhooks.check_callback_url(url, allow_private)
    except webhooks.RefusedURL as error:
        raise client_error(str(error)) from error


MAX_ZONES_BYTES = 64 * 1024
ZONES = TypeAdapter(list[Zone])


def problems(error: ValidationError, within: str | None = None) -> str:
    """A validation error as one line: where, and what was wrong (never the whole input back)."""
    found = []
    for item in error.errors(include_url=False, include_input=False)[:5]:
        where = [within] if within else []
        where += [str(part) for part in item["loc"] if part not in ("line", "polygon") or part == item["loc"][-1]]
        found.append(f"{'.'.join(where) or 'value'}: {item['msg'].removeprefix('Value error, ')}")
    return "; ".join(found)


def job_options(track: bool | None, zones: Any, render: bool | None) -> JobOptions:
    """A job's options from the request's fields (`zones`: a JSON text from a form, or a parsed list);
    400 saying what is wrong. Fields not given keep their defaults."""
    given: dict[str, Any] = {name: value for name, value in (("track", track), ("render", render)) if value is not None}
    try:
        if isinstance(zones, str) and zones.strip() not in ("", "null"):
            if len(zones) > MAX_ZONES_BYTES:
                raise client_error(f"zones: more than {MAX_ZONES_BYTES} bytes")
            try:
                given["zones"] = ZONES.validate_json(zones)
            except ValidationError as error:
                raise client_error(f"invalid job options: {problems(error, 'zones')}") from None
        elif zones is not None and not isinstance(zones, str):
            given["zones"] = zones
        return JobOptions.model_validate(given)
    except ValidationError as error:
        raise client_error(f"invalid job options: {problems(error)}") from None


FLAGS = {"true": True, "1": True, "yes": True, "on": True, "false": False, "0": False, "no": False, "off": False}


def form_flag(name: str, value: str | None) -> bool | None:
    """A yes/no form field: true/false (1/0, yes/no, on/off); empty or `null`: not given; else 400."""
    if value is None or value.strip().lower() in ("", "null"):
        return None
    if (flag := FLAGS.get(value.strip().lower())) is None:
        raise client_error(f"{name} must be true or false, not {value[:20]!r}")
    return flag
