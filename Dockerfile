# One image, two entry points: the operator (`agentctl operator`) and the bundled runtime
# (`agent-runtime api|worker`), which the operator deploys by default as
# agentops/agent-runtime:<package version>.
#
# Build:  docker build -t agentops/agent-runtime:0.1.0 .
#
# Pinned inputs. The base image is the Python the test suite runs on, pinned by the digest of its
# multi-platform index, so a rebuilt tag cannot change what we ship. This repository's CI reaches
# no registry, so the digest was taken from public build records that resolved this tag, not
# resolved here; to move to a newer base, resolve the new tag's digest and change both parts:
#   docker buildx imagetools inspect python:3.11.7-slim-bookworm
# The Python dependencies are pinned by constraints.txt (`make constraints`, from the test venv).
#
# Development package. The image ships neither the development fakes (dev/: the local model, the
# dev cluster) nor kmock. scripts/e2e-kind.sh builds a second image for its local model with
#   docker build --build-arg DEV_PACKAGE=./dev .
#
# Health. No HEALTHCHECK: the one image runs three servers on different ports and paths (the
# operator's /healthz on 8080, the API's /health and /ready on 8080, the worker's /health and
# /ready on 9090), and Kubernetes ignores Docker health checks anyway. The health source is the
# Kubernetes probes: the operator renders startup, liveness and readiness probes for the API and
# worker pods, and the chart gives the operator liveness and readiness probes on /healthz. A test
# starts each entry point and checks that it serves the path its probes use.

ARG PYTHON_IMAGE=python:3.11.7-slim-bookworm@sha256:cfd7ed5c11a88ce533d69a1da2fd932d647f9eb6791c5b4ddce081aedf7f7876

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
RUN python -m venv /opt/venv
COPY pyproject.toml README.md constraints.txt ./
COPY operator/ operator/
COPY agent_runtime/ agent_runtime/
COPY dev/ dev/
ARG DEV_PACKAGE=""
RUN /opt/venv/bin/pip install -c constraints.txt '.[otel]' ${DEV_PACKAGE}

FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="agentservice-operator" \
      org.opencontainers.image.description="AgentService operator and agent runtime" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    AGENT_LOG_FORMAT=json \
    HEALTH_PORT=8080
RUN groupadd --system --gid 10001 agent \
 && useradd --system --uid 10001 --gid agent --no-create-home --shell /usr/sbin/nologin agent
COPY --from=build /opt/venv /opt/venv
USER 10001:10001
EXPOSE 8080 9090
ENTRYPOINT ["agent-runtime"]
CMD ["api"]
