"""Download step and its parts: fetcher, address guard, decode pool, resizer, WebP decoder,
checkpoint and allocator settings."""
