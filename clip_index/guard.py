"""Address guard for fetching untrusted URLs on a cloud worker: only http(s), and no private,
loopback, link-local (cloud metadata), multicast or reserved addresses, checked after DNS
resolution (so a public name pointing at 10.0.0.1 is refused too)."""

from __future__ import annotations

import ipaddress
import socket
from typing import Any
from urllib.parse import urlsplit

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver

ALLOWED_SCHEMES = ("http", "https")


class BlockedURL(OSError):
    """A URL the guard refuses; the message says why (scheme or address)."""


def is_public_address(address: str) -> bool:
    """True for globally routable unicast addresses (IPv4-mapped IPv6 is unwrapped first)."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return bool(ip.is_global) and not (ip.is_multicast or ip.is_reserved)


def check_scheme_and_literal(url: str, allow_private_networks: bool) -> None:
    """Refuse non-http(s) schemes, and hosts that are non-public IP literals, before connecting.

    (aiohttp does not call the resolver for IP literals, so they are checked here.)
    """
    parts = urlsplit(url)
    if parts.scheme.lower() not in ALLOWED_SCHEMES:
        raise BlockedURL(f"blocked_scheme: {parts.scheme or 'none'!r} is not http or https")
    host = parts.hostname or ""
    if allow_private_networks or not host:
        return
    try:
        literal = ipaddress.ip_address(host)
    except ValueError:
        return  # a name: checked by GuardedResolver after resolution
    if not is_public_address(str(literal)):
        raise BlockedURL(f"blocked_address: {host} is not a public address")


class GuardedResolver(AbstractResolver):
    """An aiohttp resolver that drops non-public addresses and fails when none is left."""

    def __init__(self, allow_private_networks: bool = False) -> None:
        self._inner = DefaultResolver()
        self._allow_private = allow_private_networks

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        if self._allow_private:
            return results
        public = [r for r in results if is_public_address(r["host"])]
        if not public:
            addresses = sorted({r["host"] for r in results})
            raise BlockedURL(f"blocked_address: {host} resolves to non-public {addresses}")
        return public

    async def close(self) -> None:
        await self._inner.close()


def blocked_reason(exc: BaseException) -> str | None:
    """The guard's message when `exc` is (or wraps) a BlockedURL, else None."""
    seen: set[int] = set()
    current: Any = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, BlockedURL):
            return str(current)
        current = getattr(current, "os_error", None) or current.__cause__ or current.__context__
    return None
