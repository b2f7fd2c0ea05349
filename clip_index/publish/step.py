"""Publish step and `clip-index publish`: upload an output folder to the Hugging Face Hub as a
dataset, with a generated dataset card (README.md, see `clip_index.publish.card`).

`huggingface_hub` does the upload: with hf_xet installed (the default) `upload_folder` streams
the folder in several commits, resumes an interrupted upload when run again, and skips files the
Hub already holds, so publishing an unchanged folder again uploads and commits nothing.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from typing import Any

from clip_index import io, schema
from clip_index.config import PublishConfig
from clip_index.hub import REPO_TYPE
from clip_index.index.layout import CLIP_INDEX, detect_layout
from clip_index.publish.card import dataset_card

log = logging.getLogger(__name__)

CARD = "README.md"
# never published: kfp.local's task folders (`run` puts them in OUTPUT_DIR/.pipeline) and any
# hidden temporary file of an interrupted write
IGNORE = [".pipeline/*", ".*", "*/.*"]


@dataclass(frozen=True)
class PublishResult:
    """Where the folder went: the dataset's URL, the branch and its head commit."""

    repo_id: str
    url: str
    revision: str
    commit: str
    files: int

    def as_dict(self) -> dict[str, Any]:
        return {"repo_id": self.repo_id, "url": self.url, "revision": self.revision,
                "commit": self.commit, "files": self.files}


def run_publish(output_dir: str, config: PublishConfig, token: str | None = None,
                endpoint: str | None = None) -> PublishResult:
    """Write the card into `output_dir` and upload the folder to `config.hub_repo_id`.

    token: None = huggingface_hub's default (HF_TOKEN or `hf auth login`'s saved token).
    endpoint: None = huggingface_hub's default (HF_ENDPOINT or https://huggingface.co).
    """
    from huggingface_hub import HfApi, get_token
    from huggingface_hub.errors import HfHubHTTPError

    config.validate()
    layout = detect_layout(output_dir)
    if layout.kind != CLIP_INDEX:
        raise ValueError(f"{output_dir!r} is in the {layout.kind} layout: publish expects a "
                         "clip-index output folder (manifest.json, faiss/knn.index, ...)")
    token = token or get_token()
    if not token:
        raise PermissionError("publishing to the Hugging Face Hub needs a token with write "
                              "access: set HF_TOKEN or run `hf auth login`")
    api = HfApi(endpoint=endpoint, token=token)
    revision = config.hub_revision or "main"
    with _local_copy(output_dir) as folder:
        card = dataset_card(output_dir, config.hub_repo_id, config.source)
        io.write_bytes_atomic(os.path.join(folder, CARD), card.encode())
        files = sum(1 for root, _, names in os.walk(folder) for name in names
                    if not any(part.startswith(".") for part in
                               os.path.relpath(os.path.join(root, name), folder).split(os.sep)))
        manifest = io.read_json(io.join(output_dir, schema.MANIFEST))
        message = config.commit_message or (
            f"clip-index: {manifest.get('totals', {}).get('successes', '?')} images embedded "
            f"with {manifest['model']} ({manifest['pretrained']})")
        try:
            repo = api.create_repo(config.hub_repo_id, repo_type=REPO_TYPE,
                                   private=config.hub_private, exist_ok=True)
            if revision != "main":
                api.create_branch(config.hub_repo_id, branch=revision, repo_type=REPO_TYPE,
                                  exist_ok=True)
            info = api.upload_folder(repo_id=config.hub_repo_id, repo_type=REPO_TYPE,
                                     folder_path=folder, revision=revision,
                                     commit_message=message, ignore_patterns=list(IGNORE))
        except HfHubHTTPError as exc:
            status = exc.response.status_code if exc.response is not None else None
            if status in (401, 403):
                raise PermissionError(
                    f"the Hub refused to let this token write to dataset {config.hub_repo_id!r} "
                    f"(HTTP {status}): expected a token with write access to its organisation"
                ) from exc
            raise RuntimeError(f"publishing to {config.hub_repo_id!r} failed: {exc}") from exc
    result = PublishResult(config.hub_repo_id, str(repo), revision, str(info.oid), files)
    log.info("published %s (%d files) to %s at %s@%s", output_dir, files, result.url, revision,
             result.commit[:12])
    return result


class _local_copy:
    """The folder itself when local; else a temporary local copy (upload reads local files)."""

    def __init__(self, output_dir: str) -> None:
        self.output_dir = output_dir
        self.tmp: str | None = None

    def __enter__(self) -> str:
        from fsspec.implementations.local import LocalFileSystem

        fs, path = io.filesystem(self.output_dir)
        if isinstance(fs, LocalFileSystem):
            return str(path)
        self.tmp = tempfile.mkdtemp(prefix="clip-index-publish-")
        log.info("copying %s to %s for the upload", self.output_dir, self.tmp)
        fs.get(path.rstrip("/") + "/", self.tmp, recursive=True)
        return self.tmp

    def __exit__(self, *exc: object) -> None:
        if self.tmp:
            shutil.rmtree(self.tmp, ignore_errors=True)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """`clip-index publish --output-dir DIR --hub-repo-id ORG/NAME [--hub-private]
    [--hub-revision BRANCH]`."""
    from clip_index.flags import add_config_flags

    parser.add_argument("--output-dir", required=True,
                        help="the clip-index output folder to publish")
    add_config_flags(parser, PublishConfig)
    parser.description = ("Upload the output folder to the Hugging Face Hub as a dataset with a "
                          "generated card. The token comes from HF_TOKEN or `hf auth login`; "
                          "HF_ENDPOINT picks another Hub.")


def command(args: argparse.Namespace) -> int:
    from clip_index.flags import config_from_args

    for name in ("httpx", "httpx2"):  # one INFO line per HTTP request otherwise
        logging.getLogger(name).setLevel(logging.WARNING)
    result = run_publish(args.output_dir, config_from_args(PublishConfig, args))
    print(f"published {args.output_dir} → {result.url} ({result.revision} @ "
          f"{result.commit[:12]}, {result.files} files)")
    print(f"query it: clip-index query hf://{result.repo_id} --text 'a photo of a dog'")
    return 0
