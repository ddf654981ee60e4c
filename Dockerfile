# syntax=docker/dockerfile:1
# Sidemeter sidecar image. Runs next to the model server (same pod / host network).
# Two stages: the builder turns the source into wheels (Sidemeter's own and every dependency's,
# the PostgreSQL driver included); the runtime stage installs those wheels offline, so it holds
# no source tree, no build tools and no pip cache.
# The base is pinned by tag and digest; to move it, pick a new tag and take its digest from
# `docker buildx imagetools inspect python:<tag>`.
ARG PYTHON_IMAGE=python:3.12.7-slim-bookworm@sha256:032c52613401895aa3d418a4c563d2d05f993bc3ecc065c8f4e2280978acd249

FROM ${PYTHON_IMAGE} AS builder
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml setup.cfg README.md ./
COPY agent ./agent
COPY addons ./addons
COPY ops_api ./ops_api
# Sidemeter's wheel and one for each dependency (versions from setup.cfg), for the runtime stage.
RUN pip wheel --wheel-dir /wheels ".[postgres]"

FROM ${PYTHON_IMAGE}
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
# Not pinned here (DL3013) on purpose: --no-index installs only the builder's wheels, so the versions
# are the ones it resolved from setup.cfg. The bind mount keeps the wheels out of the image's layers.
# hadolint ignore=DL3013
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    pip install --no-index --find-links /wheels "sidemeter[postgres]" \
    && useradd --system --uid 10001 --home-dir /data sidemeter \
    && mkdir -p /data && chown sidemeter /data

USER 10001
WORKDIR /data
# State lives in /data (mount a volume); the upstream and auth come from the environment.
ENV SIDEMETER_DATA_DIR=/data \
    SIDEMETER_DB=sqlite:////data/usage.db
EXPOSE 8080 9090
# The ops port's liveness endpoint (ops_listen, default 0.0.0.0:9090); the slim image has no curl.
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9090/healthz', timeout=2)"]
ENTRYPOINT ["sidemeter"]
CMD ["run"]
