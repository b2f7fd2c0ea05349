"""HTTP fetcher for the download step (and for query-time image URLs): one URL → its body, on a
shared aiohttp session.

A total deadline per attempt (connect + headers + body, so a server that stalls or trickles
cannot hold a row), bounded retries with exponential backoff and Retry-After on 408/425/429/5xx
and connection errors, redirects followed by hand so that every hop passes the address guard,
X-Robots-Tag opt-outs decided on the headers (before the body), a size cap checked on
Content-Length and again while the body streams in, and a per-host limit whose waiting time does
not count against the deadline.
"""

from __future__ import annotations

import asyncio
import email.utils
import random
import time
from collections.abc import Awaitable, Callable, Iterable
from urllib.parse import urlsplit

import aiohttp
from yarl import URL

from clip_index.config import DownloadConfig
from clip_index.guard import (
    BlockedURL,
    GuardedResolver,
    blocked_reason,
    check_scheme_and_literal,
)
from clip_index.schema import RowError, Status

RETRYABLE_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})
REDIRECT_STATUS = frozenset({301, 302, 303, 307, 308})
OPT_OUT_DIRECTIVES = frozenset({"noai", "noimageai"})
MAX_URL_CHARS = 8192  # longer URLs are refused before any request (most servers refuse them too)
_MAX_BACKOFF_S = 30.0
_DRIP_GRACE_S = 5.0  # a live slow body's deadline is kept at least this far ahead


class _Retryable(RowError):
    def __init__(self, message: str, retry_after_s: float | None = None) -> None:
        super().__init__(Status.FAILED_TO_DOWNLOAD, message)
        self.retry_after_s = retry_after_s


class _HostSlots:
    """Requests allowed at once to one host, and how many rows are using or awaiting them."""

    def __init__(self, limit: int) -> None:
        self.semaphore = asyncio.Semaphore(limit)
        self.users = 0


