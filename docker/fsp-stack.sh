#!/bin/sh
# The stack's entry points inside the worker image (docker-compose.yml, deploy/k8s/).
#
#   fsp-stack bootstrap   one shot: wait for MLflow and Prefect, upgrade the fsp schema,
#                         train a first champion when the registry has none (on demo
#                         data when FSP_DEMO=1), build the champion's Bento
#   fsp-stack worker      wait for Prefect, create the work pool, deploy prefect.yaml,
#                         start pulling work (FSP_WORK_POOL, FSP_WORK_POOL_TYPE)
#   fsp-stack prefect-server / wait NAME URL / anything else: run it
#
# A service that is not up yet is waited for, FSP_WAIT_SECONDS at most (default 180);
# then the command fails with one line naming the service and its URL.
set -eu

log() { echo "fsp-stack: $*" >&2; }

# wait_for NAME URL: poll URL until it answers 2xx, bounded by FSP_WAIT_SECONDS.
wait_for() {
  python - "$1" "$2" "${FSP_WAIT_SECONDS:-180}" <<'PY'
import sys, time, urllib.request
name, url, limit = sys.argv[1], sys.argv[2], float(sys.argv[3])
deadline, delay, last = time.monotonic() + limit, 1.0, "no answer"
while True:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            if r.status < 300:
                sys.exit(0)
            last = f"HTTP {r.status}"
    except Exception as exc:  # refused, DNS not yet there, timeout, HTTP error
        last = f"{type(exc).__name__}: {exc}"
    if time.monotonic() + delay > deadline:
        print(f"fsp-stack: {name} is not up at {url} after {limit:.0f} s ({last})", file=sys.stderr)
        sys.exit(1)
    time.sleep(delay)
    delay = min(delay * 1.5, 5.0)
PY
}

mlflow_health() { echo "${MLFLOW_TRACKING_URI%/}/health"; }
prefect_health() { echo "${PREFECT_API_URL%/}/health"; }

# champion_version: the registry's champion version, empty when there is none.
champion_version() {
  python - <<'PY'
import json, os, urllib.error, urllib.parse, urllib.request
base = os.environ["MLFLOW_TRACKING_URI"].rstrip("/")
name = os.environ.get("FSP_MODEL_NAME", "first-session-risk")
query = urllib.parse.urlencode({"name": name, "alias": "champion"})
try:
    with urllib.request.urlopen(f"{base}/api/2.0/mlflow/registered-models/alias?{query}", timeout=10) as r:
        print(json.load(r)["model_version"]["version"])
except urllib.error.HTTPError as exc:
    if exc.code not in (400, 404):  # no such model / alias
        raise
PY
}

bootstrap() {
  wait_for MLflow "$(mlflow_health)"
  wait_for Prefect "$(prefect_health)"
  fsp db upgrade
  version="$(champion_version)"
  if [ -z "$version" ]; then
    if [ "${FSP_DEMO:-0}" = 1 ]; then
      log "no champion in the registry; FSP_DEMO=1: demo platform data, then a first training"
      out="$(fsp demo-data --tutors "${FSP_DEMO_TUTORS:-1000}" --days "${FSP_DEMO_DAYS:-120}" 2>&1)" \
        || echo "$out" | grep -q "already hold data" \
        || { echo "$out" >&2; exit 1; }
    else
      log "no champion in the registry: training on the platform's data"
    fi
    fsp train > /dev/null
    version="$(champion_version)"
    [ -n "$version" ] || { log "training registered no champion (see fsp models)"; exit 1; }
  fi
  log "champion: version $version"
  if [ -f "$BENTOML_HOME/fsp-champion-bento" ] \
      && [ "$(cat "$BENTOML_HOME/fsp-champion-bento")" = "$version" ]; then
    log "the champion's Bento is already built"
  else
    fsp package --json > "$BENTOML_HOME/fsp-package.json"
    echo "$version" > "$BENTOML_HOME/fsp-champion-bento"
    log "built the Bento of version $version"
  fi
}

worker() {
  wait_for Prefect "$(prefect_health)"
  pool="${FSP_WORK_POOL:-fsp-process}"
  prefect work-pool inspect "$pool" > /dev/null 2>&1 \
    || prefect work-pool create "$pool" --type "${FSP_WORK_POOL_TYPE:-process}" > /dev/null
  cd /app
  if [ "$pool" = fsp-process ]; then
    prefect --no-prompt deploy --all > /dev/null
  else
    # Another pool (e.g. Kubernetes): `deploy --all` ignores --pool, so one by one; the
    # flow-run Jobs use FSP_JOB_IMAGE (the worker image).
    for name in $(python -c 'import yaml; print(" ".join(d["name"] for d in yaml.safe_load(open("prefect.yaml"))["deployments"]))'); do
      prefect --no-prompt deploy --name "$name" --pool "$pool" \
        ${FSP_JOB_IMAGE:+--job-variable image="$FSP_JOB_IMAGE"} > /dev/null
    done
  fi
  log "deployed prefect.yaml to $PREFECT_API_URL; worker on pool $pool"
  exec prefect worker start --pool "$pool" --with-healthcheck
}

case "${1:-worker}" in
  bootstrap) bootstrap ;;
  worker) worker ;;
  wait) wait_for "$2" "$3" ;;
  prefect-server)
    exec prefect server start --host 0.0.0.0 --port 4200 ;;
  *) exec "$@" ;;
esac
