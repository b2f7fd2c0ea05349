"""The preflight's result and context types (shared by preflight.py and its checks)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

PASS, FAIL, UNKNOWN = "pass", "fail", "unknown"


@dataclass(frozen=True)
class Check:
    """One check's verdict: `status` pass / fail / unknown (could not be decided from here,
    with the reason in `detail`); `fix` says what to do (a command) when it failed."""

    name: str
    status: str
    detail: str
    fix: str = ""


@dataclass
class Context:
    """What is being submitted, and what the checks learnt on the way (the project's number,
    its IAM policy), so that each is read once."""

    project: str
    region: str
    pipeline_root: str
    spec: dict[str, Any]
    service_account: str | None = None
    credentials: Any = None
    given_settings: dict[str, Any] = field(default_factory=dict)
    # shards the run loads when --param limit bounds it: no loop runs more tasks than that
    shards: int | None = None
    project_number: str | None = None
    project_policy: dict[str, set[str]] | None = None
    project_policy_error: str | None = None

    @property
    def run_account(self) -> str:
        """The service account the run's tasks use: --service-account, else the project's
        Compute Engine default service account (what Vertex AI Pipelines uses then)."""
        if self.service_account:
            return self.service_account
        return f"{self.project_number or 'PROJECT_NUMBER'}-compute@developer.gserviceaccount.com"
