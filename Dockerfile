# LLM Tuner API image.
#
#   docker build -t llmtuner .                    # embedded default: local training/serving with torch (CPU)
#   docker build -t llmtuner:cloud --build-arg EXTRAS= .   # cloud shape: SageMaker + S3, no torch
#
# The cloud image serves with LLMTUNER_BACKEND=sagemaker and LLMTUNER_STORAGE=s3; the API imports
# nothing from torch/transformers/peft in that shape (tests/core/test_docker_files.py checks it).

ARG PYTHON_IMAGE=python:3.11-slim
ARG NODE_IMAGE=node:20-slim

# --- builder: a virtual environment with the package and its extras ------------------------------
FROM ${PYTHON_IMAGE} AS builder

# `local` (default) adds torch, transformers and peft; empty for the cloud image.
ARG EXTRAS=local
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /build
COPY pyproject.toml README.md ./
COPY app/ app/

# torch first, from the CPU index (a bare `torch` from PyPI pulls the CUDA build), then the package.
RUN pip install --upgrade pip \
 && case ",${EXTRAS}," in \
      *,local,*) pip install "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX_URL}" ;; \
    esac \
 && pip install ".${EXTRAS:+[${EXTRAS}]}"

# --- web: the dashboard's static files (frontend/), no Node.js in the runtime image ----------------
# Its typed API client is generated from this build's own OpenAPI schema (dumped by the app factory in
# the builder's environment), so the image's dashboard always matches its API.
FROM builder AS openapi
COPY frontend/scripts/dump_openapi.py /build/frontend/scripts/dump_openapi.py
RUN python /build/frontend/scripts/dump_openapi.py /build/openapi.json

FROM ${NODE_IMAGE} AS web
WORKDIR /web
COPY frontend/package.json frontend/package-lock.json ./
RUN npm ci --no-audit --no-fund
COPY frontend/ ./
COPY --from=openapi /build/openapi.json ./openapi.json
RUN npm run build:web

# --- runtime: the venv, the code, a non-root user ------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime

# uvicorn reads UVICORN_* for its options: no access log line per request (it costs ~25-30% of the
# throughput of GET /api/auth/me, bench/api_load.py, which serves the same way); leave request logs to
# the proxy or load balancer, or run with -e UVICORN_ACCESS_LOG=true.
# A production config by default: started without -e LLMTUNER_JWT__SECRET=<32+ characters> the app
# refuses to start (app/config.py) rather than sign tokens with the secret printed in the source.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    UVICORN_ACCESS_LOG=false \
    LLMTUNER_ENV=production \
    LLMTUNER_DATA_DIR=/var/lib/llmtuner \
    HF_HOME=/var/lib/llmtuner/hf-cache

RUN groupadd --system --gid 10001 llmtuner \
 && useradd --system --uid 10001 --gid llmtuner --home-dir /srv --no-create-home \
      --shell /usr/sbin/nologin llmtuner \
 && mkdir -p /var/lib/llmtuner \
 && chown llmtuner:llmtuner /var/lib/llmtuner

COPY --from=builder /opt/venv /opt/venv

WORKDIR /srv
COPY app/ app/
COPY migrations/ migrations/
COPY alembic.ini ./
COPY training_scripts/ training_scripts/
COPY --from=web /web/dist frontend/dist

USER llmtuner
VOLUME ["/var/lib/llmtuner"]
EXPOSE 8000

HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
  CMD ["python", "-c", "import sys, urllib.request; r = urllib.request.urlopen('http://127.0.0.1:8000/api/health', timeout=4); sys.exit(0 if r.status == 200 else 1)"]

# Migrations first (the only way the schema changes), then the API; exec so uvicorn gets the signals.
CMD ["sh", "-c", "alembic upgrade head && exec uvicorn app.main:create_app --factory --host 0.0.0.0 --port 8000"]
