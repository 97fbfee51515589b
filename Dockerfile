# checkpoint-consumer runtime image: `consumer run --config /app/config/consumer.yaml`.
#
# Stopping: SIGTERM drains the consumer (finish the batch in hand, checkpoint, leave the group)
# within `shutdown.grace_seconds` (30 s by default). The engine's stop timeout must be longer, or
# it kills the process mid-drain: `docker run --stop-timeout 40` / `podman run --stop-timeout 40`,
# compose `stop_grace_period: 40s`, Kubernetes `terminationGracePeriodSeconds: 40` (Docker's and
# podman's default is 10 s).
FROM python:3.11-slim

LABEL org.opencontainers.image.title="checkpoint-consumer" \
      org.opencontainers.image.description="Kafka consumer framework that resumes from its last checkpoint and applies database effects exactly once." \
      org.opencontainers.image.version="0.1.0" \
      org.opencontainers.image.licenses="Apache-2.0"

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Where pip finds packages, for builds behind a mirror: `--build-arg PIP_INDEX_URL=...`.
ARG PIP_INDEX_URL
ARG PIP_EXTRA_INDEX_URL
ARG PIP_TRUSTED_HOST

# A numeric user (uid and gid 10001), so Kubernetes' runAsNonRoot can verify it is not root.
RUN groupadd --system --gid 10001 consumer \
 && useradd --system --uid 10001 --gid 10001 --home-dir /app --no-create-home consumer

WORKDIR /app
# Dependency layer: the exact pins of constraints.txt (scripts/runtime_constraints.py writes
# it), rebuilt only when they change, not on every code change.
COPY constraints.txt ./
RUN pip install -r constraints.txt

# Code layer: the package itself, its dependencies already in place (pip check fails the build
# when pyproject gained a dependency that constraints.txt lacks).
COPY pyproject.toml README.md ./
COPY consumer ./consumer
RUN pip install --no-deps . && pip check

# Handlers are imported by path from the working directory; config is mounted or baked in.
COPY handlers ./handlers
COPY config ./config

RUN mkdir -p /app/state && chown 10001:10001 /app/state
USER 10001:10001

# Prometheus metrics, /livez and /readyz (the default address is loopback: listen on all).
ENV CONSUMER_METRICS__HOST=0.0.0.0
EXPOSE 9400
# The probe follows CONSUMER_METRICS__PORT when it is set (a port set in the config file only
# is not seen here: set both).
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/livez' % os.environ.get('CONSUMER_METRICS__PORT', '9400'), timeout=4)"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["consumer"]
CMD ["run", "--config", "/app/config/consumer.yaml"]
