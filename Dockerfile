# The opsd image. CPU by default; a CUDA image with the vLLM extra with --build-arg VARIANT=cuda.
#   docker build -t opsd .
#   docker build --build-arg VARIANT=cuda -t opsd:cuda .
#   docker run --rm -v opsd-data:/data opsd train trainer.max_steps=10
#   docker run --rm --security-opt seccomp=unconfined --security-opt systempaths=unconfined \
#       -v opsd-data:/data opsd train world=code ...   (the code sandbox needs user namespaces
#       and a fresh /proc, which Docker's default profile blocks)
#   docker run --rm --gpus all -v opsd-data:/data opsd:cuda train ...
#   docker run --rm -p 5000:5000 -v opsd-data:/data opsd ui host=0.0.0.0
# The install step is the Makefile's `setup`, the one the README uses (one source of truth); the
# stores (MLflow tracking + registry, artifacts, converted models) live on the /data volume.
ARG VARIANT=cpu

FROM python:3.11-slim-bookworm AS base-cpu
ENV OPSD_EXTRAS=dev
# PyPI's torch wheel for Linux is the CUDA build (several GB); the CPU image takes the same pinned
# version from PyTorch's CPU index (torch==2.13.0+cpu). --build-arg TORCH_INDEX= (empty) to use
# only PyPI or a mirror.
ENV OPSD_TORCH_INDEX=https://download.pytorch.org/whl/cpu
RUN apt-get update \
    && apt-get install -y --no-install-recommends make util-linux \
    && rm -rf /var/lib/apt/lists/*

# CUDA runtime + Python 3.11 (Ubuntu 22.04 universe); the vllm extra brings its CUDA torch build.
FROM nvidia/cuda:12.8.1-cudnn-runtime-ubuntu22.04 AS base-cuda
ENV OPSD_EXTRAS=dev,vllm \
    OPSD_TORCH_INDEX= \
    DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
    && apt-get install -y --no-install-recommends make util-linux python3.11 python3.11-venv python3.11-dev gcc g++ \
    && rm -rf /var/lib/apt/lists/*

FROM base-${VARIANT}
ARG TORCH_INDEX
# Where else pip may look (a local mirror or wheel folder served over HTTP), e.g.
#   --network host --build-arg PIP_FIND_LINKS=http://127.0.0.1:8765/
ARG PIP_INDEX_URL
ARG PIP_FIND_LINKS
# /app belongs to opsd too: make setup creates /app/.venv as that user (WORKDIR alone makes it root's)
RUN useradd --create-home --uid 1000 opsd && mkdir /data /app && chown opsd:opsd /data /app
WORKDIR /app
COPY --chown=opsd:opsd . /app
USER opsd
RUN index="${TORCH_INDEX-$OPSD_TORCH_INDEX}"; if [ -n "$index" ]; then export PIP_EXTRA_INDEX_URL="$index"; fi \
    && make setup PYTHON=python3.11 EXTRAS=${OPSD_EXTRAS} \
    && rm -rf /home/opsd/.cache/pip

ENV PATH=/app/.venv/bin:$PATH \
    OPSD_HOME=/data \
    HF_HUB_OFFLINE=1
VOLUME ["/data"]
EXPOSE 5000
ENTRYPOINT ["opsd"]
CMD ["--help"]
