"""The Kubeflow variant of the clip-index pipeline: the same steps, with kfp-kubernetes settings
that put the embed task on GPU nodes (node selector + toleration) and ask for the Kubernetes GPU
resource instead of a Vertex AI accelerator type.

kfp-kubernetes writes its settings into a second YAML document (the platform spec), which
aiplatform.PipelineJob refuses ("expected a single document in the stream"): that is why this is
a separate template, `clip-index-kubeflow.yaml`, for a self-hosted Kubeflow Pipelines.
"""

from dataclasses import dataclass
from typing import Any

from clip_index.pipelines.clip_index import make_index_pipeline
from clip_index.pipelines.settings import PipelineSettings

TOLERATION_EFFECTS = ("NoSchedule", "PreferNoSchedule", "NoExecute")


@dataclass(frozen=True)
class KubeflowSettings:
    """Where the embed task runs on a Kubernetes cluster.

    gpu_resource: the extended resource the GPU device plugin advertises.
    node_selector_key / node_selector_value: the GPU node label; "" value = derived from the
        Vertex GPU type, GKE style (NVIDIA_L4 → cloud.google.com/gke-accelerator=nvidia-l4).
    toleration_key / toleration_effect: the taint GPU node pools carry (GKE: nvidia.com/gpu,
        NoSchedule); tolerated with operator Exists.
    shm_size: a memory-backed emptyDir mounted at /dev/shm of the embed task: DataLoader
        workers hand batches over through shared memory, and pods get only 64 MB there by
        default (kubeflow/pipelines#9893). It counts against the task's memory limit.
    """

    gpu_resource: str = "nvidia.com/gpu"
    node_selector_key: str = "cloud.google.com/gke-accelerator"
    node_selector_value: str = ""
    toleration_key: str = "nvidia.com/gpu"
    toleration_effect: str = "NoSchedule"
    shm_size: str = "8Gi"

    def validate(self) -> None:
        if "/" not in self.gpu_resource:
            raise ValueError(f"gpu_resource={self.gpu_resource!r}: expected an extended "
                             "resource name like 'nvidia.com/gpu'")
        if not self.node_selector_key:
            raise ValueError("node_selector_key='': expected a node label key")
        if self.toleration_effect not in TOLERATION_EFFECTS:
            raise ValueError(f"toleration_effect={self.toleration_effect!r}: expected one of "
                             f"{TOLERATION_EFFECTS}")


def gke_accelerator_label(gpu_type: str) -> str:
    """GKE's `cloud.google.com/gke-accelerator` value for a Vertex AI accelerator type name
    (NVIDIA_TESLA_T4 → nvidia-tesla-t4, NVIDIA_L4 → nvidia-l4, NVIDIA_A100_80GB →
    nvidia-a100-80gb)."""
    return gpu_type.lower().replace("_", "-")


def make_kubeflow_pipeline(settings: PipelineSettings | None = None,
                           kubeflow: KubeflowSettings | None = None) -> Any:
    """The clip-index pipeline with the embed task pinned to GPU nodes through kfp-kubernetes
    (node selector + toleration), requesting `gpu_count` × `gpu_resource`."""
    from kfp import kubernetes

    settings = settings or PipelineSettings()
    kubeflow = kubeflow or KubeflowSettings()
    kubeflow.validate()
    selector = kubeflow.node_selector_value or gke_accelerator_label(settings.gpu_type)

    def hook(name: str, task: Any) -> None:
        if name != "embed" or not settings.gpu_count:
            return
        task.set_accelerator_type(kubeflow.gpu_resource)
        kubernetes.add_node_selector(task, label_key=kubeflow.node_selector_key,
                                     label_value=selector)
        kubernetes.add_toleration(task, key=kubeflow.toleration_key, operator="Exists",
                                  effect=kubeflow.toleration_effect)
        kubernetes.empty_dir_mount(task, volume_name="dshm", mount_path="/dev/shm",
                                   medium="Memory", size_limit=kubeflow.shm_size)

    return make_index_pipeline(settings, task_hook=hook)
