# clip-index CPU image: load, plan, download, write, index and report steps.
# Build from the repository root (the context is the whole checkout, filtered by .dockerignore):
#   docker build -f containers/cpu.Dockerfile --target runtime -t REPO/clip-index-cpu:TAG .
#   docker build -f containers/cpu.Dockerfile --target test .     # runs the unit tests inside
# Versions: kfp and every dependency come from pyproject.toml + constraints.txt, the same pins
# the compiler uses (tests/unit/test_containers.py checks that they agree).
ARG KFP_VERSION=2.17.3
ARG TORCH_VERSION=2.14.1
ARG TORCHVISION_VERSION=0.29.1

FROM python:3.11.13-slim-bookworm AS runtime
ARG KFP_VERSION
ARG TORCH_VERSION
ARG TORCHVISION_VERSION
ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HUB_DISABLE_TELEMETRY=1
WORKDIR /opt/clip-index

# PyTorch's own CPU wheels: the small choice without a GPU (PyPI's torch is a 5.9 GB CUDA build).
# A pin without a local label (==2.14.1) matches 2.14.1+cpu.
RUN pip install --index-url https://download.pytorch.org/whl/cpu \
        "torch==${TORCH_VERSION}" "torchvision==${TORCHVISION_VERSION}"

# Dependencies first (a layer that survives code changes): install the extras against a stub
# package, then the real package without touching the dependencies.
COPY pyproject.toml constraints.txt containers/stub_packages.py ./
RUN python stub_packages.py \
    && pip install -c constraints.txt ".[all]" "kfp==${KFP_VERSION}" \
    && rm -rf clip_index components pipelines stub_packages.py build *.egg-info
COPY clip_index ./clip_index
COPY components ./components
COPY pipelines ./pipelines
# The source goes once installed: left in the WORKDIR it would shadow the installed package
# (`python -m ...` puts the WORKDIR first on sys.path), whose clip_index.components/.pipelines
# exist only in site-packages (pyproject's package-dir), so every import of them would fail.
RUN pip install --no-deps . \
    && rm -rf clip_index components pipelines build *.egg-info \
    && python -c "import kfp, clip_index, torch; \
assert kfp.__version__ == '${KFP_VERSION}', kfp.__version__; \
assert torch.__version__.split('+')[0] == '${TORCH_VERSION}', torch.__version__" \
    && clip-index --help > /dev/null

# Components run `python -m kfp.dsl.executor_main` with their source; nothing to start here.
CMD ["clip-index", "--help"]

# The unit tests against the installed package. Tests of repository files (containers/,
# cloudbuild.yaml, notebooks/) skip here: Cloud Build's `test` step runs them on the checkout.
# tests/unit/test_docker_view.py replays this stage without Docker.
FROM runtime AS test
COPY tests ./tests
RUN pip install -c constraints.txt pytest pytest-timeout pyyaml \
    && HF_HUB_OFFLINE=1 python -m pytest -q -p no:cacheprovider tests/unit -m "not integration and not gpu"
