"""The publish_to_hub component: the output folder → a Hugging Face Hub dataset.
(No `from __future__ import annotations`: KFP reads these annotations at runtime.)
"""

from kfp.dsl import Artifact, Input, Markdown, Output


def publish_to_hub(
    output_dir: str,
    report: Input[Markdown],
    hub_repo_id: str,
    published: Output[Artifact],
    hub_private: bool = False,
    hub_revision: str = "",
    source: str = "",
    hub_token_secret: str = "",
) -> None:
    """Upload the output folder to the Hugging Face Hub as a dataset, with a generated card.

    Args:
        output_dir: The published folder (local, /gcs/ or gs://).
        report: The report step's output (orders publishing after it).
        hub_repo_id: The Hub dataset, ORG/NAME (created when missing).
        published: Records the dataset URL, branch and commit.
        hub_private: Create the dataset private.
        hub_revision: Branch to commit to ("" = main).
        source: What was indexed, for the card.
        hub_token_secret: Secret Manager version holding a Hub write token
            (projects/P/secrets/S/versions/latest); "" = HF_TOKEN in the task's environment.
    """
    from clip_index.config import PublishConfig
    from clip_index.hub import secret_token
    from clip_index.publish.step import run_publish

    config = PublishConfig(hub_repo_id=hub_repo_id, hub_private=hub_private,
                           hub_revision=hub_revision, source=source)
    token = secret_token(hub_token_secret) if hub_token_secret else None
    result = run_publish(output_dir, config, token=token)
    published.metadata.update(result.as_dict())
