"""`clip-index doctor`, and the preflight `clip-index submit` runs before it creates a run (unless
`--no-preflight`): what would stop a first run on Vertex AI, found before anything is billed.

Checks, in order, each saying what to do when it fails:
template   the compile flags given with --template match what the template was compiled with
credentials  application-default credentials exist and refresh
project    the project exists and is active
apis       the APIs a run needs are enabled
bucket     the pipeline root's bucket exists, is in (or spans) the region, and the run's
           service account may write to it
images     every image the template names is in Artifact Registry
quota      the region's GPU quota for the compiled GPU type covers GPUs per task x tasks at
           once; the CPU quota covers the widest loop
roles      the run's service account has the project roles README "IAM roles" lists

Everything is read-only (gets and lists; nothing is created), with Google's client libraries.
A check the caller may not make, or that the answers cannot decide, is "unknown" with the reason:
it does not stop a submit; a "fail" does.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable
from typing import Any

from clip_index.launch.preflight_types import FAIL, PASS, UNKNOWN, Check, Context

log = logging.getLogger(__name__)
ADC_FIX = "gcloud auth application-default login"
_MARK = {PASS: "ok  ", FAIL: "FAIL", UNKNOWN: "??  "}


class PreflightFailed(RuntimeError):
    """A preflight check failed: the run was not created."""


def check_template(ctx: Context) -> Check:
    """The compile flags given beside --template agree with the template."""
    from clip_index.launch.preflight_template import compiled_settings, settings_drift

    drift = settings_drift(ctx.spec, ctx.given_settings)
    if drift:
        return Check("template", FAIL, "; ".join(drift),
                     "submit without --template to compile with these flags, recompile the "
                     "template with them (`clip-index compile ...`), or drop the flags to run "
                     "the template as compiled")
    have = compiled_settings(ctx.spec)
    gpu = (f"{have.get('gpu_count', 0)}x {have.get('gpu_type')}" if have.get("gpu_count")
           else "no GPU")
    return Check("template", PASS, f"images {', '.join(have['images'])}; embed: {gpu}")


def check_credentials(ctx: Context) -> Check:
    """Application-default credentials exist and can be refreshed (unless given)."""
    if ctx.credentials is not None:
        return Check("credentials", PASS, f"given ({type(ctx.credentials).__name__})")
    import google.auth
    from google.auth import exceptions
    from google.auth.transport.requests import Request

    try:
        credentials, _ = google.auth.default(
            scopes=["https://www.googleapis.com/auth/cloud-platform"])
        credentials.refresh(Request())
    except exceptions.DefaultCredentialsError as e:
        return Check("credentials", FAIL, f"no application-default credentials ({e})", ADC_FIX)
    except exceptions.RefreshError as e:
        return Check("credentials", FAIL, f"the credentials are expired or revoked ({e})",
                     ADC_FIX)
    ctx.credentials = credentials
    who = (getattr(credentials, "service_account_email", None)
           or getattr(credentials, "account", None) or "your user account")
    return Check("credentials", PASS, f"application-default credentials ({who})")


def run_preflight(ctx: Context) -> list[Check]:
    """Every check, in order; after a failed credentials or project check the cloud checks
    are "unknown" (they could not run)."""
    from google.api_core import exceptions

    from clip_index.launch import preflight_checks as cloud

    results = [check_template(ctx)]
    steps: list[tuple[str, Callable[[Context], Check]]] = [
        ("credentials", check_credentials), ("project", cloud.check_project),
        ("apis", cloud.check_apis), ("bucket", cloud.check_bucket),
        ("images", cloud.check_images), ("quota", cloud.check_quota),
        ("roles", cloud.check_roles)]
    blocked = ""
    for name, check in steps:
        if blocked:
            results.append(Check(name, UNKNOWN, f"not checked: the {blocked} check did not pass"))
            continue
        try:
            result = check(ctx)
        except exceptions.GoogleAPICallError as e:
            result = Check(name, UNKNOWN, f"could not check ({type(e).__name__}: "
                           f"{getattr(e, 'message', e)})")
        except Exception as e:  # noqa: BLE001 - a network error must not hide the other checks
            log.debug("preflight %s", name, exc_info=True)
            result = Check(name, UNKNOWN, f"could not check ({type(e).__name__}: {e})")
        results.append(result)
        if name in ("credentials", "project") and result.status != PASS:
            blocked = name
    return results


def render(results: list[Check]) -> str:
    """One line per check, and a `fix:` line under each failure."""
    lines = []
    for r in results:
        lines.append(f"{_MARK[r.status]} {r.name:<12} {r.detail}")
        if r.status == FAIL and r.fix:
            lines.append(f"     {'':<12} fix: {r.fix}")
    return "\n".join(lines)


def raise_on_failure(results: list[Check]) -> None:
    failed = [r.name for r in results if r.status == FAIL]
    if failed:
        raise PreflightFailed(f"preflight: {len(failed)} check(s) failed ({', '.join(failed)}): "
                              "nothing was created; fix them (see `fix:` above), or pass "
                              "--no-preflight to submit anyway")


def preflight(args: argparse.Namespace, spec: dict[str, Any], credentials: Any = None,
              echo: Callable[[str], None] = print,
              params: dict[str, Any] | None = None) -> list[Check]:
    """Run the checks for a submit's `args`, its template `spec` and its typed `params` (a
    `limit` bounds the tasks the quota must cover); echo the report; raise PreflightFailed
    when one failed."""
    from clip_index.launch.preflight_template import given_settings, shard_count

    ctx = Context(project=args.project, region=args.region, pipeline_root=args.pipeline_root,
                  spec=spec, service_account=args.service_account, credentials=credentials,
                  given_settings=given_settings(args) if args.template else {},
                  shards=shard_count(spec, params or {}))
    results = run_preflight(ctx)
    echo("preflight:\n" + render(results))
    raise_on_failure(results)
    return results
