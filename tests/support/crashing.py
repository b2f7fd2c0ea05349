"""A batch function for decode-pool tests: it kills its worker process on a body that starts
with b"CRASH" (as a decoder segfault would) and otherwise echoes a (status, error) per body."""

from __future__ import annotations

import os


def crash_on_marker(bodies: list[bytes]) -> list[tuple[str, str]]:
    if any(body.startswith(b"CRASH") for body in bodies):
        os._exit(1)
    return [("success", body.decode()) for body in bodies]