class Fetcher:
    """Fetches one URL's body with a deadline per attempt, bounded retries with backoff,
    redirects followed by hand (so every hop passes the address guard) and a size cap.

    Slots are held only while a request is on the wire, and taken in this order: the host's
    (politeness: at most `per_host_concurrency` requests to one host), then `ready` (the
    caller's back-pressure, e.g. the decode pool having room), then the global window
    (`concurrency` requests in flight). A row queued behind a busy host therefore holds no
    global slot, so a popular host never idles the other hosts; a row waiting for a retry
    (its backoff) holds none at all, and queues again behind the fresh rows of its host: a
    retry never takes a fresh row's slot.
    """

    def __init__(self, session: aiohttp.ClientSession, config: DownloadConfig,
                 ready: Callable[[], Awaitable[None]] | None = None) -> None:
        self.session = session
        self.config = config
        self.ready = ready
        self._window = asyncio.Semaphore(config.concurrency)
        self._hosts: dict[str, _HostSlots] = {}
        self.retried = 0  # attempts after the first (for the stats/logs)

    async def fetch(self, url: str | None) -> bytes:
        url = normalise_url(url)
        host = (urlsplit(url).hostname or "").lower()
        last: RowError = RowError(Status.FAILED_TO_DOWNLOAD, "no_attempt")
        for attempt in range(self.config.download_retries + 1):
            if attempt:
                self.retried += 1
                await asyncio.sleep(_backoff_s(attempt, last))  # holding no slot
            try:
                return await self._slotted_attempt(url, host, self._deadline_s(attempt))
            except _Retryable as exc:
                last = exc
        raise last

    def _deadline_s(self, attempt: int) -> float:
        """The first attempt's deadline is the short one (most dead requests are dead on the
        first try; a live slow body is extended, see `_read_body`); retries get `timeout_s`."""
        if attempt == 0 and self.config.first_timeout_s:
            return min(self.config.first_timeout_s, self.config.timeout_s)
        return self.config.timeout_s

    async def _slotted_attempt(self, url: str, host: str, deadline_s: float) -> bytes:
        # wait for a per-host slot *before* the deadline starts: rows queued behind a busy
        # host must not time out while they wait their turn (the connector's own per-host
        # limit would count that wait against the deadline)
        slots = self._hosts.get(host)
        if slots is None:
            slots = self._hosts[host] = _HostSlots(self.config.per_host_concurrency)
        slots.users += 1
        try:
            async with slots.semaphore:
                if self.ready is not None:
                    await self.ready()
                async with self._window:
                    return await self._deadlined(url, deadline_s)
        finally:
            slots.users -= 1
            if not slots.users:
                del self._hosts[host]

    async def _deadlined(self, url: str, deadline_s: float) -> bytes:
        """One attempt (with its redirects) under a deadline; retryable failures raise
        `_Retryable`, final ones `RowError`."""
        try:
            async with asyncio.timeout(deadline_s) as timeout:
                return await self._attempt(url, timeout)
        except TimeoutError:
            raise _Retryable(f"timeout: no complete response in {deadline_s:g}s") from None
        except (aiohttp.ClientError, OSError, ValueError) as exc:
            reason = blocked_reason(exc)
            if reason:
                raise RowError(Status.BLOCKED, reason) from exc
            if isinstance(exc, (aiohttp.InvalidURL, ValueError)):
                raise RowError(Status.FAILED_TO_DOWNLOAD, f"invalid_url: {exc}") from exc
            raise _Retryable(f"connection_error: {type(exc).__name__}: {exc}"[:300]) from exc

    async def _attempt(self, url: str, timeout: asyncio.Timeout) -> bytes:
        visited: set[str] = set()
        current = url
        for _ in range(self.config.max_redirects + 1):
            try:
                check_scheme_and_literal(current, self.config.allow_private_networks)
            except BlockedURL as exc:
                raise RowError(Status.BLOCKED, str(exc)) from exc
            visited.add(current)
            # yarl quotes what needs quoting and keeps valid %XX escapes (no double encoding)
            async with self.session.get(URL(current), allow_redirects=False) as resp:
                if resp.status in REDIRECT_STATUS:
                    current = self._next_hop(resp, visited)
                    continue
                self._check_response(resp)
                return await self._read_body(resp, timeout)
        raise RowError(Status.FAILED_TO_DOWNLOAD,
                       f"too_many_redirects: more than max_redirects={self.config.max_redirects}")

    @staticmethod
    def _next_hop(resp: aiohttp.ClientResponse, visited: set[str]) -> str:
        location = resp.headers.get("Location")
        if not location:
            raise RowError(Status.FAILED_TO_DOWNLOAD, f"http_{resp.status}: redirect, no Location")
        target = str(resp.url.join(URL(location)))
        if target in visited:
            raise RowError(Status.FAILED_TO_DOWNLOAD, f"redirect_loop: back to {target}"[:300])
        return target

    def _check_response(self, resp: aiohttp.ClientResponse) -> None:
        if resp.status in RETRYABLE_STATUS:
            raise _Retryable(f"http_{resp.status}: {resp.reason}",
                             _retry_after_s(resp.headers.get("Retry-After")))
        if not 200 <= resp.status < 300:
            raise RowError(Status.FAILED_TO_DOWNLOAD, f"http_{resp.status}: {resp.reason}")
        if self.config.respect_opt_out:
            directives = opt_out_directives(resp.headers.getall("X-Robots-Tag", []))
            if directives:
                raise RowError(Status.OPTED_OUT,
                               f"opted_out: X-Robots-Tag {', '.join(sorted(directives))}")
        length = resp.content_length
        if length is not None and length > self.config.max_image_bytes:
            raise RowError(Status.FAILED_TO_DOWNLOAD,
                           f"too_large: Content-Length {length} passes "
                           f"max_image_bytes={self.config.max_image_bytes}")

    async def _read_body(self, resp: aiohttp.ClientResponse, timeout: asyncio.Timeout) -> bytes:
        """The body, within the size cap. A body still arriving at `drip_bytes_per_s` or
        faster (on average since its first byte) when the deadline nears is alive, not dead:
        each chunk that keeps that rate pushes the deadline out by `_DRIP_GRACE_S`, up to
        `max_drip_s` after the body started. A body that stops (no byte for the rest of the
        deadline) or crawls below the rate fails at the deadline, and is retried."""
        chunks: list[bytes] = []
        size, limit = 0, self.config.max_image_bytes
        loop = asyncio.get_running_loop()
        started = loop.time()
        cap = started + self.config.max_drip_s
        while chunk := await resp.content.readany():
            size += len(chunk)
            if size > limit:
                raise RowError(Status.FAILED_TO_DOWNLOAD,
                               f"too_large: body passes max_image_bytes={limit}")
            chunks.append(chunk)
            now = loop.time()
            when = timeout.when()
            if (when is not None and when - now < _DRIP_GRACE_S and now < cap
                    and size >= self.config.drip_bytes_per_s * max(now - started, 1.0)):
                timeout.reschedule(min(cap, now + _DRIP_GRACE_S))
        if not size:
            raise RowError(Status.FAILED_TO_DOWNLOAD, "empty_body: the server sent no bytes")
        # one copy at the end (none for a body that arrived in one chunk), where growing a
        # bytearray copied each chunk and then the whole body again
        return b"".join(chunks)


