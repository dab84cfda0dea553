# The MLflow tracking server with its PostgreSQL driver baked in, at uv.lock's versions.
#   docker build -f docker/mlflow.Dockerfile --build-arg BASE_IMAGE=... -t fsp-mlflow .
ARG BASE_IMAGE=python:3.11.14-slim-bookworm
FROM ${BASE_IMAGE}
ARG UV_VERSION=0.13.9
ENV LANG=C.UTF-8 PYTHONUNBUFFERED=1 UV_PYTHON_DOWNLOADS=never UV_LINK_MODE=copy \
    VIRTUAL_ENV=/opt/mlflow PATH=/opt/mlflow/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false
COPY docker/certs/ /tmp/certs/
COPY pyproject.toml uv.lock /tmp/lock/
RUN if [ -f /tmp/certs/ca-certificates.crt ]; then export SSL_CERT_FILE=/tmp/certs/ca-certificates.crt PIP_CERT=/tmp/certs/ca-certificates.crt; fi; \
    (command -v uv >/dev/null || pip install --no-cache-dir "uv==${UV_VERSION}") \
    && cd /tmp/lock && uv export --frozen --no-dev --no-emit-project --no-hashes -o /tmp/constraints.txt >/dev/null \
    && uv venv /opt/mlflow \
    && uv pip install --no-cache -c /tmp/constraints.txt mlflow "psycopg[binary]" \
    && rm -rf /tmp/certs /tmp/lock /tmp/constraints.txt
RUN useradd -m -u 1000 mlflow && mkdir -p /mlartifacts && chown mlflow:mlflow /mlartifacts
USER mlflow
EXPOSE 5000
HEALTHCHECK --interval=5s --timeout=5s --retries=30 \
  CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:5000/health', timeout=4)"
ENTRYPOINT ["mlflow", "server"]
