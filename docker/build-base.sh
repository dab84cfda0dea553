#!/usr/bin/env bash
# The local base for machines without an image registry: Debian bookworm with Python 3.11
# from Debian's own packages (debootstrap), uv, and this machine's CA bundle, imported
# as a Docker image. Every image of the stack can be built FROM it (BASE_IMAGE build arg).
#
#   docker/build-base.sh TAG            (default fsp-base:bookworm-py3.11)
#
# Environment: DEBIAN_MIRROR (default: the first deb.debian.org-style URI of apt's
# sources, else http://deb.debian.org/debian), UV (the uv binary to copy in).
set -euo pipefail
TAG="${1:-fsp-base:bookworm-py3.11}"
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
UV_BIN="${UV:-$(command -v uv || true)}"
CA_BUNDLE="${CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}"

command -v debootstrap >/dev/null || {
  echo "build-base: debootstrap is missing (apt-get install debootstrap)" >&2; exit 1; }
[ -x "$UV_BIN" ] || { echo "build-base: no uv binary (set UV=...)" >&2; exit 1; }

ROOT="$(mktemp -d /tmp/fsp-base.XXXXXX)"
trap 'umount -R "$ROOT/proc" "$ROOT/sys" 2>/dev/null; rm -rf --one-file-system "$ROOT"' EXIT
debootstrap --variant=minbase --include=python3,ca-certificates,passwd \
  bookworm "$ROOT" "$MIRROR" >/dev/null
cat > "$ROOT/etc/apt/sources.list" <<SOURCES
deb $MIRROR bookworm main
deb $MIRROR bookworm-updates main
SOURCES
# Builds on this base reach PyPI and npm through this machine's TLS setup.
[ -f "$CA_BUNDLE" ] && cp "$CA_BUNDLE" "$ROOT/etc/ssl/certs/ca-certificates.crt"
install -m 0755 "$UV_BIN" "$ROOT/usr/local/bin/uv"
ln -sf python3 "$ROOT/usr/bin/python"
rm -rf "$ROOT"/var/cache/apt/archives/*.deb "$ROOT"/var/lib/apt/lists/*
tar -C "$ROOT" -c . | docker import \
  --change 'ENV LANG=C.UTF-8 PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt PIP_CERT=/etc/ssl/certs/ca-certificates.crt NODE_EXTRA_CA_CERTS=/etc/ssl/certs/ca-certificates.crt' \
  --change 'CMD ["python3"]' - "$TAG" >/dev/null
echo "build-base: $TAG ($(docker image inspect -f '{{.Size}}' "$TAG") bytes)"
