"""Querying a published index: ClipIndex, the HTTP server and its page, batch retrieval."""
