"""Platform limits the pipeline's shape must respect, each with where it comes from."""

# Vertex AI Pipelines refuses a task input that collects more artifacts than this from a loop:
# "code=INVALID_ARGUMENT, message=Maximum number of artifacts exceeded. Maximum allowed: 100,
# requested: 270" (kubeflow/kubeflow#7513, on Vertex AI). Every loop here collects one artifact
# per iteration, so this is also the widest loop; self-hosted Kubeflow degrades well before
# thousands of iterations too (kubeflow/pipelines#12131, #8391).
MAX_LOOP_WIDTH = 100
