"""Webhooks: which callback URLs are allowed, and how a delivery is signed (shared by API and relay).

A callback URL must be `http` or `https`, and its host must not be or resolve to a loopback,
private, link-local, multicast or otherwise reserved address (unless WEBHOOK_ALLOW_PRIVATE=true):
the server would otherwise POST into its own network on a client's behalf (SSRF). The API checks it
when the job is submitted, the relay again before each delivery (a name may resolve elsewhere later).

Signature: `X-Vdetect-Signature: sha256=<hex HMAC-SHA256 of "{timestamp}.{raw body}">`, keyed with
WEBHOOK_SECRET, `timestamp` being `X-Vdetect-Timestamp` (unix seconds). A receiver recomputes it,
compares in constant time, and refuses timestamps far from its clock (replays).
"""

import asyncio
import hashlib
import hmac
import ipaddress
import socket
import uuid
from urllib.parse import urlsplit

PENDING = "pending"  # a job's `webhook` from its acceptance until its delivery is over (or given up)
DELIVERY_NAMESPACE = uuid.UUID("4f1c2d9e-7b1a-4c55-9a51-2f6c1e0b7d31")


class RefusedURL(ValueError):
    """The callback URL may not be called; the message says why."""


def _forbidden(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    return (ip.is_loopback or ip.is_private or ip.is_link_local or ip.is_multicast or ip.is_unspecified
            or ip.is_reserved)  # fmt: skip


async def check_callback_url(url: str, allow_private: bool) -> None:
    """RefusedURL with the reason unless `url` may receive webhooks."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise RefusedURL("callback_url must be an http or https URL with a host")
    if parts.username or parts.password:
        raise RefusedURL("callback_url must not carry credentials")
    try:
        port = parts.port
    except ValueError as error:
        raise RefusedURL("callback_url has an invalid port") from error
    if allow_private:
        return
    try:
        found = await asyncio.get_running_loop().getaddrinfo(parts.hostname, port or 443, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as error:
        raise RefusedURL(f"the host of callback_url cannot be resolved: {parts.hostname}") from error
    if not found or any(_forbidden(str(info[4][0])) for info in found):
        raise RefusedURL("callback_url points to a loopback, private, link-local or multicast address")


def delivery_id(event_id: str) -> str:
    """The delivery's id: the same for every attempt, also after a restart of the relay."""
    return str(uuid.uuid5(DELIVERY_NAMESPACE, f"{event_id}/final"))


def signature(secret: str, timestamp: int, body: bytes) -> str:
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


def verify(secret: str, timestamp: str, body: bytes, signed: str) -> bool:
    """What a receiver does (used by the tests and shown in the README)."""
    return hmac.compare_digest(signature(secret, int(timestamp), body), signed)
