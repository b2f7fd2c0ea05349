"""Compile-time settings of the pipelines: container images, the embed step's GPU, the loop
widths, per-task CPU and memory, retries. KFP fixes these when a pipeline is compiled; run-time
choices are pipeline parameters."""

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from clip_index.gpus import check_gpu
from clip_index.limits import MAX_LOOP_WIDTH

DEFAULT_IMAGE_REPO = "us-docker.pkg.dev/PROJECT/clip-index"
# Kubernetes quantities as KFP accepts them: CPU "8", "0.5", "500m"; memory "32G", "512Mi".
_CPU = re.compile(r"^(\d+(\.\d+)?|\d+m)$")
_MEMORY = re.compile(r"^\d+(\.\d+)?(E|P|T|G|M|K|Ei|Pi|Ti|Gi|Mi|Ki)?$")
# (task name, task) → None: called on the download and embed tasks, e.g. to add kfp-kubernetes
# node selectors; the task names are "download" and "embed".
TaskHook = Callable[[str, Any], None]


@dataclass(frozen=True)
class PipelineSettings:
    """Compile-time settings: container images, the embed step's GPU, the fan-out limit.

    gpu_type / gpu_count: the embed task's accelerator (Vertex AI type names; count 0 = CPU).
    download_parallelism: download tasks, each streaming its own range of shards (CPU quota:
        `download_parallelism × download_cpu` vCPUs). They run as `embed_parallelism` groups
        of `parts` = ceil(download_parallelism / embed_parallelism) each, so the loop runs
        `embed_parallelism × parts` download tasks (rounded up to a multiple of the groups).
    embed_parallelism: embed groups: each group's download tasks feed its own embed task, which
        streams their shards through one model; `embed_parallelism × gpu_count` GPUs are in
        use, so this is the knob that fits a run into the project's GPU quota.
    Both widths are fixed here, at compile time, never derived from the dataset: a run of 480
    rows and one of 12.8M (1,280 shards) have the same loops, one task per work unit, each
    unit a range of shards (the unit of resume stays the shard). Each is at most
    `MAX_LOOP_WIDTH` (100): an embed task collects its group's `parts` download artifacts and
    the write task the `embed_parallelism` embed artifacts, and Vertex AI refuses more than
    100 artifacts in one task's input (`clip_index.launch.spec_check` checks the compiled
    spec).
    *_cpu / *_memory: per-task limits (Kubernetes quantities: "8", "500m"; "32G", "16Gi").
    task_retries: extra attempts of a failed download or embed task, the first after `backoff_s`
        seconds, each next one `backoff_factor` times later, at most `max_backoff_s`.
    """

    cpu_image: str = f"{DEFAULT_IMAGE_REPO}/clip-index-cpu:dev"
    gpu_image: str = f"{DEFAULT_IMAGE_REPO}/clip-index-gpu:dev"
    gpu_type: str = "NVIDIA_L4"
    gpu_count: int = 1
    download_parallelism: int = 32
    embed_parallelism: int = 8
    # Limits become Kubernetes requests: each fits the allocatable CPU/memory (after GKE's
    # reservations and daemon pods) of the node shape beside it (README "Node shapes").
    embed_cpu: str = "6"  # g2-standard-8 + 1 L4; n1-standard-8 + 1 T4
    embed_memory: str = "24G"
    download_cpu: str = "7"  # e2-/n2-standard-8
    download_memory: str = "16G"
    # the write task copies the embeddings and thumbnails into output_dir, one shard at a time
    write_cpu: str = "3"  # e2-standard-4
    write_memory: str = "10G"
    index_cpu: str = "14"  # n2-standard-16
    index_memory: str = "48G"
    task_retries: int = 2
    backoff_s: int = 60
    backoff_factor: float = 2.0
    max_backoff_s: int = 3600
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def parts(self) -> int:
        """Download units per embed group: the inner loop's width."""
        return math.ceil(self.download_parallelism / self.embed_parallelism)

    @property
    def download_tasks(self) -> int:
        """Download tasks in all: `embed_parallelism` groups of `parts`."""
        return self.embed_parallelism * self.parts

    def validate(self) -> None:
        for name in ("cpu_image", "gpu_image"):
            image = getattr(self, name)
            tag = image.rsplit("/", 1)[-1]
            if ":" not in tag and "@" not in image:
                raise ValueError(f"{name}={image!r}: expected an image with a tag or digest")
            if tag.endswith(":latest"):
                raise ValueError(f"{name}={image!r}: ':latest' is not reproducible; pin a tag")
        if self.gpu_count < 0:
            raise ValueError(f"gpu_count={self.gpu_count}: expected an integer >= 0")
        check_gpu(self.gpu_type, self.gpu_count)
        for name in ("download_parallelism", "embed_parallelism"):
            width = getattr(self, name)
            if not 1 <= width <= MAX_LOOP_WIDTH:
                raise ValueError(
                    f"{name}={width}: expected 1 to {MAX_LOOP_WIDTH} tasks (--"
                    f"{name.replace('_', '-')}): a later task collects one artifact per task "
                    f"of this loop, and Vertex AI refuses more than {MAX_LOOP_WIDTH} artifacts "
                    "in one task's input; more tasks are not needed either, since each "
                    "streams many shards")
        # the embed task takes its group's `parts` download artifacts and the write task the
        # groups' embed artifacts; with its own output each stays within Vertex AI's 100
        # (kubeflow/kubeflow#7513 does not say whether outputs count: they are counted)
        for name, count in (("download_parallelism / embed_parallelism", self.parts),
                            ("embed_parallelism", self.embed_parallelism)):
            if count + 1 > MAX_LOOP_WIDTH:
                raise ValueError(
                    f"{name}: a task would collect {count} artifacts and write one, more than "
                    f"the {MAX_LOOP_WIDTH} Vertex AI accepts in one task: use at most "
                    f"{MAX_LOOP_WIDTH - 1} per group (download_parallelism="
                    f"{self.download_parallelism}, embed_parallelism={self.embed_parallelism})")
        for step in ("download", "embed", "write", "index"):
            cpu, memory = getattr(self, f"{step}_cpu"), getattr(self, f"{step}_memory")
            if not _CPU.match(cpu) or float(cpu.rstrip("m") or 0) <= 0:
                raise ValueError(f"{step}_cpu={cpu!r}: expected a CPU count like '8' or '500m'")
            if not _MEMORY.match(memory) or float(re.sub("[A-Za-z]", "", memory)) <= 0:
                raise ValueError(f"{step}_memory={memory!r}: expected a size like '32G' or "
                                 "'16Gi'")
        if self.task_retries < 0:
            raise ValueError(f"task_retries={self.task_retries}: expected an integer >= 0")
        if self.backoff_s < 0 or self.max_backoff_s < self.backoff_s:
            raise ValueError(f"backoff_s={self.backoff_s}, max_backoff_s={self.max_backoff_s}: "
                             "expected 0 <= backoff_s <= max_backoff_s")
        if self.backoff_factor < 1:
            raise ValueError(f"backoff_factor={self.backoff_factor}: expected a factor >= 1")
