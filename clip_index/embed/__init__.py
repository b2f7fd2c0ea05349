"""Embed step: open_clip models, pixel preprocessing split between workers and device, and the
bundled tiny-clip model."""
