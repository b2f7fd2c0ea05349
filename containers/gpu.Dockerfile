# clip-index GPU image: the embed step (open_clip on CUDA).
# Build from the repository root (the context is the whole checkout, filtered by .dockerignore):
#   docker build -f containers/gpu.Dockerfile --target runtime -t REPO/clip-index-gpu:TAG .
#   docker build -f containers/gpu.Dockerfile --target test .     # runs the unit tests inside
#
# What it needs from the machine (README "GPUs and drivers"): an NVIDIA driver >= 525.60.13 and a
# GPU of compute capability 5.0-9.0, i.e. every type clip_index/gpus.py accepts (T4, L4,
# V100, P100, P4, A100, H100, H100 MEGA, H200). Why CUDA 12.6 and not 13: PyTorch's CUDA 13
# builds have no kernels for P4/P100/V100 (pytorch/pytorch#157517) and need an R580+ driver;
# torch 2.14 still ships a CUDA 12.6 build (pytorch/pytorch#190355), which runs on all of them.
#
# Python and libraries are checkable from this file alone (tests/unit/test_embed_image.py):
# the same python:3.11 base as the CPU image, torch/torchvision from PyTorch's cu126 index (the
# wheels bring the CUDA 12.6 runtime, cuDNN and nvJPEG as cu12 packages; the host driver is mounted
# by Vertex AI and GKE), everything else from pyproject.toml + containers/gpu-constraints.txt:
# constraints.txt less its CUDA 13 packages (scripts/gpu_constraints.py). With constraints.txt
# itself pip would replace the cu126 torch by PyPI's CUDA 13 one (its cuda-toolkit==13 pin
# conflicts with the cu126 wheel's cuda-toolkit==12.6 requirement); tests/unit/
# test_gpu_image_resolution.py replays this file's two installs offline. `pip check` fails the
# build on any broken requirement. numpy==1.26.4 has cp311 wheels.
ARG KFP_VERSION=2.17.3
ARG TORCH_VERSION=2.14.1
ARG TORCHVISION_VERSION=0.29.1
ARG CUDA_TAG=cu126
# The default model's weights, baked in so that no task asks the Hugging Face Hub for them.
ARG BAKED_MODEL=ViT-B-32
ARG BAKED_PRETRAINED=laion2b_s34b_b79k

FROM python:3.11.13-slim-bookworm AS runtime
ARG KFP_VERSION
ARG TORCH_VERSION
ARG TORCHVISION_VERSION
ARG CUDA_TAG
ARG BAKED_MODEL
ARG BAKED_PRETRAINED
ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HUB_DISABLE_TELEMETRY=1 \
    HF_HOME=/opt/hf \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility,video
WORKDIR /opt/clip-index

# `video`: the NVIDIA container runtime mounts the driver's hardware JPEG/video decode libraries
# only with it (nvJPEG's hardware backend on A100/H100; NVIDIA container toolkit docs,
# "Driver capabilities").
RUN pip install --index-url "https://download.pytorch.org/whl/${CUDA_TAG}" \
        "torch==${TORCH_VERSION}+${CUDA_TAG}" "torchvision==${TORCHVISION_VERSION}+${CUDA_TAG}" \
    && python -c "import torch, torchvision; \
assert torch.version.cuda.startswith('12.6'), torch.version.cuda; \
assert 'sm_60' in torch.cuda.get_arch_list() and 'sm_90' in torch.cuda.get_arch_list(), \
torch.cuda.get_arch_list()"

# Dependencies first (a layer that survives code changes): install the extras against a stub
# package, then the real package without touching the dependencies.
COPY pyproject.toml constraints.txt containers/gpu-constraints.txt containers/stub_packages.py ./
RUN python stub_packages.py \
    && pip install -c gpu-constraints.txt ".[all]" "kfp==${KFP_VERSION}" \
    && pip check \
    && rm -rf clip_index components pipelines stub_packages.py build *.egg-info
COPY clip_index ./clip_index
COPY components ./components
COPY pipelines ./pipelines
# The source goes once installed: left in the WORKDIR it would shadow the installed package
# (`python -m ...` puts the WORKDIR first on sys.path), whose clip_index.components/.pipelines
# exist only in site-packages (pyproject's package-dir).
RUN pip install --no-deps . \
    && rm -rf clip_index components pipelines build *.egg-info \
    && python -c "import kfp, clip_index, torch; \
assert kfp.__version__ == '${KFP_VERSION}', kfp.__version__; \
assert torch.__version__.split('+')[0] == '${TORCH_VERSION}', torch.__version__; \
assert torch.version.cuda.startswith('12.6'), torch.version.cuda" \
    && pip check \
    && clip-index --help > /dev/null

# Bake the default weights into $HF_HOME: clip_index.embed.models.staged_weights finds them and
# loads them by path, so a task makes no hub request for the default model (others still load
# from the hub, through the same cache).
RUN python -c "from clip_index.embed.models import stage_weights, staged_weights; \
print(stage_weights('${BAKED_MODEL}', '${BAKED_PRETRAINED}')); \
assert staged_weights('${BAKED_MODEL}', '${BAKED_PRETRAINED}')"

CMD ["clip-index", "--help"]

FROM runtime AS test
COPY tests ./tests
RUN pip install -c gpu-constraints.txt pytest pytest-timeout pyyaml \
    && HF_HUB_OFFLINE=1 HF_HOME=/root/.cache/hf-tests python -m pytest -q -p no:cacheprovider tests/unit -m "not integration and not gpu"
