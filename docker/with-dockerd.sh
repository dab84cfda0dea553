#!/usr/bin/env bash
# Run a command with a usable Docker engine. When none answers, start dockerd (as root)
# and stop it afterwards by its pid; an engine that was already running is left alone.
# Missing engine packages (Debian's docker.io, docker-compose, debootstrap) are installed
# with apt-get when running as root.
#
#   docker/with-dockerd.sh COMMAND...
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v dockerd >/dev/null || missing+=(docker.io)
command -v docker-compose >/dev/null || missing+=(docker-compose)
command -v debootstrap >/dev/null || missing+=(debootstrap)
if ((${#missing[@]})); then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "with-dockerd: installing ${missing[*]}" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null \
      || { apt-get update -q >/dev/null \
           && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null; }
  else
    echo "with-dockerd: missing ${missing[*]} (install Debian's docker.io docker-compose debootstrap)" >&2
    exit 1
  fi
fi

pid=""
stop_dockerd() {
  if [ -n "$pid" ]; then
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 30); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
    echo "with-dockerd: stopped the dockerd it started (pid $pid)" >&2
  fi
}
if ! docker info >/dev/null 2>&1; then
  [ "$(id -u)" = 0 ] || { echo "with-dockerd: no Docker engine answers and not root" >&2; exit 1; }
  mkdir -p .fsp/stack
  dockerd >.fsp/stack/dockerd.log 2>&1 &
  pid=$!
  trap stop_dockerd EXIT
  for _ in $(seq 1 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
  docker info >/dev/null 2>&1 || { echo "with-dockerd: dockerd did not start (.fsp/stack/dockerd.log)" >&2; exit 1; }
  echo "with-dockerd: started dockerd (pid $pid)" >&2
fi
"$@"
