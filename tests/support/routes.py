"""Route helpers for the download tests: the failure kinds of the open web as aiohttp handlers
(the images they serve come from tests/support/images.py)."""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import Callable

from aiohttp import web

from tests.support.http_server import Handler

# ---------------------------------------------------------------- handlers


def status(code: int, headers: dict[str, str] | None = None) -> Handler:
    async def handler(request: web.Request) -> web.Response:
        return web.Response(status=code, text=f"status {code}", headers=headers)
    return handler


def fail_then(codes: list[int], body: bytes, headers: dict[str, str] | None = None) -> Handler:
    """Answer the statuses in `codes` (with `headers`) on the first calls, then `body`."""
    calls = {"n": 0}

    async def handler(request: web.Request) -> web.Response:
        calls["n"] += 1
        if calls["n"] <= len(codes):
            return web.Response(status=codes[calls["n"] - 1], text="busy", headers=headers)
        return web.Response(body=body, content_type="image/jpeg")
    return handler


def redirect(target: str | Callable[[], str], code: int = 302) -> Handler:
    async def handler(request: web.Request) -> web.Response:
        location = target() if callable(target) else target
        return web.Response(status=code, headers={"Location": location})
    return handler


def reset_mid_body(body: bytes) -> Handler:
    """Promise the whole body, send half, then drop the connection."""
    async def handler(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Length": str(len(body)),
                                           "Content-Type": "image/jpeg"})
        await resp.prepare(request)
        await resp.write(body[: len(body) // 2])
        transport = request.transport
        if transport is not None:
            sock = transport.get_extra_info("socket")
            if sock is not None:  # SO_LINGER 0: close with a RST, not a FIN
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            transport.abort()
        return resp
    return handler


def headers_then_stall(stall_s: float = 120.0) -> Handler:
    """Send the headers, then nothing: only a total deadline ends this request."""
    async def handler(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "image/jpeg"})
        await resp.prepare(request)
        await asyncio.sleep(stall_s)
        return resp
    return handler


def trickle(interval_s: float = 0.2, chunk: bytes = b"\xff") -> Handler:
    """One byte every `interval_s` forever: every socket read succeeds, the request never ends."""
    async def handler(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "image/jpeg"})
        await resp.prepare(request)
        try:
            while True:
                await resp.write(chunk)
                await asyncio.sleep(interval_s)
        except (ConnectionError, RuntimeError):
            pass
        return resp
    return handler


def endless(chunk_bytes: int = 64 * 1024, headers: dict[str, str] | None = None) -> Handler:
    """An endless chunked body, as fast as the client reads."""
    async def handler(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "image/jpeg", **(headers or {})})
        await resp.prepare(request)
        block = b"\x00" * chunk_bytes
        try:
            while True:
                await resp.write(block)
        except (ConnectionError, RuntimeError):
            pass
        return resp
    return handler


def slow_image(body: bytes, delay_s: float) -> Handler:
    async def handler(request: web.Request) -> web.Response:
        await asyncio.sleep(delay_s)
        return web.Response(body=body, content_type="image/jpeg")
    return handler


class ConcurrencyProbe:
    """A handler that records the most requests it had in flight at once."""

    def __init__(self, body: bytes, delay_s: float = 0.05) -> None:
        self.body = body
        self.delay_s = delay_s
        self.now = 0
        self.peak = 0
        self.user_agents: set[str] = set()

    async def __call__(self, request: web.Request) -> web.Response:
        self.now += 1
        self.peak = max(self.peak, self.now)
        self.user_agents.add(request.headers.get("User-Agent", ""))
        try:
            await asyncio.sleep(self.delay_s)
        finally:
            self.now -= 1
        return web.Response(body=self.body, content_type="image/jpeg")


def free_port() -> int:
    """A 127.0.0.1 port with nothing listening (connections to it are refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
