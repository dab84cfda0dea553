# A mail catcher with a web inbox and an HTTP API (MailDev from npm on Debian's Node.js),
# for machines that cannot pull the official Mailpit image. SMTP on 1025, inbox and API
# (GET /email) on 8025, the same ports as Mailpit.
ARG BASE_IMAGE=python:3.11.14-slim-bookworm
FROM ${BASE_IMAGE} AS build
ARG MAILDEV_VERSION=2.2.1
COPY docker/certs/ /tmp/certs/
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends nodejs npm \
    && if [ -f /tmp/certs/ca-certificates.crt ]; then export NODE_EXTRA_CA_CERTS=/tmp/certs/ca-certificates.crt; fi \
    && mkdir -p /opt/maildev && cd /opt/maildev \
    && npm install --omit=dev --no-audit --no-fund "maildev@${MAILDEV_VERSION}" >/dev/null

FROM ${BASE_IMAGE}
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends nodejs wget \
    && rm -rf /var/lib/apt/lists/* && useradd -m -u 1000 maildev
COPY --from=build /opt/maildev /opt/maildev
USER maildev
EXPOSE 1025 8025
ENTRYPOINT ["node", "/opt/maildev/node_modules/maildev/bin/maildev", "--smtp", "1025", "--web", "8025", "--ip", "0.0.0.0"]
