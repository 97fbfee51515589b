"""Watching from the side: Prometheus metrics, health endpoints, lag, log lines. Nothing here
changes what the consumer does; the layers below report to it through ``consumer.events``.

Observers and timings run on the poll thread: cheap, and never raising into it. The scrape
and HTTP threads read snapshots and copies, never the Kafka client or the store. The only
broker queries (paused partitions' ends, :mod:`~consumer.observability.offset_refresh`) run on the
poll thread when the loop asks, bounded in number and time.
"""
