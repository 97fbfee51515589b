# checkpoint-consumer runtime image: `consumer run --config /app/config/consumer.yaml`.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1

WORKDIR /app
COPY pyproject.toml README.md ./
COPY consumer ./consumer
RUN pip install .

# Handlers are imported by path from the working directory; config is mounted or baked in.
COPY handlers ./handlers
COPY config ./config

RUN useradd --system --uid 10001 consumer && mkdir -p /app/state && chown consumer /app/state
USER consumer

# Prometheus metrics, /livez and /readyz (the default address is loopback: listen on all).
ENV CONSUMER_METRICS__HOST=0.0.0.0
EXPOSE 9400
ENTRYPOINT ["consumer"]
CMD ["run", "--config", "/app/config/consumer.yaml"]