def opt_out_directives(values: Iterable[str], agent: str = "clip-index") -> set[str]:
    """The opt-out directives in X-Robots-Tag header values that apply to us: those with no
    user-agent prefix, or prefixed by our agent name (``clip-index: noai``)."""
    found: set[str] = set()
    for value in values:
        scoped: str | None = None
        for part in value.split(","):
            part = part.strip().lower()
            if ":" in part:
                scoped, part = (p.strip() for p in part.split(":", 1))
            if part in OPT_OUT_DIRECTIVES and scoped in (None, agent):
                found.add(part)
    return found


def normalise_url(url: str | None) -> str:
    """The URL stripped of surrounding blanks; RowError(invalid_url) for an empty, over-long or
    unparsable URL, or an http(s) URL without a host or with a bad port."""
    url = (url or "").strip()
    if not url:
        raise RowError(Status.FAILED_TO_DOWNLOAD, "invalid_url: empty URL")
    if len(url) > MAX_URL_CHARS:
        raise RowError(Status.FAILED_TO_DOWNLOAD,
                       f"invalid_url: {len(url)} characters, more than {MAX_URL_CHARS}")
    try:
        parts = urlsplit(url)
        if parts.scheme.lower() in ("http", "https"):
            if not parts.hostname:
                raise ValueError("no host")
            _ = parts.port  # raises ValueError for a port out of range
    except ValueError as exc:
        raise RowError(Status.FAILED_TO_DOWNLOAD,
                       f"invalid_url: {exc} in {url[:200]!r}") from exc
    return url


def _retry_after_s(value: str | None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _backoff_s(attempt: int, last: RowError) -> float:
    """Retry-After when the server gave one, else exponential backoff with jitter (capped)."""
    hinted = getattr(last, "retry_after_s", None)
    if hinted is not None:
        return min(hinted, _MAX_BACKOFF_S)
    return min(_MAX_BACKOFF_S, 0.5 * 2 ** (attempt - 1)) * (0.5 + random.random())


async def fetch_url_async(url: str, config: DownloadConfig) -> bytes:
    """One URL's body at query time (search by image URL, the server's `image_url`), through the
    download step's own fetcher: the same guard, redirect checks, retries and size cap. Raises
    `schema.RowError` (blocked / failed_to_download, with the reason) as a row would record."""
    config.validate()
    connector = aiohttp.TCPConnector(limit=1, resolver=GuardedResolver(
        config.allow_private_networks))
    async with aiohttp.ClientSession(connector=connector, trust_env=False,
                                     headers={"User-Agent": config.user_agent}) as session:
        return await Fetcher(session, config).fetch(url)


def fetch_url(url: str, config: DownloadConfig) -> bytes:
    """Blocking form of `fetch_url_async` (runs its own event loop)."""
    return asyncio.run(fetch_url_async(url, config))
