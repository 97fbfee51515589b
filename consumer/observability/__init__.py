"""Watching from the side: Prometheus metrics, health endpoints, lag, logs. Nothing here
changes what the consumer does; the layers below report to it through ``consumer.events``."""
