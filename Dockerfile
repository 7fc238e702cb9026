# CPU image by default. The install step is the Makefile's `setup` (the one the README uses).
#   docker build -t opsd .
#   docker run --rm -v opsd-data:/data opsd train trainer.max_steps=10
FROM python:3.11-slim

RUN apt-get update \
    && apt-get install -y --no-install-recommends make util-linux \
    && rm -rf /var/lib/apt/lists/*

RUN useradd --create-home --uid 1000 opsd && mkdir /data && chown opsd:opsd /data
WORKDIR /app
COPY --chown=opsd:opsd . /app
USER opsd
RUN make setup PYTHON=python3.11

ENV PATH=/app/.venv/bin:$PATH \
    OPSD_HOME=/data \
    HF_HUB_OFFLINE=1
VOLUME ["/data"]
ENTRYPOINT ["opsd"]
CMD ["--help"]
