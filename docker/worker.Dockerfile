# The Prefect worker (also the Prefect server and the one-shot bootstrap): the project
# and its locked environment (uv.lock, no dev extra) baked in at /app (with the k8s extra: prefect-kubernetes).
#   docker build -f docker/worker.Dockerfile --build-arg BASE_IMAGE=... -t fsp-worker .
ARG BASE_IMAGE=python:3.11.14-slim-bookworm
FROM ${BASE_IMAGE}
ARG UV_VERSION=0.13.9
ENV LANG=C.UTF-8 PYTHONUNBUFFERED=1 \
    UV_PROJECT_ENVIRONMENT=/opt/venv UV_PYTHON_DOWNLOADS=never UV_LINK_MODE=copy \
    UV_COMPILE_BYTECODE=1 PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PREFECT_SERVER_ANALYTICS_ENABLED=false BENTOML_DO_NOT_TRACK=True
COPY docker/certs/ /tmp/certs/
RUN if [ -f /tmp/certs/ca-certificates.crt ]; then export SSL_CERT_FILE=/tmp/certs/ca-certificates.crt PIP_CERT=/tmp/certs/ca-certificates.crt; fi; \
    command -v uv >/dev/null || pip install --no-cache-dir "uv==${UV_VERSION}"
RUN useradd -m -u 1000 fsp && mkdir -p /fsp-state /bentoml /app && chown fsp:fsp /fsp-state /bentoml /app
WORKDIR /app
# The locked environment first: it changes only with uv.lock, so source edits rebuild in seconds.
COPY pyproject.toml uv.lock ./
RUN if [ -f /tmp/certs/ca-certificates.crt ]; then export SSL_CERT_FILE=/tmp/certs/ca-certificates.crt; fi; \
    uv sync --frozen --no-dev --extra k8s --no-install-project --no-cache
COPY . ./
RUN uv sync --frozen --no-dev --extra k8s --no-cache \
    && install -m 0755 docker/fsp-stack.sh /usr/local/bin/fsp-stack \
    && rm -rf /tmp/certs
USER fsp
ENV FSP_STATE_DIR=/fsp-state BENTOML_HOME=/bentoml PREFECT_HOME=/fsp-state/prefect \
    PREFECT_UI_STATIC_DIRECTORY=/fsp-state/prefect-ui GIT_PYTHON_REFRESH=quiet
ENTRYPOINT ["fsp-stack"]
CMD ["worker"]
