"""Dataset fingerprints: a short string that changes when a dataset's content changes, passed to
the load step as `dataset_fingerprint` so that its cache key (Vertex AI and Kubeflow key a task
on its inputs: the `dataset` string alone would not change when the files or the hub revision
do) follows the content.

Why a parameter and not `load` uncached: every download/embed task's cache key includes the
`urls` artifact that `load` produces; an uncached `load` makes a new artifact on every run and
so a resubmitted run would redo every finished shard. With the fingerprint, an unchanged dataset
hits the cache all the way down, and a changed one reloads and redoes everything.
"""

from __future__ import annotations

import hashlib
import json
import logging
import posixpath
import uuid
from typing import Any

log = logging.getLogger(__name__)

# fsspec `info()` keys that identify an object's version, by backend, most specific first:
# gcsfs (generation, md5Hash, crc32c, updated), s3fs (VersionId, ETag, LastModified),
# local (mtime, ino), http (ETag).
_VERSION_KEYS = ("generation", "VersionId", "md5Hash", "crc32c", "ETag", "etag", "mtime",
                 "updated", "LastModified", "last_modified")


def dataset_fingerprint(dataset: str, revision: str | None = None) -> str:
    """``hf:<commit sha>`` for a Hugging Face dataset id (its revision now, or `revision`), or
    ``files:<sha256 prefix>`` of the sorted listing (relative path, size in bytes, version:
    GCS generation, S3 version/ETag or local mtime) of a file or folder. Raises what the hub
    or the filesystem raises (FileNotFoundError for a missing path)."""
    from clip_index import io
    from clip_index.load.step import is_hub_id

    if is_hub_id(dataset):
        from huggingface_hub import HfApi

        info = HfApi().dataset_info(dataset, revision=revision)
        return f"hf:{info.sha}"
    fs, path = io.filesystem(dataset)
    if not fs.exists(path):
        raise FileNotFoundError(f"dataset {dataset!r}: no such file or folder")
    if fs.isdir(path):
        listing: dict[str, Any] = fs.find(path, detail=True)
    else:
        listing = {path: fs.info(path)}
    rows = []
    for name, info in sorted(listing.items()):
        rel = posixpath.relpath(name, path) if name != path else posixpath.basename(name)
        if posixpath.basename(rel).startswith((".", "_")):
            continue  # the load step skips these files too
        version = next((str(info[k]) for k in _VERSION_KEYS if info.get(k) is not None), "")
        rows.append([rel, int(info.get("size") or 0), version])
    digest = hashlib.sha256(json.dumps(rows, separators=(",", ":")).encode()).hexdigest()
    return f"files:{digest[:24]}"


def fingerprint_or_unique(dataset: str) -> str:
    """`dataset_fingerprint(dataset)`, or, when the dataset cannot be listed from here (no
    credentials, offline), a value used once (``unique:<uuid>``): the load step then reruns
    instead of reusing shards of what may be another version of the data."""
    try:
        return dataset_fingerprint(dataset)
    except Exception as e:  # noqa: BLE001 - any failure means "unknown content": do not cache
        log.warning("dataset %r: cannot fingerprint its content (%s: %s); the load step will "
                    "not be reused from the cache", dataset, type(e).__name__, e)
        return f"unique:{uuid.uuid4().hex}"


def with_fingerprint(params: dict[str, Any]) -> dict[str, Any]:
    """`params` with `dataset_fingerprint` set from `dataset`, unless it is given already."""
    if params.get("dataset_fingerprint") or not params.get("dataset"):
        return params
    return {**params, "dataset_fingerprint": fingerprint_or_unique(str(params["dataset"]))}
