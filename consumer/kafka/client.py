"""What every Kafka client of ours shares: client errors translated into
:class:`~consumer.errors.KafkaError` (fatal ones as ``KafkaFatalError``), and the connection
and security settings an admin client takes from the consumer's. Pure functions: no client is
created here, nothing blocks, nothing raises."""

from __future__ import annotations

import logging
from typing import Any

from consumer.errors import KafkaError, KafkaFatalError
from consumer.settings import KafkaSettings


def translate_error(error: Any) -> KafkaError:
    """confluent_kafka.KafkaError -> our KafkaError (fatal ones as KafkaFatalError)."""
    code = error.name() if hasattr(error, "name") else "UNKNOWN"
    reason = error.str() if hasattr(error, "str") else str(error)
    if getattr(error, "fatal", lambda: False)():
        return KafkaFatalError(code, reason)
    return KafkaError(code, reason)


#: librdkafka properties the admin client shares with the consumer (connection and security).
ADMIN_PREFIXES = ("security.", "sasl.", "ssl.", "socket.", "broker.", "client.", "metadata.",
                   "api.version", "reconnect.", "retry.", "enable.ssl", "enable.sasl")


def admin_config(settings: KafkaSettings) -> dict[str, Any]:
    """Connection and security only: consumer-only properties would make librdkafka warn.

    The client logs through the ``consumer.librdkafka`` logger like every other client of
    ours: without it, librdkafka writes raw lines to stderr that break JSON logs."""
    config: dict[str, Any] = {
        "bootstrap.servers": settings.bootstrap_servers, "client.id": settings.client_id,
        "logger": logging.getLogger("consumer.librdkafka")}
    config.update({k: v.get_secret_value() for k, v in settings.librdkafka.items()
                   if k.startswith(ADMIN_PREFIXES)})
    return config
