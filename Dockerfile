# The opsd image. CPU by default; a CUDA image with the vLLM extra with --build-arg VARIANT=cuda.
#   docker build -t opsd .
#   docker build --build-arg VARIANT=cuda -t opsd:cuda .
#   docker run --rm -v opsd-data:/data opsd train trainer.max_steps=10
#   docker run --rm --gpus all -v opsd-data:/data opsd:cuda train ...
#   docker run --rm -p 5000:5000 -v opsd-data:/data opsd ui host=0.0.0.0
# The install step is the Makefile's `setup`, the one the README uses (one source of truth); the
# stores (MLflow tracking + registry, artifacts, converted models) live on the /data volume.
ARG VARIANT=cpu

FROM python:3.11-slim-bookworm AS base-cpu
ENV OPSD_EXTRAS=dev
RUN apt-get update \
    && apt-get install -y --no-install-recommends make util-linux \
    && rm -rf /var/lib/apt/lists/*

# CUDA runtime + Python 3.11 (Ubuntu 22.04 universe); the vllm extra brings its CUDA torch build.
FROM nvidia/cuda:12.8.1-cudnn-runtime-ubuntu22.04 AS base-cuda
ENV OPSD_EXTRAS=dev,vllm \
    DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
    && apt-get install -y --no-install-recommends make util-linux python3.11 python3.11-venv python3.11-dev gcc g++ \
    && rm -rf /var/lib/apt/lists/*

FROM base-${VARIANT}
RUN useradd --create-home --uid 1000 opsd && mkdir /data && chown opsd:opsd /data
WORKDIR /app
COPY --chown=opsd:opsd . /app
USER opsd
RUN make setup PYTHON=python3.11 EXTRAS=${OPSD_EXTRAS}

ENV PATH=/app/.venv/bin:$PATH \
    OPSD_HOME=/data \
    HF_HUB_OFFLINE=1
VOLUME ["/data"]
EXPOSE 5000
ENTRYPOINT ["opsd"]
CMD ["--help"]
