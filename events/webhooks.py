"""Webhooks: which callback URLs are allowed, and how a delivery is signed (shared by API and relay).

A callback URL must be `http` or `https` without spaces, control characters or credentials, and
every address its host resolves to must be globally routable (`is_global`; an IPv4 address carried in
IPv6 — mapped, 6to4, Teredo, NAT64 — is judged as the IPv4 address it carries), unless
WEBHOOK_ALLOW_PRIVATE=true: the server would otherwise POST into its own network on a client's behalf
(SSRF). The API checks it when the job is submitted, the relay again before each delivery, and the
relay then connects to the address it checked, never to a second answer of the name (DNS rebinding).

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
from collections.abc import Awaitable, Callable
from urllib.parse import SplitResult, urlsplit

PENDING = "pending"  # a job's `webhook` from its acceptance until its delivery is over (or given up)
DELIVERY_NAMESPACE = uuid.UUID("4f1c2d9e-7b1a-4c55-9a51-2f6c1e0b7d31")


class RefusedURL(ValueError):
    """The callback URL may not be called; the message says why."""


NAT64 = ipaddress.ip_network("64:ff9b::/96")
# Not globally routable, although older tables of Python's `is_global` say so.
NOT_GLOBAL = [ipaddress.ip_network(net) for net in ("192.0.0.0/24", "fec0::/10", "0.0.0.0/8", "240.0.0.0/4")]
Resolver = Callable[[str, int], Awaitable[list[str]]]


def carried(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """The IPv4 address an IPv6 one carries (mapped, 6to4, Teredo's client, NAT64), or the address itself."""
    if isinstance(ip, ipaddress.IPv4Address):
        return ip
    if ip.ipv4_mapped:
        return ip.ipv4_mapped
    if ip.sixtofour:
        return ip.sixtofour
    if ip.teredo:
        return ip.teredo[1]
    if ip in NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return ip


def is_public(address: str) -> bool:
    """Whether a webhook may be sent to this address: globally routable and not multicast, also as the
    IPv4 address it may carry (100.64.0.0/10, fec0::/10, 192.0.0.8 and `2002:7f00:1::` are not)."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    inner = carried(ip)
    return all(each.is_global and not each.is_multicast and not any(each in net for net in NOT_GLOBAL)
               for each in {ip, inner})  # fmt: skip


async def resolve(host: str, port: int) -> list[str]:
    """The addresses of `host`, as the system's resolver gives them."""
    found = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in found))


def parse(url: str) -> SplitResult:
    """The parts of a callback URL; RefusedURL unless it is an http(s) URL with a host, a valid port,
    no credentials, and no space or control character."""
    if any(not char.isprintable() or char.isspace() for char in url):
        raise RefusedURL("callback_url must not contain spaces or control characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as error:
        raise RefusedURL(f"callback_url is not a valid URL: {error}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise RefusedURL("callback_url must be an http or https URL with a host")
    if parts.username or parts.password:
        raise RefusedURL("callback_url must not carry credentials")
    if port == 0:
        raise RefusedURL("callback_url has an invalid port")
    return parts


async def check_callback_url(url: str, allow_private: bool, resolver: Resolver = resolve) -> list[str]:
    """The addresses to deliver to (those of the URL's host, each checked); RefusedURL with the reason
    unless `url` may receive webhooks."""
    parts = parse(url)
    host = parts.hostname
    assert host is not None
    try:
        addresses = await resolver(host, parts.port or (443 if parts.scheme == "https" else 80))
    except (OSError, UnicodeError, ValueError) as error:
        raise RefusedURL(f"the host of callback_url cannot be resolved: {host}") from error
    if not addresses:
        raise RefusedURL(f"the host of callback_url cannot be resolved: {host}")
    if not allow_private and not all(is_public(address) for address in addresses):
        raise RefusedURL("callback_url points to an address that is not public (loopback, private, shared or reserved)")
    return addresses


def delivery_id(event_id: str) -> str:
    """The delivery's id: the same for every attempt, also after a restart of the relay."""
    return str(uuid.uuid5(DELIVERY_NAMESPACE, f"{event_id}/final"))


def signature(secret: str, timestamp: int, body: bytes) -> str:
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


def verify(secret: str, timestamp: str, body: bytes, signed: str) -> bool:
    """What a receiver does (used by the tests and shown in the README)."""
    return hmac.compare_digest(signature(secret, int(timestamp), body), signed)
