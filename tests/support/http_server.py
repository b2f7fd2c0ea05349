"""A real HTTP server on 127.0.0.1 for tests: static bodies plus custom aiohttp handlers, run on
its own event loop in a thread and stopped by the fixture."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable

from aiohttp import web

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class TestServer:
    """Routes are added before or while the server runs; `url(path)` gives the full URL."""

    __test__ = False  # not a pytest test class

    def __init__(self) -> None:
        self._routes: dict[str, Handler] = {}
        self.hits: dict[str, int] = {}
        self._loop = asyncio.new_event_loop()
        self._runner: web.AppRunner | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self.port = 0

    def add(self, path: str, handler: Handler) -> str:
        self._routes[path] = handler
        return self.url(path)

    def add_bytes(self, path: str, body: bytes, content_type: str = "image/jpeg",
                  headers: dict[str, str] | None = None, status: int = 200) -> str:
        async def handler(request: web.Request) -> web.Response:
            return web.Response(body=body, status=status, content_type=content_type,
                                headers=headers)

        return self.add(path, handler)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        path = request.rel_url.path
        self.hits[path] = self.hits.get(path, 0) + 1
        handler = self._routes.get(path)
        if handler is None:
            return web.Response(status=404, text="not found")
        return await handler(request)

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._dispatch)
        # handlers end when their client goes (stalling routes must not outlive the test)
        self._runner = web.AppRunner(app, access_log=None, handler_cancellation=True,
                                     shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    def start(self) -> TestServer:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    def stop(self) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
