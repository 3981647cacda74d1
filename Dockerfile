# syntax=docker/dockerfile:1.7
# Multi-stage build for latentseg.
#   docker build --target api    -t latentseg-api .     # FastAPI + RQ client, no torch
#   docker build --target worker -t latentseg-worker .  # CUDA torch + onnxruntime-gpu, loads the bundle once
# docker-compose.yml builds both; see docs/deploy.md.

ARG PYTHON_VERSION=3.11

# ---------------------------------------------------------------- wheel: build latentseg once
FROM python:${PYTHON_VERSION}-slim AS wheel
WORKDIR /src
COPY pyproject.toml README.md ./
COPY model ./model
COPY training ./training
COPY worker ./worker
COPY service ./service
COPY cli ./cli
# The wheel carries the demo bundle (package data model/bundles/**).
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /dist .

# ---------------------------------------------------------------- api: no torch
FROM python:${PYTHON_VERSION}-slim AS api
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    LATENTSEG_STORAGE_DIR=/data \
    LATENTSEG_HOST=0.0.0.0 \
    LATENTSEG_PORT=8000
RUN useradd --create-home --uid 10001 latentseg && mkdir -p /data && chown latentseg:latentseg /data
COPY --from=wheel /dist /dist
# `.[service]` only: the build fails if torch slipped into the API image.
# The web page's viewer ships in the wheel (NiiVue vendored under service/static/vendor: no node stage,
# no CDN at run time); the build fails if it is missing.
RUN pip install "$(ls /dist/latentseg-*.whl)[service]" && rm -rf /dist \
 && python -c "import service.main" \
 && python -c "from importlib import resources as r; assert r.files('service').joinpath('static/vendor/niivue/LICENSE').is_file()" \
 && ! python -c "import torch" 2>/dev/null
USER latentseg
VOLUME ["/data"]
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
  CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=3).status != 200)"]
CMD ["latentseg", "serve", "--host", "0.0.0.0", "--port", "8000"]

# ---------------------------------------------------------------- worker: CUDA torch + onnxruntime-gpu
FROM nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04 AS worker
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128
ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    LATENTSEG_STORAGE_DIR=/data
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv \
 && rm -rf /var/lib/apt/lists/* \
 && python3 -m venv /opt/venv \
 && useradd --create-home --uid 10001 latentseg && mkdir -p /data && chown latentseg:latentseg /data
COPY --from=wheel /dist /dist
# CUDA torch from the PyTorch index; onnxruntime-gpu (never together with the CPU onnxruntime wheel).
RUN pip install --extra-index-url "${TORCH_INDEX_URL}" "$(ls /dist/latentseg-*.whl)[worker,onnx-gpu]" \
 && rm -rf /dist \
 && python -c "import worker.tasks, worker.main"
USER latentseg
VOLUME ["/data"]
# Healthy while this host's worker is registered on the queue in Redis.
HEALTHCHECK --interval=30s --timeout=10s --start-period=120s --retries=3 \
  CMD ["latentseg", "worker", "--check"]
# SIGTERM = warm shutdown: the running job finishes first (see worker/main.py).
STOPSIGNAL SIGTERM
CMD ["latentseg", "worker"]
