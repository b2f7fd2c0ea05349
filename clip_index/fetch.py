"""Fetch one image URL at query time (search by image URL, the server's `image_url`) through the
download step's own client: the address guard, redirects checked hop by hop, retries and the
size cap of `DownloadConfig` — not a second HTTP client with weaker rules."""

from __future__ import annotations

import asyncio

import aiohttp

from clip_index.config import DownloadConfig
from clip_index.download import Fetcher
from clip_index.guard import GuardedResolver


async def fetch_url_async(url: str, config: DownloadConfig) -> bytes:
    """The body of `url`; raises `schema.RowError` (status blocked / failed_to_download, with the
    reason) exactly as the download step records it for a row."""
    config.validate()
    connector = aiohttp.TCPConnector(limit=1, resolver=GuardedResolver(
        config.allow_private_networks))
    async with aiohttp.ClientSession(connector=connector, trust_env=False,
                                     headers={"User-Agent": config.user_agent}) as session:
        return await Fetcher(session, config).fetch(url)


def fetch_url(url: str, config: DownloadConfig) -> bytes:
    """Blocking form of `fetch_url_async` (runs its own event loop)."""
    return asyncio.run(fetch_url_async(url, config))
