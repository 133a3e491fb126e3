# syntax=docker/dockerfile:1
# instantly-audit — one image for every role (pollers, rules, sinks, webhook).
#   docker build -t instantly-audit:0.1.0 .
#   docker run --rm -v $PWD/config.yaml:/etc/instantly-audit/config.yaml:ro instantly-audit:0.1.0 \
#       run --config /etc/instantly-audit/config.yaml --role pollers
# The service port (/metrics, /healthz, /readyz) must listen on 0.0.0.0 inside a container:
# set `service: {host: 0.0.0.0, port: 9464}` in the config.
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

# ---------------------------------------------------------------------------- build stage
FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/instantly-audit
WORKDIR /src
# Dependencies from the runtime lock first (exact versions, every file checked against its hash;
# a layer that only changes when the lock does), then the project itself without resolving again.
COPY requirements/runtime.lock requirements/runtime.lock
RUN /opt/instantly-audit/bin/pip install --upgrade pip \
 && /opt/instantly-audit/bin/pip install --require-hashes --only-binary :all: -r requirements/runtime.lock
# A C compiler for the redaction gate's accelerator (hatch_build.py compiles it into the wheel);
# build stage only: the runtime stage gets the compiled module, not the compiler.
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc libc6-dev \
 && rm -rf /var/lib/apt/lists/*
# Only what the wheel needs (see .dockerignore): the metadata, the build hook, the license, the packages.
COPY pyproject.toml hatch_build.py README.md LICENSE ./
COPY schemas/ schemas/
COPY pipeline/ pipeline/
COPY connectors/ connectors/
RUN /opt/instantly-audit/bin/pip install --no-deps . \
 && /opt/instantly-audit/bin/pip check \
 && /opt/instantly-audit/bin/python -m compileall -q /opt/instantly-audit/lib \
 && /opt/instantly-audit/bin/instantly-audit --version \
 && /opt/instantly-audit/bin/python -c "from pipeline.redaction import fast; assert fast.native_common_case, 'no accelerator'"

# -------------------------------------------------------------------------- runtime stage
FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="instantly-audit" \
      org.opencontainers.image.description="Security audit pipeline for Instantly.ai workspaces" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PATH=/opt/instantly-audit/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
RUN groupadd --system --gid 10001 audit \
 && useradd --system --uid 10001 --gid audit --home-dir /var/lib/instantly-audit --shell /usr/sbin/nologin audit \
 && install -d -o audit -g audit -m 0750 /var/lib/instantly-audit /etc/instantly-audit
COPY --from=build /opt/instantly-audit /opt/instantly-audit
USER 10001:10001
WORKDIR /var/lib/instantly-audit
# The defaults: 9464 service port (/metrics /healthz /readyz, `service.port`), 8088 webhook
# receiver (`webhook.port`, webhook role only). A config that changes them documents its own.
EXPOSE 9464 8088
# Liveness only (readiness is for the orchestrator: /readyz). `instantly-audit health` reads the
# service host and port from the same config file the process runs with.
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
  CMD ["instantly-audit", "health", "--config", "/etc/instantly-audit/config.yaml"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["instantly-audit"]
CMD ["run", "--config", "/etc/instantly-audit/config.yaml"]
