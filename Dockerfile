# Sidemeter sidecar image. Runs next to the model server (same pod / host network).
FROM python:3.12-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
COPY pyproject.toml setup.cfg README.md ./
COPY agent ./agent
COPY addons ./addons
COPY ops_api ./ops_api
RUN pip install . \
    && useradd --system --uid 10001 --home-dir /data sidemeter \
    && mkdir -p /data && chown sidemeter /data

USER sidemeter
WORKDIR /data
# State lives in /data (mount a volume); the upstream and auth come from the environment.
ENV SIDEMETER_DATA_DIR=/data \
    SIDEMETER_DB=sqlite:////data/usage.db
EXPOSE 8080 9090
HEALTHCHECK --interval=10s --timeout=3s \
  CMD python -c "import urllib.request,sys; urllib.request.urlopen('http://127.0.0.1:9090/healthz', timeout=2)" || exit 1
ENTRYPOINT ["sidemeter"]
CMD ["run"]
