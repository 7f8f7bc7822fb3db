# One image, two entry points: the operator (`agentctl operator`) and the bundled runtime
# (`agent-runtime api|worker`), which the operator deploys by default as
# agentops/agent-runtime:<package version>.
#
# Build:  docker build -t agentops/agent-runtime:0.1.0 .

FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
RUN python -m venv /opt/venv
COPY pyproject.toml README.md ./
COPY operator/ operator/
COPY agent_runtime/ agent_runtime/
RUN /opt/venv/bin/pip install --upgrade pip \
 && /opt/venv/bin/pip install '.[otel]'

FROM python:3.11-slim AS runtime
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
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('HEALTH_PORT', '8080') + '/health', timeout=4)"]
ENTRYPOINT ["agent-runtime"]
CMD ["api"]
