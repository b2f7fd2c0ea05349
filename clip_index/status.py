"""Row statuses and the per-row error: what happened to one row, shared by every step.

Kept free of pyarrow (unlike schema.py, which re-exports these) so that processes that only
decode images, the download step's workers, import little.
"""

from __future__ import annotations

from enum import Enum


class Status(str, Enum):
    """What happened to one row. Every row that enters a step leaves it with one of these."""

    SUCCESS = "success"
    FAILED_TO_DOWNLOAD = "failed_to_download"
    FAILED_TO_DECODE = "failed_to_decode"
    FILTERED = "filtered"
    OPTED_OUT = "opted_out"
    BLOCKED = "blocked"
    FAILED_TO_EMBED = "failed_to_embed"


STATUSES = [s.value for s in Status]


class RowError(Exception):
    """A per-row failure: recorded as the row's `status` and `error`, never raised out of a step.

    The message starts with a short error kind (``http_404: Not Found``) that stats count by.
    """

    def __init__(self, status: Status, message: str) -> None:
        super().__init__(message)
        self.status = status

    def __reduce__(self) -> tuple[type[RowError], tuple[Status, str]]:
        # picklable across process pools (the default would call RowError(message))
        return type(self), (self.status, str(self))
