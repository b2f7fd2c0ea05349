"""Route helpers for the download tests: the failure kinds of the open web as aiohttp handlers,
and images in the awkward formats real datasets hold (made with PIL, no files on disk)."""

from __future__ import annotations

import asyncio
import io
import socket
import struct
import zlib
from collections.abc import Callable

from aiohttp import web
from PIL import Image

from tests.support.http_server import Handler

# ---------------------------------------------------------------- images


def image_bytes(width: int = 64, height: int = 48, fmt: str = "JPEG", mode: str = "RGB",
                colour: object = (200, 30, 30), **save: object) -> bytes:
    img = Image.new(mode, (width, height), colour)  # type: ignore[arg-type]
    buf = io.BytesIO()
    img.save(buf, fmt, **save)
    return buf.getvalue()


def noisy_jpeg(width: int, height: int, quality: int = 90, seed: int = 0) -> bytes:
    """A JPEG with real content (so its encoded size and decode cost look like a photo's)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    small = rng.integers(0, 255, (max(1, height // 16), max(1, width // 16), 3), dtype=np.uint8)
    img = Image.fromarray(small).resize((width, height), Image.Resampling.BILINEAR)
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def cmyk_jpeg() -> bytes:
    return image_bytes(80, 60, "JPEG", "CMYK", (0, 255, 255, 0))


def palette_png(transparent: bool = False) -> bytes:
    img = Image.new("P", (40, 30), 1)
    img.putpalette([255, 255, 255, 0, 0, 255] + [0] * (256 * 3 - 6))
    buf = io.BytesIO()
    img.save(buf, "PNG", **({"transparency": 1} if transparent else {}))
    return buf.getvalue()


def png_16bit() -> bytes:
    """A 16-bit greyscale PNG at mid grey (32768): a naive 8-bit clip turns it white."""
    return image_bytes(32, 32, "PNG", "I;16", 32768)


def animated_gif() -> bytes:
    """Two frames: red first, then blue."""
    frames = [Image.new("RGB", (30, 30), c) for c in ((255, 0, 0), (0, 0, 255))]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    return buf.getvalue()


def exif_rotated_jpeg(width: int = 80, height: int = 40, orientation: int = 6) -> bytes:
    """A landscape JPEG whose EXIF says 'rotate 90°': displayed, it is portrait."""
    img = Image.new("RGB", (width, height), (10, 200, 10))
    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    img.save(buf, "JPEG", exif=exif.tobytes())
    return buf.getvalue()


def png_bomb(width: int = 60_000, height: int = 60_000) -> bytes:
    """A few-hundred-byte PNG whose header claims width × height pixels."""
    raw = b"\x00\x00"  # one scanline: filter byte + one pixel; the rest is missing

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit greyscale
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw))
            + chunk(b"IEND", b""))


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
