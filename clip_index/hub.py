"""Hugging Face Hub access for published indexes: ``hf://ORG/NAME[@REVISION]`` locations and a
snapshot download into the HF cache (once; later opens read the cache, offline too).

`huggingface_hub` does the HTTP (and honours ``HF_ENDPOINT``, ``HF_TOKEN``, ``HF_HUB_OFFLINE``,
``HF_HOME`` itself); this module turns its errors into messages that say what was expected.
"""

from __future__ import annotations

import logging
import os
import re
from typing import Any

from clip_index import schema

log = logging.getLogger(__name__)

HUB_SCHEME = "hf://"
REPO_TYPE = "dataset"
# What a query needs: not data/ (the embeddings, 19 GB for the reference) nor failed/.
PARQUET_MAPPING = "id_mapping/*"
QUERY_FILES = ["manifest.json", "index_infos.json", "README.md", "faiss", "faiss/*",
               PARQUET_MAPPING, "thumbnails/*"]
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9][\w.-]{0,95}$")


def is_hub_uri(location: str) -> bool:
    return str(location).startswith(HUB_SCHEME)


def check_repo_id(repo_id: str, name: str = "repo_id") -> None:
    """ValueError naming the value (as `name`) unless it looks like ``ORG/NAME``."""
    if not _REPO_ID.match(repo_id or "") or ".." in repo_id or repo_id.endswith((".git", ".")):
        raise ValueError(f"{name}={repo_id!r}: expected a Hugging Face dataset id ORG/NAME "
                         "(letters, digits, '-', '_', '.'), e.g. my-org/my-clip-index")


def parse_hub_uri(uri: str) -> tuple[str, str | None]:
    """``hf://ORG/NAME`` or ``hf://datasets/ORG/NAME``, optionally ``@REVISION`` → (repo_id,
    revision or None)."""
    if not is_hub_uri(uri):
        raise ValueError(f"{uri!r}: expected hf://ORG/NAME[@REVISION]")
    rest = uri[len(HUB_SCHEME):].strip("/")
    if rest.startswith("datasets/"):
        rest = rest[len("datasets/"):]
    repo_id, _, revision = rest.partition("@")
    try:
        check_repo_id(repo_id)
    except ValueError:
        raise ValueError(f"{uri!r}: expected hf://ORG/NAME[@REVISION], e.g. "
                         "hf://fondant-ai/datacomp-small-clip") from None
    return repo_id, revision or None


def download_index(repo_id: str, revision: str | None = None, token: str | bool | None = None,
                   endpoint: str | None = None, cache_dir: str | None = None,
                   full: bool = False) -> str:
    """Download (or find in the HF cache) a published index; return its local folder.

    Only the files a query needs are fetched unless `full` (then data/ and failed/ too).
    token: None = huggingface_hub's default (HF_TOKEN or the saved login).
    endpoint: None = huggingface_hub's default (HF_ENDPOINT or https://huggingface.co).
    """
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    check_repo_id(repo_id)
    where = endpoint or "the Hub"

    def snapshot(patterns: list[str] | None) -> str:
        return str(snapshot_download(repo_id, repo_type=REPO_TYPE, revision=revision,
                                     token=token, endpoint=endpoint, cache_dir=cache_dir,
                                     allow_patterns=patterns))

    try:
        if full:
            path = snapshot(None)
        else:
            # the Arrow id mapping replaces id_mapping/*.parquet for queries (135 MB at 1M
            # rows, ~1.7 GB at DataComp-small's size): fetch the parquet only for folders
            # without it (earlier builds, the reference's layout)
            path = snapshot([p for p in QUERY_FILES if p != PARQUET_MAPPING])
            if not os.path.exists(os.path.join(path, schema.FAISS_DIR, schema.MAPPING_FILE)):
                path = snapshot(QUERY_FILES)
    except RepositoryNotFoundError as exc:
        status = exc.response.status_code if exc.response is not None else None
        raise FileNotFoundError(
            f"dataset {repo_id!r} was not found on {where} (HTTP {status}): it does not exist, "
            "or it is private and no token with read access was given (set HF_TOKEN or run "
            "`hf auth login`). Expected a dataset published by `clip-index publish` or the "
            "reference's layout") from exc
    except RevisionNotFoundError as exc:
        raise FileNotFoundError(f"dataset {repo_id!r} has no revision {revision!r} on "
                                f"{where}: expected a branch, tag or commit of it") from exc
    except LocalEntryNotFoundError as exc:
        raise FileNotFoundError(
            f"dataset {repo_id!r} is not in the Hugging Face cache and the Hub cannot be "
            f"reached ({exc}); download it once with network access (HF_HUB_OFFLINE unset)"
        ) from exc
    except HfHubHTTPError as exc:
        raise RuntimeError(f"downloading dataset {repo_id!r} from {where} failed: {exc}") from exc
    log.info("hub dataset %s%s is in %s", repo_id, f"@{revision}" if revision else "", path)
    return str(path)


SECRET_MANAGER = "https://secretmanager.googleapis.com"


def secret_token(name: str, endpoint: str = SECRET_MANAGER, credentials: Any = None) -> str:
    """The Hub token stored in a Secret Manager version (``projects/P/secrets/S/versions/V``),
    read with the task's default Google credentials.

    Hand-written over Secret Manager's REST ``:access`` call with google-auth (already here
    through google-cloud-aiplatform) rather than adding google-cloud-secret-manager for it."""
    import base64

    import google.auth
    from google.auth.transport.requests import AuthorizedSession

    if not re.match(r"^projects/[^/]+/secrets/[^/]+/versions/[^/]+$", name):
        raise ValueError(f"token_secret={name!r}: expected "
                         "projects/PROJECT/secrets/SECRET/versions/VERSION (or 'latest')")
    if credentials is None:
        credentials, _ = google.auth.default(
            scopes=["https://www.googleapis.com/auth/cloud-platform"])
    response = AuthorizedSession(credentials).get(f"{endpoint}/v1/{name}:access", timeout=30)
    if response.status_code != 200:
        raise PermissionError(f"could not read secret {name!r} (HTTP {response.status_code}): "
                              "expected a secret version this service account may access "
                              "(roles/secretmanager.secretAccessor)")
    return base64.b64decode(response.json()["payload"]["data"]).decode().strip()
