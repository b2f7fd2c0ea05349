"""Download benchmark: clip-index's downloader vs img2dataset against a local nginx.

Run it from the repository root with ``python -m bench.download.run --help``.
Every request goes to 127.0.0.1 only.
"""
