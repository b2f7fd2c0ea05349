# clip-index GPU image: the embed step (open_clip on CUDA).
# Build from the repository root (the context is the whole checkout, filtered by .dockerignore):
#   docker build -f containers/gpu.Dockerfile --target runtime -t REPO/clip-index-gpu:TAG .
#   docker build -f containers/gpu.Dockerfile --target test .     # runs the unit tests inside
# The base carries torch 2.14.1+cu130 with cuBLAS 13.1.1.3 and cuDNN 9.24.0.43, the same builds
# constraints.txt pins, so pip keeps the base's torch; kfp and the rest come from
# pyproject.toml + constraints.txt (tests/unit/test_containers.py checks that they agree).
ARG KFP_VERSION=2.17.3
ARG TORCH_VERSION=2.14.1

FROM pytorch/pytorch:2.14.1-cuda13.0-cudnn9-runtime AS runtime
ARG KFP_VERSION
ARG TORCH_VERSION
ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HUB_DISABLE_TELEMETRY=1
WORKDIR /opt/clip-index

COPY pyproject.toml constraints.txt containers/stub_packages.py ./
RUN python stub_packages.py \
    && pip install -c constraints.txt ".[all]" "kfp==${KFP_VERSION}" \
    && rm -rf clip_index components pipelines stub_packages.py build *.egg-info
COPY clip_index ./clip_index
COPY components ./components
COPY pipelines ./pipelines
RUN pip install --no-deps . \
    && python -c "import kfp, clip_index, torch; \
assert kfp.__version__ == '${KFP_VERSION}', kfp.__version__; \
assert torch.__version__.split('+')[0] == '${TORCH_VERSION}', torch.__version__" \
    && clip-index --help > /dev/null

CMD ["clip-index", "--help"]

FROM runtime AS test
COPY tests ./tests
RUN pip install -c constraints.txt pytest pytest-timeout pyyaml \
    && HF_HUB_OFFLINE=1 python -m pytest -q -p no:cacheprovider tests/unit -m "not integration and not gpu"
